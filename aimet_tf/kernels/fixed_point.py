"""Fixed-point primitives of the integer pipeline, in numpy (the golden model).

All functions take and return int64 numpy arrays (or Python ints) that hold int32 values, so
that intermediate products fit; results are reduced to int32 exactly as a C++ int32 would be
(two's complement wrap where the C++ code relies on it, saturation where it saturates).

Notation (Q-format): a raw int32 `r` of a fixed-point number with `k` integer bits stands for
r * 2^(k - 31).
"""

from __future__ import annotations

import math

import numpy as np

from aimet_tf.kernels.target import DspTarget, resolve_target

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "wrap_int32",
    "saturate_int32",
    "quantize_multiplier",
    "quantize_multiplier_smaller_than_one",
    "quantize_multiplier_greater_than_one",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "saturating_rounding_multiply_by_pot",
    "multiply_by_quantized_multiplier",
    "multiply_by_quantized_multiplier_smaller_than_one",
    "multiply_by_quantized_multiplier_greater_than_one",
    "exp_on_negative_values",
    "one_over_one_plus_x_for_x_in_0_1",
    "get_reciprocal",
    "inv_sqrt_quantized_multiplier_exp",
    "round_half_away",
]

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def wrap_int32(x) -> np.ndarray:
    """Two's complement wrap to int32: x mod 2^32 mapped into [-2^31, 2^31)."""
    x = _i64(x)
    return ((x + 2**31) & 0xFFFFFFFF) - 2**31


def saturate_int32(x) -> np.ndarray:
    """clamp(x, -2^31, 2^31 - 1)."""
    return np.clip(_i64(x), INT32_MIN, INT32_MAX)


def round_half_away(x) -> np.ndarray:
    """C's round(): nearest integer, ties away from zero (numpy's np.round rounds ties to even).

    In float64: t = trunc(x), exact fraction f = x - t, result t + sign(x) [|f| >= 1/2].
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.trunc(x)
    with np.errstate(invalid="ignore"):  # inf - inf: infinities stay infinite
        return t + np.where(np.abs(x - t) >= 0.5, np.sign(x), 0.0)


def quantize_multiplier(real: float, target: DspTarget | str | None = None) -> tuple[int, int]:
    """Represents a real multiplier as an int32 mantissa and a power-of-two exponent.

    real = q * 2^e with q in [0.5, 1) (frexp); m = round(q * 2^31) (ties away from zero);
    m = 2^31 becomes m = 2^30, e + 1; e < -31 flushes to (0, 0); single rounding caps
    e > 30 at (2^31 - 1, 30). Then real ~= m * 2^(e - 31).

    Args:
        real: the multiplier (>= 0; a double, as TFLite computes it from float32 scales).
        target: the rounding mode that will apply it.

    Returns:
        (m, e): the int32 mantissa and the exponent (left shift if > 0, right shift if < 0).

    Raises:
        ValueError: for a negative, NaN or infinite multiplier.
    """
    target = resolve_target(target)
    real = float(real)
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"Expected a finite multiplier >= 0. Received: real={real!r}")
    if real == 0.0:
        return 0, 0
    q, e = math.frexp(real)
    m = int(math.floor(q * 2.0**31 + 0.5))  # q * 2^31 is exact; + 0.5 too (q has 53 bits)
    if m == 2**31:
        m //= 2
        e += 1
    if e < -31:
        return 0, 0
    if target.rounding == "single" and e > 30:
        return INT32_MAX, 30
    return m, e


def quantize_multiplier_smaller_than_one(real: float, target: DspTarget | str | None = None) -> tuple[int, int]:
    """`quantize_multiplier` for 0 < real < 1 (exponent <= 0), as Add uses it.

    Raises:
        ValueError: if real is not in (0, 1).
    """
    if not 0.0 < float(real) < 1.0:
        raise ValueError(f"Expected a multiplier in (0, 1). Received: real={real!r}")
    m, e = quantize_multiplier(real, target)
    if e > 0:
        raise ValueError(f"Expected an exponent <= 0 for a multiplier < 1. Received: real={real!r}, exponent={e}")
    return m, e


def quantize_multiplier_greater_than_one(real: float, target: DspTarget | str | None = None) -> tuple[int, int]:
    """`quantize_multiplier` for real > 1 (exponent >= 0), as Softmax uses it.

    Raises:
        ValueError: if real <= 1.
    """
    if not float(real) > 1.0:
        raise ValueError(f"Expected a multiplier > 1. Received: real={real!r}")
    return quantize_multiplier(real, target)


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """SRDHM(a, b) = trunc((a * b + nudge) / 2^31), nudge = 2^30 if a * b >= 0 else 1 - 2^30.

    The high 32 bits of 2 * a * b rounded to nearest, which works out as floor(a * b / 2^31 + 1/2)
    (ties towards +infinity); the one overflowing case a = b = -2^31 saturates to 2^31 - 1.
    """
    a, b = np.broadcast_arrays(_i64(a), _i64(b))
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    s = ab + nudge
    # C++ division truncates towards zero; numpy's // floors.
    high = np.where(s >= 0, s >> 31, -((-s) >> 31))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """RDPOT(x, n) = x / 2^n rounded to nearest, ties away from zero (0 <= n <= 31).

    mask = 2^n - 1; r = x & mask; threshold = (mask >> 1) + [x < 0];
    result = (x >> n) + [r > threshold].
    """
    x, n = np.broadcast_arrays(_i64(x), _i64(exponent))
    mask = (np.int64(1) << n) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> n) + (remainder > threshold)


def saturating_rounding_multiply_by_pot(x, exponent: int) -> np.ndarray:
    """x * 2^exponent: a saturating left shift for exponent > 0, `rounding_divide_by_pot` for < 0."""
    x = _i64(x)
    if exponent == 0:
        return x
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, wrap_int32(x << exponent)))


def multiply_by_quantized_multiplier(x, multiplier, shift, target: DspTarget | str | None = None) -> np.ndarray:
    """y = x * m * 2^(e - 31), rounded as the target rounds (see `DspTarget`).

    Double: y = RDPOT(SRDHM(x * 2^max(e, 0), m), max(-e, 0)), the left shift wrapping like int32
    (two roundings: ties towards +infinity, then ties away from zero).
    Single: y = (x * m + 2^(30 - e)) >> (31 - e), saturated to int32.

    Args:
        x: int32 values (e.g. accumulators).
        multiplier: int32 mantissas m (broadcast against x, e.g. per output channel).
        shift: exponents e (broadcast against x).
        target: the rounding mode.

    Returns:
        int64 array of int32 results.
    """
    target = resolve_target(target)
    x, m, e = np.broadcast_arrays(_i64(x), _i64(multiplier), _i64(shift))
    if target.rounding == "single":
        total = 31 - e
        y = (x * m + (np.int64(1) << (total - 1))) >> total
        return saturate_int32(y)
    left = np.maximum(e, 0)
    right = np.maximum(-e, 0)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(wrap_int32(x << left), m), right)


def multiply_by_quantized_multiplier_smaller_than_one(x, multiplier, shift, target: DspTarget | str | None = None) -> np.ndarray:
    """y = RDPOT(SRDHM(x, m), -e) for e <= 0 (double rounding); single rounding as above."""
    target = resolve_target(target)
    if target.rounding == "single":
        return multiply_by_quantized_multiplier(x, multiplier, shift, target)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, multiplier), -_i64(shift))


def multiply_by_quantized_multiplier_greater_than_one(x, multiplier, left_shift, target: DspTarget | str | None = None) -> np.ndarray:
    """y = SRDHM(x * 2^l, m) for l >= 0 (double rounding); single rounding as above."""
    target = resolve_target(target)
    if target.rounding == "single":
        return multiply_by_quantized_multiplier(x, multiplier, left_shift, target)
    return saturating_rounding_doubling_high_mul(wrap_int32(_i64(x) << _i64(left_shift)), multiplier)


# --- gemmlowp-style fixed-point transcendental functions used by the int8 Softmax -------------

# round(exp(-2^k) * 2^31) for k = -2 .. 4: the factors of exp(-a) for each bit of a >= 1/4.
_EXP_BIT_FACTORS = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                    (2, 39332535), (3, 720401), (4, 242))
_EXP_MINUS_ONE_EIGHTH = 1895147668  # round(exp(-1/8) * 2^31)
_ONE_THIRD = 715827883  # round(2^31 / 3)
_48_OVER_17 = 1515870810  # round(48/17 * 2^29), Q2.29
_MINUS_32_OVER_17 = -1010580540  # round(-32/17 * 2^29), Q2.29


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: np.ndarray) -> np.ndarray:
    """exp(a) for a in [-1/4, 0) in Q0.31: Taylor series around -1/8 to the 4th order.

    x = a + 1/8; exp(a) = e^(-1/8) * (1 + x + x^2/2 + x^3/6 + x^4/24).
    """
    x = a + (1 << 28)
    x2 = saturating_rounding_doubling_high_mul(x, x)
    x3 = saturating_rounding_doubling_high_mul(x2, x)
    x4 = saturating_rounding_doubling_high_mul(x2, x2)
    x4_over_4 = saturating_rounding_multiply_by_pot(x4, -2)
    poly = saturating_rounding_multiply_by_pot(
        wrap_int32(saturating_rounding_doubling_high_mul(wrap_int32(x4_over_4 + x3), _ONE_THIRD) + x2), -1)
    return wrap_int32(_EXP_MINUS_ONE_EIGHTH + saturating_rounding_doubling_high_mul(_EXP_MINUS_ONE_EIGHTH, wrap_int32(x + poly)))


def exp_on_negative_values(a, integer_bits: int) -> np.ndarray:
    """exp(a) for a <= 0 given in Q(integer_bits).(31 - integer_bits); result in Q0.31.

    a = -(k/4 + f) with f in (0, 1/4]: exp(a) = exp(f') * prod over the set bits b of the
    multiple of 1/4 of exp(-2^b), with exp(f') from the series above; exp(0) = 2^31 - 1.
    """
    a = _i64(a)
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_one_quarter = (a & (one_quarter - 1)) - one_quarter
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        saturating_rounding_multiply_by_pot(a_mod_quarter_minus_one_quarter, integer_bits))
    remainder = a_mod_quarter_minus_one_quarter - a
    for exponent, factor in _EXP_BIT_FACTORS:
        if integer_bits > exponent:
            bit = np.int64(1) << (fractional_bits + exponent)
            result = np.where((remainder & bit) != 0, saturating_rounding_doubling_high_mul(result, factor), result)
    if integer_bits > 5:
        result = np.where(a < -(np.int64(1) << (fractional_bits + 5)), 0, result)
    return np.where(a == 0, INT32_MAX, result)


def _rounding_half_sum(a, b) -> np.ndarray:
    """(a + b) / 2 rounded away from zero, without overflow."""
    s = _i64(a) + _i64(b)
    s = s + np.where(s >= 0, 1, -1)
    return np.where(s >= 0, s // 2, -((-s) // 2))


def one_over_one_plus_x_for_x_in_0_1(a) -> np.ndarray:
    """1 / (1 + x) for x in [0, 1) given in Q0.31; result in Q0.31.

    Newton-Raphson on d = (1 + x) / 2 in Q2.29: y0 = 48/17 - 32/17 * d, three steps
    y <- y + y * (1 - d * y), then 1/(1 + x) = y / 2.
    """
    half_denominator = _rounding_half_sum(a, INT32_MAX)
    x = wrap_int32(_48_OVER_17 + saturating_rounding_doubling_high_mul(half_denominator, _MINUS_32_OVER_17))
    for _ in range(3):
        half_denominator_times_x = saturating_rounding_doubling_high_mul(half_denominator, x)
        one_minus = wrap_int32((1 << 29) - half_denominator_times_x)
        x = wrap_int32(x + saturating_rounding_multiply_by_pot(saturating_rounding_doubling_high_mul(x, one_minus), 2))
    return saturating_rounding_multiply_by_pot(x, 1)


def _count_leading_zeros_u32(x: np.ndarray) -> np.ndarray:
    x = _i64(x) & 0xFFFFFFFF
    bits = np.zeros_like(x)
    nonzero = x > 0
    bits[nonzero] = np.floor(np.log2(x[nonzero].astype(np.float64))).astype(np.int64) + 1
    # log2 of values just below a power of two can round up in float64; fix by checking.
    too_big = nonzero & ((np.int64(1) << np.maximum(bits - 1, 0)) > x)
    bits[too_big] -= 1
    return 32 - bits


def get_reciprocal(x, integer_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """1 / x for x > 0 in Q(integer_digits): returns (scale Q0.31, num_bits_over_unit).

    With c = clz(x): num_bits_over_unit = integer_digits - c and
    1/x = one_over_one_plus_x(x * 2^c - 1) * 2^(-num_bits_over_unit) in Q0.31.
    """
    x = _i64(x)
    clz = _count_leading_zeros_u32(x)
    shifted_minus_one = wrap_int32(((x & 0xFFFFFFFF) << clz) - (1 << 31))
    return one_over_one_plus_x_for_x_in_0_1(shifted_minus_one), integer_digits - clz


_HALF_SQRT_2 = 1518500250  # round(sqrt(2) / 2 * 2^31), Q0.31


def inv_sqrt_quantized_multiplier_exp(x) -> tuple[np.ndarray, np.ndarray]:
    """1 / sqrt(x) for int32 x >= 0 as a quantized multiplier (m, e): 1/sqrt(x) ~= m * 2^(e - 31).

    TFLite's GetInvSqrtQuantizedMultiplierExp (used by the int8 RSQRT), vectorized:
    x <= 1 gives (2^31 - 1, 0). Otherwise x is divided by 4 until below 2^29 (k times), then
    shifted left by 2p bits (p = floor((clz(x) - 1) / 2) - 1) into [2^27, 2^29); with
    s = 11 + k - p and x' = x * 2^(2p) read as Q3.28 at half scale (raw x' / 2),
    five Newton-Raphson steps y <- Rescale3(1.5 y - (x'/2) / 2 * Rescale3(y^3)) from y = 1 in Q3.28
    (gemmlowp products: SRDHM; Rescale3: saturating left shifts), then m = SRDHM(y, sqrt(2)/2);
    s < 0 shifts m left by -s (int32 wrap) and sets s = 0; e = -s.

    Returns:
        int64 arrays (m, e) of x's shape.
    """
    x = _i64(x)
    small = x <= 1
    v = np.where(small, 2, x)
    shift = np.full(v.shape, 11, dtype=np.int64)
    while np.any(v >= (1 << 29)):
        big = v >= (1 << 29)
        v = np.where(big, v // 4, v)
        shift = shift + big
    pairs = (_count_leading_zeros_u32(v) - 1) // 2 - 1
    shift = shift - pairs
    v = v << (2 * pairs)
    half_input = rounding_divide_by_pot(v >> 1, 1)
    half_three = (1 << 28) + (1 << 27)
    y = np.full(v.shape, 1 << 28, dtype=np.int64)
    for _ in range(5):
        y3 = saturating_rounding_multiply_by_pot(
            saturating_rounding_doubling_high_mul(saturating_rounding_doubling_high_mul(y, y), y), 6)
        difference = wrap_int32(saturating_rounding_doubling_high_mul(half_three, y)
                                - saturating_rounding_doubling_high_mul(half_input, y3))
        y = saturating_rounding_multiply_by_pot(difference, 3)
    m = saturating_rounding_doubling_high_mul(y, _HALF_SQRT_2)
    m = np.where(shift < 0, wrap_int32(m << np.maximum(-shift, 0)), m)
    shift = np.maximum(shift, 0)
    return np.where(small, INT32_MAX, m), np.where(small, 0, -shift)
