"""Quantization maths as pure functions.

Conventions (AIMET's, REFERENCE section 2): an encoding of ``bitwidth`` b has ``steps`` = 2^b - 1
(strict symmetric / narrow range: 2^b - 2) integer levels q in [0, steps], a float ``scale`` and an
integer ``offset`` <= 0 (offset = -zero_point), and represents x_hat = scale * (q + offset).

The state we keep for an encoding is its (already nudged) ``min``/``max`` pair, exactly the pair that
``tf.quantization.fake_quant_with_min_max_vars`` consumes. ``scale`` and ``offset`` are always derived
from that pair with TF's own nudging arithmetic (``nudge``), so what an encoding reports is exactly
what the TF op - and therefore the TFLite converter - computes.

Two implementations of quantize-dequantize exist on purpose:

* ``fake_quantize`` emits TF's FakeQuantWithMinMaxVars(PerChannel) ops, which the TFLite converter
  recognises. Their gradient is the straight-through estimator inside [min, max] and the sum of the
  clipped gradients for min/max.
* ``quantize_dequantize`` is the same forward arithmetic written with plain TF ops plus AIMET's
  range-learning gradients (LSQ-like), used when ranges are trained.
Both give bit-identical outputs (tests pin this).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

__all__ = [
    "MIN_BITWIDTH",
    "MAX_BITWIDTH",
    "MIN_RANGE_WIDTH",
    "ChannelAxis",
    "Encoding",
    "validate_bitwidth",
    "num_steps",
    "normalize_channel_axis",
    "nudge",
    "compute_encoding",
    "fake_quantize",
    "quantize_dequantize",
    "quantize",
    "dequantize",
]

MIN_BITWIDTH = 2
MAX_BITWIDTH = 16
# AIMET keeps every range at least this wide so that a constant tensor still gets a usable scale.
MIN_RANGE_WIDTH = 0.01

ChannelAxis = tuple[int, ...] | None


def validate_bitwidth(bitwidth: int) -> int:
    """Returns ``bitwidth`` as an int after checking it lies in [2, 16].

    Raises:
        ValueError: if ``bitwidth`` is not an integer in [2, 16] (TF's fake-quant ops support no
            other widths).
    """
    if isinstance(bitwidth, bool) or not isinstance(bitwidth, (int, np.integer)):
        raise ValueError(
            f"Expected an integer bitwidth in [{MIN_BITWIDTH}, {MAX_BITWIDTH}]. "
            f"Received: bitwidth={bitwidth!r} of type {type(bitwidth).__name__}"
        )
    if not MIN_BITWIDTH <= int(bitwidth) <= MAX_BITWIDTH:
        raise ValueError(
            f"Expected a bitwidth in [{MIN_BITWIDTH}, {MAX_BITWIDTH}]. Received: bitwidth={bitwidth}"
        )
    return int(bitwidth)


def num_steps(bitwidth: int, strict: bool = False) -> int:
    """Number of quantization steps: 2^b - 1, or 2^b - 2 for strict symmetric (narrow range)."""
    return 2 ** validate_bitwidth(bitwidth) - 1 - int(bool(strict))


def normalize_channel_axis(channel_axis: int | Sequence[int] | None, rank: int) -> ChannelAxis:
    """Returns the channel axes as a sorted tuple of non-negative ints (None for per-tensor).

    Raises:
        ValueError: if an axis is out of range for a tensor of rank ``rank`` or repeated.
    """
    if channel_axis is None:
        return None
    axes = (channel_axis,) if isinstance(channel_axis, (int, np.integer)) else tuple(channel_axis)
    if not axes:
        raise ValueError("Expected at least one channel axis or None. Received: channel_axis=()")
    out = []
    for axis in axes:
        if not -rank <= int(axis) < rank:
            raise ValueError(
                f"Expected channel axes in [{-rank}, {rank - 1}] for a rank-{rank} tensor. "
                f"Received: channel_axis={channel_axis!r}"
            )
        out.append(int(axis) % rank)
    if len(set(out)) != len(out):
        raise ValueError(f"Expected distinct channel axes. Received: channel_axis={channel_axis!r}")
    return tuple(sorted(out))


def _round_half_away_np(x: np.ndarray) -> np.ndarray:
    # std::round semantics (TF's nudging uses it); np.round would round half to even.
    t = np.trunc(x)
    return t + np.where(np.abs(x - t) >= 0.5, np.sign(x), 0.0).astype(x.dtype)


def nudge(
    min_val: np.ndarray, max_val: np.ndarray, bitwidth: int, narrow_range: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TF's fake-quant nudging, in float32 exactly as the TF kernel computes it.

    scale = (max - min) / (qmax - qmin), with qmin = 1 if narrow_range else 0, qmax = 2^b - 1;
    zero_point = clamp(round_half_away(qmin - min / scale), qmin, qmax);
    nudged_min = (qmin - zero_point) * scale; nudged_max = (qmax - zero_point) * scale.

    Args:
        min_val: range minimum, scalar or per channel.
        max_val: range maximum, same shape.
        bitwidth: 2..16.
        narrow_range: drop the lowest level (strict symmetric grids such as int8 weights [-127, 127]).

    Returns:
        (nudged_min, nudged_max, scale, offset) as float32 arrays; ``offset`` is AIMET's offset
        (<= 0): nudged_min = scale * offset.
    """
    bitwidth = validate_bitwidth(bitwidth)
    mn = np.asarray(min_val, dtype=np.float32)
    mx = np.asarray(max_val, dtype=np.float32)
    qmin = np.float32(1.0 if narrow_range else 0.0)
    qmax = np.float32(2**bitwidth - 1)
    scale = (mx - mn) / (qmax - qmin)
    zp_from_min = qmin - mn / scale
    zero_point = np.clip(_round_half_away_np(zp_from_min), qmin, qmax).astype(np.float32)
    nudged_min = (qmin - zero_point) * scale
    nudged_max = (qmax - zero_point) * scale
    offset = (qmin - zero_point).astype(np.float32)
    return nudged_min, nudged_max, scale.astype(np.float32), offset


def _checked_range(min_val, max_val) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) as float32 arrays after checking they are finite and of one shape."""
    mn = np.asarray(min_val, dtype=np.float32)
    mx = np.asarray(max_val, dtype=np.float32)
    if mn.shape != mx.shape:
        raise ValueError(
            f"Expected min and max of the same shape. Received: min.shape={mn.shape}, "
            f"max.shape={mx.shape}"
        )
    if not (np.all(np.isfinite(mn)) and np.all(np.isfinite(mx))):
        raise ValueError(f"Expected finite min/max. Received: min={mn}, max={mx}")
    return mn, mx


@dataclasses.dataclass(frozen=True)
class Encoding:
    """One quantizer's encoding: the nudged range plus how it was built.

    Attributes:
        min: nudged minimum (scalar, or one value per channel), float32.
        max: nudged maximum, same shape.
        bitwidth: 2..16.
        symmetric: whether the grid is symmetric around 0.
        strict: narrow range (2^b - 2 steps), e.g. TFLite's int8 weights [-127, 127].
    """

    min: np.ndarray
    max: np.ndarray
    bitwidth: int
    symmetric: bool
    strict: bool = False

    def __post_init__(self):
        mn, mx = _checked_range(self.min, self.max)
        if np.any(mn > 0) or np.any(mx < 0) or np.any(mx <= mn):
            raise ValueError(
                "Expected an encoding range with min <= 0 <= max and min < max. "
                f"Received: min={mn}, max={mx}"
            )
        object.__setattr__(self, "min", mn)
        object.__setattr__(self, "max", mx)
        object.__setattr__(self, "bitwidth", validate_bitwidth(self.bitwidth))

    @property
    def per_channel(self) -> bool:
        return self.min.ndim > 0

    @property
    def scale(self) -> np.ndarray:
        return nudge(self.min, self.max, self.bitwidth, self.strict)[2]

    @property
    def offset(self) -> np.ndarray:
        return nudge(self.min, self.max, self.bitwidth, self.strict)[3]

    @property
    def steps(self) -> int:
        return num_steps(self.bitwidth, self.strict)


def compute_encoding(
    min_val: np.ndarray | float,
    max_val: np.ndarray | float,
    bitwidth: int,
    symmetric: bool,
    strict: bool = False,
    unsigned_symmetric: bool = False,
) -> Encoding:
    """Builds an AIMET encoding from an observed range.

    The range is first made to contain 0 (min <- min(min, 0), max <- max(max, 0)) and to be at least
    0.01 wide. Then, with steps = 2^b - 1 (strict: 2^b - 2):

    * asymmetric: scale = (max - min) / steps, offset = -round(-min / scale);
    * symmetric: scale = max(|min|, |max|) / floor(steps / 2), offset = -ceil(steps / 2)
      (8 bits: offset -128, grid [-128, 127]; strict: offset -127, grid [-127, 127]);
    * unsigned symmetric (symmetric, ``unsigned_symmetric`` and min >= 0): offset 0,
      scale = max / steps.

    The returned encoding holds the nudged range scale*offset .. scale*(offset + steps), so 0 is
    exactly representable.

    Args:
        min_val: observed minimum, scalar or per channel.
        max_val: observed maximum, same shape.
        bitwidth: 2..16.
        symmetric: symmetric grid.
        strict: strict symmetric (narrow range); only meaningful with ``symmetric``.
        unsigned_symmetric: use the unsigned grid when the data is non-negative.

    Returns:
        The ``Encoding``.

    Raises:
        ValueError: on a bad bitwidth, NaN/Inf, or min/max of different shapes.

    Example:
        >>> compute_encoding(-1.0, 2.0, 8, symmetric=False).offset
        array(-85., dtype=float32)
    """
    bitwidth = validate_bitwidth(bitwidth)
    mn, mx = _checked_range(min_val, max_val)
    strict = bool(strict and symmetric)
    all_non_negative = np.all(mn >= 0)
    mn = np.minimum(mn, 0.0).astype(np.float32)
    mx = np.maximum(mx, 0.0).astype(np.float32)
    mx = np.maximum(mx, mn + np.float32(MIN_RANGE_WIDTH)).astype(np.float32)
    steps = num_steps(bitwidth, strict)
    if symmetric and unsigned_symmetric and all_non_negative:
        scale = mx / np.float32(steps)
        offset = np.zeros_like(scale)
    elif symmetric:
        absmax = np.maximum(np.abs(mn), np.abs(mx))
        scale = absmax / np.float32(steps // 2)
        offset = np.full_like(scale, -math.ceil(steps / 2))
    else:
        scale = (mx - mn) / np.float32(steps)
        offset = -np.clip(_round_half_away_np(-mn / scale), 0, steps).astype(np.float32)
    scale = scale.astype(np.float32)
    enc_min = (scale * offset).astype(np.float32)
    enc_max = (scale * (offset + np.float32(steps))).astype(np.float32)
    return Encoding(enc_min, enc_max, bitwidth, bool(symmetric), strict)


# ----------------------------------------------------------------------------------------------
# TF ops


def _channels_last(x: tf.Tensor, axes: ChannelAxis):
    """Moves ``axes`` to the end and flattens them into one channel dimension.

    Returns the reshaped tensor and a function that restores the original layout.
    """
    rank = x.shape.rank
    if axes == tuple(range(rank - len(axes), rank)) and len(axes) == 1:
        return x, lambda y: y
    perm = [a for a in range(rank) if a not in axes] + list(axes)
    moved = tf.transpose(x, perm) if perm != list(range(rank)) else x
    moved_shape = tf.shape(moved)
    flat = tf.reshape(moved, tf.concat([moved_shape[: rank - len(axes)], [-1]], axis=0))
    inverse = np.argsort(perm).tolist()

    def restore(y):
        y = tf.reshape(y, moved_shape)
        return tf.transpose(y, inverse) if perm != list(range(rank)) else y

    return flat, restore


def fake_quantize(
    x: tf.Tensor,
    min_val: tf.Tensor,
    max_val: tf.Tensor,
    bitwidth: int,
    narrow_range: bool = False,
    channel_axis: ChannelAxis = None,
) -> tf.Tensor:
    """Quantize-dequantize through TF's FakeQuantWithMinMaxVars(PerChannel) op.

    x_hat = floor((clamp(x, nmin, nmax) - nmin) / scale + 0.5) * scale + nmin, with (nmin, nmax,
    scale) from ``nudge``. The TFLite converter turns these ops into integer tensors.

    Args:
        x: float tensor.
        min_val, max_val: range; scalars, or [C] with ``channel_axis`` giving C channels.
        bitwidth: 2..16.
        narrow_range: strict symmetric grid.
        channel_axis: normalised channel axes (see ``normalize_channel_axis``) or None.
    """
    bitwidth = validate_bitwidth(bitwidth)
    if channel_axis is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            x, min_val, max_val, num_bits=bitwidth, narrow_range=narrow_range
        )
    flat, restore = _channels_last(x, channel_axis)
    y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        flat, min_val, max_val, num_bits=bitwidth, narrow_range=narrow_range
    )
    return restore(y)


def _round_half_away_tf(x: tf.Tensor) -> tf.Tensor:
    t = tf.sign(x) * tf.floor(tf.abs(x))
    return t + tf.where(tf.abs(x - t) >= 0.5, tf.sign(x), tf.zeros_like(x))


def _nudge_tf(min_val, max_val, bitwidth: int, narrow_range: bool):
    qmin = tf.constant(1.0 if narrow_range else 0.0, tf.float32)
    qmax = tf.constant(float(2**bitwidth - 1), tf.float32)
    scale = (max_val - min_val) / (qmax - qmin)
    zero_point = tf.clip_by_value(_round_half_away_tf(qmin - min_val / scale), qmin, qmax)
    return (qmin - zero_point) * scale, (qmax - zero_point) * scale, scale


def quantize_dequantize(
    x: tf.Tensor,
    min_val: tf.Tensor,
    max_val: tf.Tensor,
    bitwidth: int,
    narrow_range: bool = False,
    channel_axis: ChannelAxis = None,
) -> tf.Tensor:
    """Quantize-dequantize with trainable-range gradients (AIMET range learning).

    Forward: identical to ``fake_quantize``. Backward (round treated as identity):
      dx_hat/dx = 1 inside [nmin, nmax], 0 outside (straight-through estimator);
      dx_hat/dmax = (round(x/s) - x/s) / steps inside the grid and (q_clipped + offset) / steps
      outside it; dx_hat/dmin = -dx_hat/dmax; summed over everything but the channel axis.

    Args: as ``fake_quantize``.
    """
    bitwidth = validate_bitwidth(bitwidth)
    steps = float(2**bitwidth - 1 - int(bool(narrow_range)))
    restore = None
    if channel_axis is not None:
        x, restore = _channels_last(x, channel_axis)

    @tf.custom_gradient
    def _qdq(x, mn, mx):
        nmin, nmax, scale = _nudge_tf(mn, mx, bitwidth, narrow_range)
        clamped = tf.minimum(tf.maximum(x, nmin), nmax)
        levels = tf.floor((clamped - nmin) / scale + 0.5)
        y = levels * scale + nmin

        def grad(dy):
            inside = tf.logical_and(x >= nmin, x <= nmax)
            dx = tf.where(inside, dy, tf.zeros_like(dy))
            offset = nmin / scale
            ratio = x / scale
            ds = tf.where(inside, tf.round(ratio) - ratio, levels + offset)
            dmax_elem = dy * ds / steps
            reduce_axes = list(range(x.shape.rank)) if channel_axis is None else list(range(x.shape.rank - 1))
            dmax = tf.reduce_sum(dmax_elem, axis=reduce_axes)
            return dx, -dmax, dmax

        return y, grad

    y = _qdq(x, tf.cast(min_val, tf.float32), tf.cast(max_val, tf.float32))
    return restore(y) if restore is not None else y


def quantize(x: np.ndarray | tf.Tensor, encoding: Encoding, channel_axis: ChannelAxis = None) -> np.ndarray:
    """Float -> integer levels q in [0, steps]: q = clamp(round(x / scale) - offset, 0, steps).

    Rounding is half-up on (x - min) / scale, as TF's fake-quant kernel does. Per-channel encodings
    broadcast along ``channel_axis`` (a single axis).

    Returns:
        int32 numpy array of levels.
    """
    x = np.asarray(x, dtype=np.float32)
    mn, mx, scale, _ = nudge(encoding.min, encoding.max, encoding.bitwidth, encoding.strict)
    mn, mx, scale = (_broadcast(v, x.ndim, channel_axis) for v in (mn, mx, scale))
    clamped = np.minimum(np.maximum(x, mn), mx)
    return np.floor((clamped - mn) / scale + np.float32(0.5)).astype(np.int32)


def dequantize(q: np.ndarray, encoding: Encoding, channel_axis: ChannelAxis = None) -> np.ndarray:
    """Integer levels -> float: x_hat = scale * (q + offset) (computed as q * scale + min, as TF)."""
    q = np.asarray(q)
    mn, _, scale, _ = nudge(encoding.min, encoding.max, encoding.bitwidth, encoding.strict)
    mn, scale = (_broadcast(v, q.ndim, channel_axis) for v in (mn, scale))
    return (q.astype(np.float32) * scale + mn).astype(np.float32)


def _broadcast(values: np.ndarray, rank: int, channel_axis: ChannelAxis) -> np.ndarray:
    if values.ndim == 0:
        return values
    if channel_axis is None or len(channel_axis) != 1:
        raise ValueError(
            "Expected a single channel axis for a per-channel encoding in quantize/dequantize. "
            f"Received: channel_axis={channel_axis!r}"
        )
    shape = [1] * rank
    shape[channel_axis[0]] = values.shape[0]
    return values.reshape(shape)
