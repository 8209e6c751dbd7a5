"""A kernel's output levels from its integer accumulator, for a `DspTarget`: what the simulation
needs to predict the DSP reference kernels (and LiteRT's BUILTIN_REF kernels) bit for bit.

The kernels of `aimet_tf.kernels.reference` take int8 tensors and zero points. The simulation
has, at each layer, the zero-point-free quantities the kernel works with: the int32 accumulator
of a convolution (sum of (x - z_x) * w plus the int32 bias), the zero-point-free levels of an
Add's or a Mul's operands, the sum of a MEAN's levels. These functions apply the kernel's requantization to
them with the same multiplier arithmetic as the executor (TFLite's `Prepare`: double-precision
products of the float32 scales, then `quantize_multiplier`), and return the output level before
the output zero point is added (the output quantizer adds it and clamps).

All inputs are numpy arrays of integer values (any dtype) and float32 scales; outputs are int64.

Example:
    >>> levels = conv_levels(acc, s_x=0.02, s_w=np.array([0.01, 0.03]), s_y=0.05)
"""

from __future__ import annotations

import numpy as np

from aimet_tf.kernels import fixed_point as fp
from aimet_tf.kernels import reference
from aimet_tf.kernels.target import DspTarget, resolve_target

__all__ = [
    "conv_multipliers",
    "add_parameters",
    "conv_levels",
    "fully_connected_levels",
    "add_levels",
    "mul_levels",
    "mean_levels",
    "softmax_parameters",
    "softmax_levels",
    "mul_parameters",
    "rsqrt_parameters",
    "lookup_table",
    "gelu_table",
]


def _accumulator(acc: np.ndarray, target: DspTarget) -> np.ndarray:
    acc = np.asarray(acc, dtype=np.int64)
    return fp.wrap_int32(acc) if target.accumulator_bits == 32 else fp.saturate_int32(acc)


def conv_multipliers(s_x: float, s_w, s_y: float, target: DspTarget | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (m, e) of M_c = double(s_x) * double(s_w[c]) / double(s_y) (TFLite's Prepare).

    Args:
        s_x, s_y: float32 input / output scales.
        s_w: float32 weight scale(s), scalar or [C].
        target: rounding mode of the multiply.

    Returns:
        int64 mantissas and exponents, shape [C] (or [1] for a scalar s_w).
    """
    target = resolve_target(target)
    scales = np.atleast_1d(np.asarray(s_w, dtype=np.float32))
    pairs = [fp.quantize_multiplier(float(np.float32(s_x)) * float(sw) / float(np.float32(s_y)), target)
             for sw in scales]
    return (np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64))


def conv_levels(acc, s_x: float, s_w, s_y: float, target: DspTarget | str | None = None) -> np.ndarray:
    """CONV_2D / DEPTHWISE_CONV_2D: level = MBQM(acc, m_c, e_c) over the last (channel) axis."""
    target = resolve_target(target)
    multiplier, shift = conv_multipliers(s_x, s_w, s_y, target)
    return fp.multiply_by_quantized_multiplier(_accumulator(acc, target), multiplier, shift, target)


def fully_connected_levels(acc, s_x: float, s_w, s_y: float, target: DspTarget | str | None = None) -> np.ndarray:
    """FULLY_CONNECTED: level = round_half_away(double(acc) * M_o) (target "float64", LiteRT's
    reference kernel, saturated to int32), or MBQM(acc, m_o, e_o) ("fixed_point")."""
    target = resolve_target(target)
    acc = _accumulator(acc, target)
    if target.fully_connected_requantize == "fixed_point":
        return conv_levels(acc, s_x, s_w, s_y, target)
    scales = np.atleast_1d(np.asarray(s_w, dtype=np.float32))
    effective = np.array([float(np.float32(s_x)) * float(sw) / float(np.float32(s_y)) for sw in scales])
    scaled = fp.round_half_away(acc.astype(np.float64) * effective)
    return np.clip(scaled, fp.INT32_MIN, fp.INT32_MAX).astype(np.int64)


def add_parameters(s_1: float, s_2: float, s_y: float, target: DspTarget | str | None = None) -> dict[str, int]:
    """TFLite ADD's multipliers: inputs rescaled to 2 max(s_1, s_2) / 2^L, then to s_y.

    Returns:
        {"input1_multiplier", "input1_shift", "input2_multiplier", "input2_shift",
        "output_multiplier", "output_shift"}.

    Raises:
        ValueError: if 2 max(s_1, s_2) / (2^L s_y) is not in (0, 1) (TFLite rejects such scales).
    """
    target = resolve_target(target)
    twice_max = 2.0 * float(max(np.float32(s_1), np.float32(s_2)))
    real_out = twice_max / ((1 << target.add_left_shift) * float(np.float32(s_y)))
    if not 0.0 < real_out < 1.0:
        raise ValueError(
            f"Expected the ADD output rescaling 2 max(s1, s2) / (2^{target.add_left_shift} s_out) in (0, 1). "
            f"Received: {real_out:.3g} (s1={s_1}, s2={s_2}, s_out={s_y})."
        )
    m1, e1 = fp.quantize_multiplier_smaller_than_one(float(np.float32(s_1)) / twice_max, target)
    m2, e2 = fp.quantize_multiplier_smaller_than_one(float(np.float32(s_2)) / twice_max, target)
    mo, eo = fp.quantize_multiplier_smaller_than_one(real_out, target)
    return dict(input1_multiplier=m1, input1_shift=e1, input2_multiplier=m2, input2_shift=e2,
                output_multiplier=mo, output_shift=eo)


def add_levels(q_1, q_2, s_1: float, s_2: float, s_y: float, target: DspTarget | str | None = None) -> np.ndarray:
    """ADD of zero-point-free operand levels q_i: a_i = MBQM<(q_i * 2^L, m_i, e_i);
    level = MBQM<(a_1 + a_2, m_y, e_y) (broadcasting)."""
    target = resolve_target(target)
    p = add_parameters(s_1, s_2, s_y, target)
    shifted_1 = np.asarray(q_1, dtype=np.int64) << target.add_left_shift
    shifted_2 = np.asarray(q_2, dtype=np.int64) << target.add_left_shift
    a_1 = fp.multiply_by_quantized_multiplier_smaller_than_one(shifted_1, p["input1_multiplier"], p["input1_shift"], target)
    a_2 = fp.multiply_by_quantized_multiplier_smaller_than_one(shifted_2, p["input2_multiplier"], p["input2_shift"], target)
    return fp.multiply_by_quantized_multiplier_smaller_than_one(
        fp.wrap_int32(a_1 + a_2), p["output_multiplier"], p["output_shift"], target
    )


def mul_levels(q_1, q_2, s_1: float, s_2: float, s_y: float, target: DspTarget | str | None = None) -> np.ndarray:
    """MUL of zero-point-free operand levels q_i (broadcasting): level = MBQM(q_1 * q_2, m, e) with
    (m, e) from `mul_parameters` (TFLite's Prepare: the scale product and quotient in float32;
    its reference and optimized int8 kernels round the same way)."""
    target = resolve_target(target)
    m, e = mul_parameters(s_1, s_2, s_y, target)
    product = np.asarray(q_1, dtype=np.int64) * np.asarray(q_2, dtype=np.int64)
    return fp.multiply_by_quantized_multiplier(fp.wrap_int32(product), m, e, target)


def mean_levels(total, count: int, s_x: float, s_y: float, target: DspTarget | str | None = None) -> np.ndarray:
    """MEAN of ``count`` levels whose zero-point-free sum is ``total``:
    level = MBQM(total, m', e') with (m', e') = (m, e) of s_x / s_y with the count folded in."""
    target = resolve_target(target)
    m, e = fp.quantize_multiplier(float(np.float32(s_x)) / float(np.float32(s_y)), target)
    k = min(int(count).bit_length() - 1, 32, 31 + e)
    return fp.multiply_by_quantized_multiplier(fp.wrap_int32(np.asarray(total, dtype=np.int64)),
                                               (m << k) // int(count), e - k, target)


def softmax_parameters(s_x: float, beta: float = 1.0, target: DspTarget | str | None = None) -> dict[str, int]:
    """SOFTMAX's input multiplier, left shift and diff_min for an int8 input of scale s_x.

    Raises:
        ValueError: if beta * s_x * 2^26 <= 1 (TFLite cannot represent it).
    """
    target = resolve_target(target)
    integer_bits = 5
    max_real = (2.0**30 - 1.0) if target.rounding == "single" else (2.0**31 - 1.0)
    real = min(float(beta) * float(np.float32(s_x)) * float(1 << (31 - integer_bits)), max_real)
    if not real > 1.0:
        raise ValueError(f"Expected beta * input scale * 2^26 > 1 for SOFTMAX. Received: {real:.3g} "
                         f"(beta {beta}, input scale {s_x}).")
    m, left_shift = fp.quantize_multiplier_greater_than_one(real, target)
    radius = int(((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) // (1 << left_shift))
    return dict(input_multiplier=m, input_left_shift=left_shift, diff_min=-radius)


def softmax_levels(q, s_x: float, beta: float = 1.0, target: DspTarget | str | None = None,
                   float_table: bool = False) -> np.ndarray:
    """SOFTMAX over the last axis of zero-point-free input levels q (any integer offset: the
    kernels only see x - x_max), as output levels on the fixed 1/256 grid minus its zero point
    (0..255). ``float_table=False``: the reference kernel of ``target``
    (`reference.softmax`); True: LiteRT's optimized kernel (`reference.softmax_float_table`,
    what its "builtin" and "default" op resolvers run)."""
    q = np.asarray(q, dtype=np.int64)
    row = q - q.max(axis=-1, keepdims=True) + 127
    if np.any(row < -128):
        raise ValueError(f"Expected softmax input levels spanning at most 255 steps per row. Received a span "
                         f"of {int(127 - row.min())}.")
    row = row.astype(np.int8)
    if float_table:
        out = reference.softmax_float_table(row, input_scale=s_x, beta=beta)
    else:
        out = reference.softmax(row, target=target, **softmax_parameters(s_x, beta, target))
    return out.astype(np.int64) + 128


def mul_parameters(s_1: float, s_2: float, s_y: float, target: DspTarget | str | None = None) -> tuple[int, int]:
    """MUL's (m, e) as TFLite's Prepare computes them: M = float32(float32(s_1 * s_2) / s_y).

    The product and the quotient are float32 operations (the scales are floats in C++; only the
    result is widened to double before `quantize_multiplier`).
    """
    target = resolve_target(target)
    with np.errstate(over="ignore", under="ignore"):
        real = np.float32(np.float32(s_1) * np.float32(s_2)) / np.float32(s_y)
    return fp.quantize_multiplier(float(np.float32(real)), target)


def rsqrt_parameters(s_x: float, s_y: float, target: DspTarget | str | None = None) -> tuple[int, int]:
    """RSQRT's (m, e) of 1 / (sqrt(s_x) * s_y): sqrt and product in float32, the division in double
    (TFLite's Prepare)."""
    target = resolve_target(target)
    denominator = np.float32(np.sqrt(np.float32(s_x)) * np.float32(s_y))
    return fp.quantize_multiplier(1.0 / float(denominator), target)


def _round_half_away_f32(x: np.ndarray) -> np.ndarray:
    """C's roundf on float32 values (ties away from zero), staying in float32."""
    x = np.asarray(x, dtype=np.float32)
    t = np.trunc(x)
    return (t + np.where(np.abs(x - t) >= np.float32(0.5), np.sign(x), np.float32(0))).astype(np.float32)


def lookup_table(transform, s_x: float, z_x: int, s_y: float, z_y: int) -> np.ndarray:
    """An int8 -> int8 lookup table built the way TFLite's LUTPopulate builds it, all in float32.

    For each input code q in -128 .. 127: d = float32(s_x) * float32(q - z_x);
    t = transform(d); r = roundf(t * float32(1 / s_y)); y = clamp(int(r + z_y), -128, 127)
    (the int conversion truncates).

    Args:
        transform: float32 [256] -> float32 [256] (the float function, vectorized).
        s_x, z_x, s_y, z_y: input and output scales and zero points.

    Returns:
        int8 [256]: entry q + 128 is the output for input code q.
    """
    codes = np.arange(-128, 128, dtype=np.int64)
    dequantized = (np.float32(s_x) * (codes - z_x).astype(np.float32)).astype(np.float32)
    transformed = np.asarray(transform(dequantized), dtype=np.float32)
    inverse = np.float32(np.float32(1.0) / np.float32(s_y))
    with np.errstate(over="ignore", invalid="ignore"):
        rescaled = _round_half_away_f32(transformed * inverse)
        shifted = (rescaled + np.float32(z_y)).astype(np.float32)
    shifted = np.nan_to_num(shifted, nan=0.0, posinf=127.0, neginf=-128.0)
    return np.clip(np.trunc(np.clip(shifted, -2.0**31, 2.0**31 - 1)), -128, 127).astype(np.int8)


def _libm():
    """The C math library (float32 erfcf / tanhf, as TFLite's kernels call them)."""
    import ctypes
    import ctypes.util

    lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    for name in ("erfcf", "tanhf"):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return lib


def _gelu_float32(values: np.ndarray, approximate: bool) -> np.ndarray:
    """TFLite's GeluTransform / GeluTransformApproximate, evaluated in float32 with the C library.

    Exact: 0.5 x erfc(-x / sqrt(2)); approximate: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
    """
    lib = _libm()
    f32 = np.float32
    out = np.empty(values.shape, dtype=np.float32)
    minus_sqrt_half = f32(-0.70710678118654752440)
    sqrt_2_over_pi = f32(1.12837916709551257390 * 0.70710678118654752440)
    for i, x in enumerate(values.astype(np.float32)):
        half_x = f32(f32(0.5) * x)
        if approximate:
            cube = f32(f32(f32(f32(0.044715) * x) * x) * x)
            out[i] = f32(half_x * f32(f32(1.0) + f32(lib.tanhf(float(f32(sqrt_2_over_pi * f32(x + cube)))))))
        else:
            out[i] = f32(half_x * f32(lib.erfcf(float(f32(x * minus_sqrt_half)))))
    return out


def gelu_table(s_x: float, z_x: int, s_y: float, z_y: int, approximate: bool = False) -> np.ndarray:
    """GELU's int8 lookup table (TFLite's Prepare: `lookup_table` of the float32 GELU)."""
    return lookup_table(lambda d: _gelu_float32(d, approximate), s_x, z_x, s_y, z_y)
