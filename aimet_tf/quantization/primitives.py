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
* ``quantize_dequantize`` runs the same TF op forward but replaces its gradient with AIMET's
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
    "scale_tf",
    "round_half_away_from_zero",
    "quantize_bias",
    "quantized_multiplier",
    "requantize_fixed_point",
    "requantize_float",
    "round_average_pool",
    "requantize_add",
    "INPUT_ROUNDINGS",
    "quantize_input_like_kernel",
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
    tight: bool = False,
) -> Encoding:
    """Builds an AIMET encoding from an observed range.

    The range is first made to contain 0 (min <- min(min, 0), max <- max(max, 0)) and to be at least
    0.01 wide. Then, with steps = 2^b - 1 (strict: 2^b - 2):

    * asymmetric: scale = (max - min) / steps, offset = -round(-min / scale);
    * symmetric: scale = max(|min|, |max|) / floor(steps / 2), offset = -ceil(steps / 2)
      (8 bits: offset -128, grid [-128, 127]; strict: offset -127, grid [-127, 127]);
    * unsigned symmetric (symmetric, ``unsigned_symmetric`` and min >= 0): offset 0,
      scale = max / steps.

    With ``tight`` (aimet_tf's own weight schemes, and AIMET 2's rule for weights), a symmetric grid is
    sized by the side that needs it: scale = max(max / floor(steps / 2), -min / ceil(steps / 2)), so
    a tensor whose largest magnitude is negative uses the grid's extra negative level (4 bits: -8)
    and gets a 1/8 finer grid; the offset is unchanged. The range then needs no minimum width unless
    it is exactly 0: a layer fed raw 0..255 inputs has weights far below 0.01, which the minimum
    width would quantize on a grid several times too coarse. ``tight`` is idempotent: the encoding's
    own (min, max) gives the same encoding back.

    The returned encoding holds the nudged range scale*offset .. scale*(offset + steps), so 0 is
    exactly representable.

    Args:
        min_val: observed minimum, scalar or per channel.
        max_val: observed maximum, same shape.
        bitwidth: 2..16.
        symmetric: symmetric grid.
        strict: strict symmetric (narrow range); only meaningful with ``symmetric``.
        unsigned_symmetric: use the unsigned grid when the data is non-negative.
        tight: size symmetric grids by the side that needs them, without the minimum width (above).

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
    if tight and symmetric:
        mx = np.where(mx > mn, mx, mn + np.float32(MIN_RANGE_WIDTH)).astype(np.float32)
    else:
        mx = np.maximum(mx, mn + np.float32(MIN_RANGE_WIDTH)).astype(np.float32)
    steps = num_steps(bitwidth, strict)
    if symmetric and unsigned_symmetric and all_non_negative:
        scale = mx / np.float32(steps)
        offset = np.zeros_like(scale)
    elif symmetric and tight:
        scale = np.maximum(mx / np.float32(steps // 2), -mn / np.float32(math.ceil(steps / 2)))
        offset = np.full_like(scale, -math.ceil(steps / 2))
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


def _dot(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    flat = lambda t: tf.reshape(t, [1, -1])  # noqa: E731
    return tf.reshape(tf.matmul(flat(a), flat(b), transpose_b=True), [])


def quantize_dequantize(
    x: tf.Tensor,
    min_val: tf.Tensor,
    max_val: tf.Tensor,
    bitwidth: int,
    narrow_range: bool = False,
    channel_axis: ChannelAxis = None,
) -> tf.Tensor:
    """Quantize-dequantize with trainable-range gradients (AIMET range learning).

    Forward: TF's fake-quant op, exactly as ``fake_quantize``. Backward (round treated as identity):
      dx_hat/dx = 1 inside [nmin, nmax], 0 outside (straight-through estimator);
      dx_hat/dmax = (round(x/s) - x/s) / steps inside the grid and (q_clipped + offset) / steps
      outside it; dx_hat/dmin = -dx_hat/dmax; summed over everything but the channel axis.
    Both cases are (x_hat - x * inside) / (s * steps) with s * steps = nmax - nmin, so with dx
    from TF's own fake-quant gradient op the range gradient is two dot products:
    dmax = (sum(dy * x_hat) - sum(dx * x)) / (nmax - nmin).

    Args: as ``fake_quantize``.
    """
    bitwidth = validate_bitwidth(bitwidth)
    restore = None
    if channel_axis is not None:
        x, restore = _channels_last(x, channel_axis)
    per_channel = channel_axis is not None

    @tf.custom_gradient
    def _qdq(x, mn, mx):
        if per_channel:
            y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                x, mn, mx, num_bits=bitwidth, narrow_range=narrow_range
            )
        else:
            y = tf.quantization.fake_quant_with_min_max_vars(
                x, mn, mx, num_bits=bitwidth, narrow_range=narrow_range
            )

        def grad(dy):
            nmin, nmax, _ = _nudge_tf(mn, mx, bitwidth, narrow_range)
            if per_channel:
                dx = tf.quantization.fake_quant_with_min_max_vars_per_channel_gradient(
                    dy, x, mn, mx, num_bits=bitwidth, narrow_range=narrow_range
                )[0]
                axes = list(range(x.shape.rank - 1))
                dmax = tf.reduce_sum(dy * y - dx * x, axis=axes) / (nmax - nmin)
            else:
                dx = tf.quantization.fake_quant_with_min_max_vars_gradient(
                    dy, x, mn, mx, num_bits=bitwidth, narrow_range=narrow_range
                )[0]
                # Dot products as [1, N] x [N, 1] matmuls: one pass each over large activations.
                dmax = (_dot(dy, y) - _dot(dx, x)) / (nmax - nmin)
            return dx, -dmax, dmax

        return y, grad

    y = _qdq(x, tf.cast(min_val, tf.float32), tf.cast(max_val, tf.float32))
    return restore(y) if restore is not None else y


def quantize_dequantize_rows(
    rows: np.ndarray, min_val, max_val, bitwidth: int, symmetric: bool, strict: bool, unsigned_symmetric: bool,
    tight: bool = False,
) -> np.ndarray:
    """Quantize-dequantize of [C, N] float32 rows, each on the grid ``compute_encoding`` builds from
    its (min, max) (nudged as TF does; rounding half-up, as ``quantize``)."""
    enc = compute_encoding(min_val, max_val, bitwidth, symmetric, strict, unsigned_symmetric=unsigned_symmetric,
                           tight=tight)
    qmin, qmax, scale, _ = nudge(enc.min, enc.max, enc.bitwidth, enc.strict)
    qmin, qmax, scale = (np.asarray(v, np.float32).reshape(-1, 1) for v in (qmin, qmax, scale))
    clamped = np.minimum(np.maximum(rows, qmin), qmax)
    return np.floor((clamped - qmin) / scale + np.float32(0.5)) * scale + qmin


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


# ----------------------------------------------------------------------------------------------
# Integer-kernel arithmetic (what TFLite's int8 kernels do around the fake-quantized tensors)


def scale_tf(min_val: tf.Tensor, max_val: tf.Tensor, bitwidth: int, narrow_range: bool = False) -> tf.Tensor:
    """The grid step of a fake-quant range as a TF tensor: (max - min) / (2^b - 1 - narrow_range).

    Nudging moves min/max but never the step, so this is the scale the TFLite converter derives.
    """
    bitwidth = validate_bitwidth(bitwidth)
    steps = float(2**bitwidth - 1 - int(bool(narrow_range)))
    # max - min and the division in float64, rounded once to float32, as the converter derives
    # the scale it stores (a float32 subtraction is one ulp off for some ranges, which flips
    # the rounding of inputs near a .5 step; a float32 graph may also turn "/ steps" into
    # "* (1 / steps)").
    width = tf.cast(max_val, tf.float64) - tf.cast(min_val, tf.float64)
    return tf.cast(width / steps, tf.float32)


INPUT_ROUNDINGS = ("fake_quant", "divide_half_away", "reciprocal_half_even")
"""How a float tensor is rounded onto its int8 grid where a runtime QUANTIZE op does it (a float
model input), measured on ai-edge-litert 2.3 at exact and near ties:

* "fake_quant": TF's fake-quant op, floor((x - nmin) / s + 1/2) (ties up); the simulation default;
* "divide_half_away": LiteRT's reference QUANTIZE, round(float32(x / s)) with ties away from zero;
* "reciprocal_half_even": XNNPACK's and LiteRT's optimized QUANTIZE, round(float32(x *
  float32(1 / s))) with ties to even.
"""


def quantize_input_like_kernel(
    x: tf.Tensor,
    min_val: tf.Tensor,
    max_val: tf.Tensor,
    bitwidth: int,
    narrow_range: bool,
    rounding: str,
) -> tf.Tensor:
    """Quantize-dequantize of a per-tensor grid as a runtime's QUANTIZE kernel rounds it.

    With s the grid step (``scale_tf``, what the converter stores), z = clamp(round(qmin - min / s),
    qmin, qmax) the zero point (TF's nudge) and r the rounding of ``rounding`` (``INPUT_ROUNDINGS``):
    level = clamp(r(x, s) + z, qmin, qmax), x_hat = (level - z) * s. The quotient / product is
    formed in float64 and rounded once to float32, which equals the float32 operation the kernel
    performs (IEEE division and multiplication are correctly rounded either way), whatever the
    graph optimizer does to float32 arithmetic. Gradient: that of TF's fake-quant op (the two
    differ only where the rounding does).

    Args:
        x: float32 tensor.
        min_val, max_val: scalar range.
        bitwidth: 2..16.
        narrow_range: strict symmetric grid.
        rounding: one of ``INPUT_ROUNDINGS``.

    Returns:
        float32 tensor of ``x``'s shape.

    Raises:
        ValueError: for an unknown ``rounding``.
    """
    if rounding not in INPUT_ROUNDINGS:
        raise ValueError(f"Expected rounding in {INPUT_ROUNDINGS}. Received: rounding={rounding!r}")
    reference = fake_quantize(x, min_val, max_val, bitwidth, narrow_range)
    if rounding == "fake_quant":
        return reference
    qmin = 1.0 if narrow_range else 0.0
    qmax = float(2 ** validate_bitwidth(bitwidth) - 1)
    scale = scale_tf(min_val, max_val, bitwidth, narrow_range)
    # The zero point exactly as TF's nudge (and so the converter) derives it.
    nudged_min, _, nudge_scale = _nudge_tf(
        tf.cast(min_val, tf.float32), tf.cast(max_val, tf.float32), bitwidth, narrow_range
    )
    zero_point = tf.round(qmin - nudged_min / nudge_scale)
    x64, s64 = tf.cast(x, tf.float64), tf.cast(scale, tf.float64)
    if rounding == "divide_half_away":
        ratio = tf.cast(tf.cast(x64 / s64, tf.float32), tf.float64)
        levels = _round_half_away_tf(ratio)
    else:
        reciprocal = tf.cast(tf.cast(1.0 / s64, tf.float32), tf.float64)
        levels = tf.round(tf.cast(tf.cast(x64 * reciprocal, tf.float32), tf.float64))
    levels = tf.clip_by_value(levels + tf.cast(zero_point, tf.float64), qmin, qmax)
    exact = tf.cast((levels - tf.cast(zero_point, tf.float64)) * s64, tf.float32)
    return reference + tf.stop_gradient(exact - reference)


def round_half_away_from_zero(x: tf.Tensor) -> tf.Tensor:
    """std::round on a float tensor: ties go away from zero (tf.round would go to even)."""
    return _round_half_away_tf(x)


_INT32_LIMIT = float(2**31 - 1)


def quantize_bias(bias: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """Rounds a bias onto the int32 grid that TFLite's integer kernels add it on.

    b_hat = scale * clamp(round_half_away(b / scale), -(2^31 - 1), 2^31 - 1), where the bias scale
    of a conv/dense layer is s_in * s_w (per output channel for per-channel weights): the converter
    stores the bias as int32 in exactly these units. Where scale is 0 (no grid) b passes unchanged.
    The gradient is the straight-through estimator (d b_hat / d b = 1).

    Args:
        bias: float bias [C].
        scale: bias scale, scalar or [C].

    Returns:
        The rounded bias, float32, same shape as ``bias``.
    """
    bias = tf.convert_to_tensor(bias, tf.float32)
    scale = tf.broadcast_to(tf.cast(scale, tf.float32), tf.shape(bias))
    safe = tf.where(scale > 0, scale, tf.ones_like(scale))
    levels = tf.clip_by_value(_round_half_away_tf(bias / safe), -_INT32_LIMIT, _INT32_LIMIT)
    rounded = tf.where(scale > 0, levels * safe, bias)
    return bias + tf.stop_gradient(rounded - bias)


def quantized_multiplier(multiplier: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """TFLite's fixed-point form of a real multiplier M > 0 (``QuantizeMultiplier``).

    M = q / 2^31 * 2^e with q = round(frac * 2^31) an int31 and frac in [0.5, 1). Returns
    (q, right_shift) as float64 tensors, right_shift = max(-e, 0) (a left shift, M >= 1, leaves
    a single rounding).
    """
    multiplier = tf.cast(multiplier, tf.float64)
    two = tf.constant(2.0, tf.float64)
    exponent = tf.floor(tf.math.log(multiplier) / tf.math.log(two)) + 1.0
    # log2 can land one off at exact powers of two; fix so that frac = M / 2^e lies in [0.5, 1).
    exponent = tf.where(multiplier / tf.pow(two, exponent) >= 1.0, exponent + 1.0, exponent)
    exponent = tf.where(multiplier / tf.pow(two, exponent) < 0.5, exponent - 1.0, exponent)
    q = _round_half_away_tf(multiplier / tf.pow(two, exponent) * 2.0**31)
    # frac rounding up to 1.0 carries into the exponent, as in TFLite.
    exponent = tf.where(q >= 2.0**31, exponent + 1.0, exponent)
    q = tf.where(q >= 2.0**31, q / 2.0, q)
    shift = tf.maximum(-exponent, tf.constant(0.0, tf.float64))
    q = q * tf.pow(two, tf.maximum(exponent, tf.constant(0.0, tf.float64)))
    return q, shift


def requantize_fixed_point(acc: tf.Tensor, multiplier: tf.Tensor, ties_away: bool = False) -> tf.Tensor:
    """Output level (before the zero point) of an integer accumulator, in TFLite's fixed point.

    With (q, shift) = ``quantized_multiplier(M)``, the kernel computes a rounding high multiply
    h = round_half_away(acc * q / 2^31) and then a rounding right shift of h by ``shift``, so it
    rounds twice: values within 2^-(shift+1) of a .5 boundary round as if they sat on it. The
    shift's rounding differs between kernels (measured on LiteRT 2.3): ties go up in the optimized
    CONV_2D with int4 filters, away from zero (gemmlowp ``RoundingDivideByPOT``) in
    TRANSPOSE_CONV and the reference kernels. Gradient: identity w.r.t. acc * M.

    Args:
        acc: integer-valued accumulator (float tensor), channels last.
        multiplier: M = s_in * s_w / s_out, scalar or per channel.
        ties_away: the shift rounds ties away from zero instead of up.

    Returns:
        Integer-valued float32 tensor.
    """
    q, shift = quantized_multiplier(multiplier)
    acc64 = tf.cast(acc, tf.float64)
    high = _round_half_away_tf(acc64 * q / 2.0**31)
    coarse = high / tf.pow(tf.constant(2.0, tf.float64), shift)
    rounded = _round_half_away_tf(coarse) if ties_away else tf.floor(coarse + 0.5)
    exact = tf.cast(acc64 * tf.cast(multiplier, tf.float64), tf.float32)
    return exact + tf.stop_gradient(tf.cast(rounded, tf.float32) - exact)


def requantize_mean(acc, count: float, s_in, s_out, min_in, min_out) -> tf.Tensor:
    """Output level (before the zero point) of XNNPACK's int8 MEAN over ``count`` elements.

    XNNPACK works on the int8 levels themselves: with S = sum(q) = acc + count * z_in,
    m = float32(float32(s_in / s_out) * float32(1 / count)) and
    b = float32(z_out - float32(count * z_in) * m), it outputs round_half_even(float32(S * m) + b)
    clamped to int8; z = -128 - round(min / s) are the int8 zero points of the 8-bit grids.
    Measured bit-exact on ai-edge-litert 2.3 (``tests/export``); the plain
    ``round(acc * s_in / (s_out * count))`` differs where that product sits within float32
    rounding of a tie. Gradient: identity.

    Args:
        acc: sum of (level - input zero point) over the window, integer-valued float32.
        count: elements averaged.
        s_in, s_out: the input and output steps; min_in, min_out: the grids' encoding minima.

    Returns:
        Integer-valued float32 tensor: the output level minus the output zero point.
    """
    f32 = tf.float32
    s_in, s_out = tf.cast(s_in, f32), tf.cast(s_out, f32)
    z_in = -128.0 - tf.round(tf.cast(min_in, f32) / s_in)
    z_out = -128.0 - tf.round(tf.cast(min_out, f32) / s_out)
    m = (s_in / s_out) * tf.constant(1.0 / count, f32)
    bias = z_out - (tf.constant(float(count), f32) * z_in) * m
    total = tf.cast(acc, f32) + tf.constant(float(count), f32) * z_in
    value = total * m + bias
    level = tf.clip_by_value(tf.round(value), -128.0, 127.0) - z_out
    reference = tf.cast(acc, f32) * (s_in / (s_out * count))
    return reference + tf.stop_gradient(level - reference)


def requantize_float(acc: tf.Tensor, multiplier: tf.Tensor) -> tf.Tensor:
    """Output level (before the zero point) as XNNPACK's "fp32" requantization computes it.

    level = round_half_even(float32(acc) * float32(M)): one float32 product, rounded to nearest
    with ties to even (XNNPACK's magic-bias rounding). Gradient: identity.

    Args:
        acc: integer-valued accumulator (float32 tensor), channels last.
        multiplier: float32 M = (s_in * s_w) / s_out as the delegate computes it, scalar or per
            channel.

    Returns:
        Integer-valued float32 tensor.
    """
    product = tf.cast(acc, tf.float32) * tf.cast(multiplier, tf.float32)
    return product + tf.stop_gradient(tf.round(product) - product)


def round_average_pool(levels: tf.Tensor, bitwidth: int, tie_tolerance: float = 1e-4) -> tf.Tensor:
    """TFLite's rounding of an int8 average pool, in grid levels q in [0, 2^b - 1].

    The kernels sum the raw signed integers r = q - 2^(b-1) of a window and divide with
    rounding half away from zero ((sum +- count/2) / count). A window mean of grid levels is
    computed in float here, so a mean within ``tie_tolerance`` of a .5 boundary is taken as an
    exact tie (a count of at most 1/(2 * tie_tolerance) elements leaves no other fraction that
    close). Gradient: identity.

    Args:
        levels: window means in grid levels (float).
        bitwidth: the grid's bitwidth.
        tie_tolerance: distance from .5 treated as a tie.

    Returns:
        Integer-valued float32 levels.
    """
    levels = tf.convert_to_tensor(levels, tf.float32)
    center = float(2 ** (validate_bitwidth(bitwidth) - 1))
    raw = levels - center
    fraction = raw - tf.floor(raw)
    tie = tf.abs(fraction - 0.5) < tie_tolerance
    away = tf.sign(raw) * (tf.floor(tf.abs(raw)) + 1.0)
    rounded = tf.where(tie, away, tf.floor(raw + 0.5)) + center
    return levels + tf.stop_gradient(rounded - levels)


def requantize_add(
    operand_levels: Sequence[tf.Tensor], operand_scales: Sequence[tf.Tensor], output_scale: tf.Tensor
) -> tf.Tensor:
    """Output level (before the zero point) of an int8 ADD as XNNPACK computes it.

    With r_i = float32(s_i / s_out), e = floor(log2(max_i r_i)) and shift = 20 - e, each input
    gets an integer multiplier m_i = round_half_even(r_i * 2^shift) (about 21 bits), and
    level = floor((sum_i m_i * q_i) / 2^shift + 1/2) for the zero-point-free input levels q_i.
    The multipliers' limited precision moves results that lie within ~1e-6 of a .5 boundary.
    Gradient: identity w.r.t. sum_i q_i * s_i / s_out.

    Args:
        operand_levels: integer-valued inputs q_i (real value / s_i), broadcast-compatible.
        operand_scales: scalar scales s_i.
        output_scale: scalar s_out.

    Returns:
        Integer-valued float32 tensor.
    """
    two = tf.constant(2.0, tf.float64)
    ratios = [tf.cast(tf.cast(s, tf.float32) / tf.cast(output_scale, tf.float32), tf.float64)
              for s in operand_scales]
    largest = tf.reduce_max(tf.stack(ratios))
    exponent = tf.floor(tf.math.log(largest) / tf.math.log(two))
    exponent = tf.where(largest / tf.pow(two, exponent) >= 2.0, exponent + 1.0, exponent)
    exponent = tf.where(largest / tf.pow(two, exponent) < 1.0, exponent - 1.0, exponent)
    factor = tf.pow(two, 20.0 - exponent)
    total = None
    exact = None
    for levels, ratio in zip(operand_levels, ratios):
        levels = tf.cast(levels, tf.float64)
        term = levels * tf.round(ratio * factor)
        total = term if total is None else total + term
        real = levels * ratio
        exact = real if exact is None else exact + real
    rounded = tf.cast(tf.floor(total / factor + 0.5), tf.float32)
    exact = tf.cast(exact, tf.float32)
    return exact + tf.stop_gradient(rounded - exact)
