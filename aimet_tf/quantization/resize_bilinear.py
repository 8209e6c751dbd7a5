"""LiteRT's int8 RESIZE_BILINEAR, as the simulation of a bilinear ``Resizing`` / ``UpSampling2D``.

The TFLite converter gives RESIZE_BILINEAR one grid on input and output (the same scale and zero
point; a sim whose resize output has a grid of its own gets an extra QUANTIZE after it), and Keras'
bilinear resizes become ``half_pixel_centers=True, align_corners=False``. The kernels interpolate
the raw int8 values r (= grid level - 128) in fixed point, each output pixel from its two nearest
rows y0 <= y1 and columns x0 <= x1 with integer weights:

    acc = sum over (y, x) in {y0, y1} x {x0, x1} of w_y * w_x * r[y, x]     (w_y0 + w_y1 = 2^b)

* XNNPACK (the "default" kernel path), b = 11: the source coordinate in float32,
  v = max(o * scale + (scale / 2 - 1/2), 0) with scale = float32(n_in) / float32(n_out) (without
  half-pixel centres the offset is 0; with ``align_corners`` scale = (n_in - 1) / (n_out - 1)),
  y0 = min(floor(v), n_in - 1), y1 = min(y0 + 1, n_in - 1), w_y1 = round_half_even((v - y0) * 2^11);
  out = floor((acc + 2^21) / 2^22).
* TFLite's builtin kernels, optimized and reference alike ("builtin", "reference"), b = 10: an
  integer coordinate v = o * s + (s // 2 - 512) with s = round(float32(scale) * 1024),
  y0 = max(trunc(v / 1024), 0), y1 = min(trunc((v + 1023) / 1024), n_in - 1), w_y1 = v - 1024 * y0;
  out = sign(acc) * floor((|acc| + 2^19) / 2^20) (ties away from zero).

Measured on ai-edge-litert 2.3 against all three op resolvers, on random int8 inputs of every level
for sizes from 1x1 to 100x31, up and down, odd factors, both flag settings: identical everywhere.

``BilinearResizeRequantizer`` recomputes the layer's output that way from its (quantized) input;
``prepare_sim_for_tflite`` gives it to these layers after tying their output grid to the input's.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from aimet_tf.quantization import primitives
from aimet_tf.quantization.quantizers import Quantizer, _Links, _TracedState

__all__ = [
    "RESIZE_ARITHMETICS",
    "BilinearResizeRequantizer",
    "bilinear_resize_flags",
    "resize_bilinear_levels",
    "resize_bilinear_taps",
]

RESIZE_ARITHMETICS = ("xnnpack", "tflite")
"""How a kernel path computes int8 RESIZE_BILINEAR: XNNPACK's 11-bit float-coordinate weights, or
TFLite's builtin kernels' 10-bit integer coordinates (optimized and reference kernels agree)."""


def bilinear_resize_flags(layer: keras.layers.Layer) -> tuple[bool, bool] | None:
    """(half_pixel_centers, align_corners) of the RESIZE_BILINEAR a layer converts to, or None if
    the layer is not a plain channels-last bilinear resize this module models.

    Keras' ``Resizing`` (no crop / pad to the aspect ratio, no antialiasing) and
    ``UpSampling2D(interpolation="bilinear")`` both convert to half-pixel centres without
    aligned corners (read off the converted files).
    """
    L = keras.layers
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    if isinstance(layer, L.Resizing):
        plain = not (layer.crop_to_aspect_ratio or layer.pad_to_aspect_ratio or layer.antialias)
        return (True, False) if layer.interpolation == "bilinear" and plain else None
    if isinstance(layer, L.UpSampling2D):
        return (True, False) if layer.interpolation == "bilinear" else None
    return None


def _checked_arithmetic(value: str) -> str:
    if value not in RESIZE_ARITHMETICS:
        raise ValueError(f"Expected arithmetic in {RESIZE_ARITHMETICS}. Received: arithmetic={value!r}")
    return value


def resize_bilinear_taps(
    n_in: int, n_out: int, arithmetic: str, half_pixel_centers: bool = True, align_corners: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The two source indices and integer weights of each output index along one axis.

    Returns:
        (first, second, first_weight, second_weight, bits): int64 arrays of length ``n_out``; the
        two weights of an output sum to 2^bits.
    """
    _checked_arithmetic(arithmetic)
    n_in, n_out = int(n_in), int(n_out)
    out = np.arange(n_out, dtype=np.int64)
    if align_corners and n_out > 1:
        scale = np.float32(n_in - 1) / np.float32(n_out - 1)
    else:
        scale = np.float32(n_in) / np.float32(n_out)
    if arithmetic == "xnnpack":
        bits = 11
        offset = scale * np.float32(0.5) - np.float32(0.5) if half_pixel_centers else np.float32(0.0)
        coordinate = np.maximum(out.astype(np.float32) * scale + offset, np.float32(0.0))
        first = np.minimum(np.floor(coordinate).astype(np.int64), n_in - 1)
        second = np.minimum(first + 1, n_in - 1)
        fraction = (coordinate - first.astype(np.float32)) * np.float32(1 << bits)
        second_weight = np.rint(fraction).astype(np.int64)
    else:
        bits = 10
        one = 1 << bits
        step = int(math.floor(abs(float(scale * np.float32(one))) + 0.5))  # std::round, scale > 0
        coordinate = out * step + ((step // 2 - one // 2) if half_pixel_centers else 0)
        first = np.maximum(np.trunc(coordinate / one).astype(np.int64), 0)
        second = np.minimum(np.trunc((coordinate + one - 1) / one).astype(np.int64), n_in - 1)
        second_weight = coordinate - one * first
    first_weight = (1 << bits) - second_weight
    return first, second, first_weight, second_weight, bits


def _interpolate_axis(values: tf.Tensor, axis: int, n_out: int, arithmetic: str, flags) -> tuple[tf.Tensor, int]:
    first, second, w_first, w_second, bits = resize_bilinear_taps(values.shape[axis], n_out, arithmetic, *flags)
    shape = [1] * values.shape.rank
    shape[axis] = n_out
    weight = lambda w: tf.constant(w.astype(np.float64).reshape(shape))  # noqa: E731
    mixed = (tf.gather(values, first, axis=axis) * weight(w_first)
             + tf.gather(values, second, axis=axis) * weight(w_second))
    return mixed, bits


def resize_bilinear_levels(
    raw: tf.Tensor, size: tuple[int, int], arithmetic: str, half_pixel_centers: bool = True,
    align_corners: bool = False,
) -> tf.Tensor:
    """int8 RESIZE_BILINEAR of raw int8 values (as float) [N, H, W, C] to ``size`` = (height, width).

    Every product and sum is an integer below 2^30, so float64 holds it exactly.

    Returns:
        float32 [N, height, width, C] holding the kernel's int8 outputs.
    """
    flags = (half_pixel_centers, align_corners)
    values = tf.cast(raw, tf.float64)
    rows, bits = _interpolate_axis(values, 1, int(size[0]), arithmetic, flags)
    acc, _ = _interpolate_axis(rows, 2, int(size[1]), arithmetic, flags)
    shift = float(1 << (2 * bits))
    if arithmetic == "xnnpack":
        out = tf.floor((acc + shift / 2) / shift)
    else:
        out = tf.sign(acc) * tf.floor((tf.abs(acc) + shift / 2) / shift)
    return tf.cast(tf.clip_by_value(out, -128.0, 127.0), tf.float32)


@keras.saving.register_keras_serializable(package="aimet_tf")
class BilinearResizeRequantizer(_TracedState, keras.layers.Layer):
    """Replaces a bilinear resize's float output by what LiteRT's int8 RESIZE_BILINEAR computes.

    Sits where a wrapper's ``Requantizer`` sits (after the layer, before its output quantizer): from
    the layer's quantized input it recovers the raw int8 values r = round((x - nmin) / s) - 128 on the
    shared grid (nmin, s), resizes them as ``arithmetic`` does (``resize_bilinear_levels``) and
    returns (r' + 128) * s + nmin, on the same grid, so the output quantizer (tied to the input grid)
    keeps it. Gradient: identity with respect to the layer's float output.

    The grid is read from the linked quantizer on every call; ``snapshot()`` stores it in
    variables, which an unlinked one (a reloaded model) uses. Identity while disabled, while the
    grid does not quantize (calibration), or for an input without static spatial sizes.

    Args:
        arithmetic: one of ``RESIZE_ARITHMETICS``.
        half_pixel_centers, align_corners: the RESIZE_BILINEAR flags.
    """

    _traced_attributes = ("enabled", "_initialized", "_links", "arithmetic", "half_pixel_centers",
                          "align_corners")

    def __init__(self, arithmetic: str = "xnnpack", half_pixel_centers: bool = True,
                 align_corners: bool = False, enabled: bool = True, initialized: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.arithmetic = _checked_arithmetic(arithmetic)
        self.half_pixel_centers = bool(half_pixel_centers)
        self.align_corners = bool(align_corners)
        self.enabled = bool(enabled)
        self._initialized = bool(initialized)
        self._links = _Links()
        self.grid_minimum = self.grid_scale = None

    def build(self, input_shape=None) -> None:
        self.grid_minimum = self.add_weight(name="grid_minimum", shape=(), initializer="zeros", trainable=False)
        self.grid_scale = self.add_weight(name="grid_scale", shape=(), initializer="zeros", trainable=False)
        self.built = True

    def link(self, grid_quantizer: Quantizer | None) -> None:
        """Reads the shared int8 grid from this quantizer (or its tie leader) from now on."""
        self._links = _Links(input=grid_quantizer)

    def linked(self) -> _Links:
        return self._links

    @property
    def is_linked(self) -> bool:
        return self._links.input is not None

    def _linked_grid(self) -> tuple[tf.Tensor, tf.Tensor] | None:
        q = self._links.input
        if q is None or not q.is_active:
            return None
        grid = q._grid()
        mn = tf.cast(tf.convert_to_tensor(grid.encoding_min), tf.float32)
        mx = tf.cast(tf.convert_to_tensor(grid.encoding_max), tf.float32)
        nmin, _, scale = primitives._nudge_tf(mn, mx, grid.bitwidth, grid.strict)
        return tf.stop_gradient(nmin), tf.stop_gradient(scale)

    def _grid(self) -> tuple[tf.Tensor, tf.Tensor] | None:
        if self.is_linked:
            return self._linked_grid()
        if not self._initialized:
            return None
        return tf.convert_to_tensor(self.grid_minimum), tf.convert_to_tensor(self.grid_scale)

    def snapshot(self) -> None:
        """Stores the linked grid in the snapshot variables."""
        grid = self._linked_grid() if self.is_linked else None
        if grid is None:
            return
        self.grid_minimum.assign(grid[0])
        self.grid_scale.assign(grid[1])
        self._initialized = True

    def call(self, x, operands=None):
        if not self.enabled or not operands:
            return x
        grid = self._grid()
        inputs = operands[0]
        static = [inputs.shape[1], inputs.shape[2], x.shape[1], x.shape[2]]
        if grid is None or inputs.shape.rank != 4 or None in static:
            return x
        nmin, scale = grid
        raw = tf.round((tf.stop_gradient(inputs) - nmin) / scale) - 128.0
        levels = resize_bilinear_levels(raw, (x.shape[1], x.shape[2]), self.arithmetic,
                                        self.half_pixel_centers, self.align_corners)
        return x + tf.stop_gradient((levels + 128.0) * scale + nmin - x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        if self.built and self.is_linked:
            self.snapshot()
        config = super().get_config()
        config.update(arithmetic=self.arithmetic, half_pixel_centers=self.half_pixel_centers,
                      align_corners=self.align_corners, enabled=self.enabled, initialized=self._initialized)
        return config

    def __repr__(self) -> str:
        state = "linked" if self.is_linked else ("snapshot" if self._initialized else "unset")
        return f"<BilinearResizeRequantizer {self.name}: {self.arithmetic} RESIZE_BILINEAR ({state})>"


def link_bilinear_resize(wrapper, grid_quantizer: Quantizer | None, arithmetic: str) -> bool:
    """Gives a bilinear resize wrapper a ``BilinearResizeRequantizer`` on its input's int8 grid.

    Only where the kernel sees one per-tensor int8 grid on input and output: ``grid_quantizer``
    (the quantizer defining the input's grid) active, 8-bit, per-tensor, and the wrapper's output
    quantizer either absent / off or tied to the same grid. Otherwise an earlier one is disabled.

    Returns:
        Whether the wrapper now has an enabled one.
    """
    flags = bilinear_resize_flags(wrapper.layer)
    output_q = wrapper.output_quantizers[0] if wrapper.output_quantizers else None
    ok = (
        flags is not None
        and isinstance(grid_quantizer, Quantizer) and grid_quantizer.enabled
        and not grid_quantizer.per_channel and grid_quantizer._grid().bitwidth == 8
        and (not isinstance(output_q, Quantizer) or not output_q.enabled
             or output_q._grid() is grid_quantizer._grid())
    )
    existing = wrapper.requantizer
    if not ok:
        if existing is not None:
            existing.enabled = False
        return False
    if not isinstance(existing, BilinearResizeRequantizer):
        existing = BilinearResizeRequantizer(name=f"{wrapper.name}_resize_bilinear")
        existing.build()
        wrapper.set_requantizer(existing)
    existing.arithmetic = _checked_arithmetic(arithmetic)
    existing.half_pixel_centers, existing.align_corners = flags
    existing.enabled = True
    existing.link(grid_quantizer)
    existing.snapshot()
    return True
