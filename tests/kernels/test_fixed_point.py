"""The numpy fixed-point primitives against exact rational arithmetic and known corner cases."""

from fractions import Fraction
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aimet_tf.kernels import DspTarget, TFLITE_REFERENCE, TFLITE_SINGLE_ROUNDING
from aimet_tf.kernels import fixed_point as fp

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None)
int32s = st.integers(fp.INT32_MIN, fp.INT32_MAX)


def _round_half_up(q: Fraction) -> int:
    return math.floor(q + Fraction(1, 2))


def _round_half_away(q: Fraction) -> int:
    sign = 1 if q >= 0 else -1
    return sign * math.floor(abs(q) + Fraction(1, 2))


@SETTINGS
@given(st.floats(min_value=1e-9, max_value=1e6, allow_nan=False))
def test_quantize_multiplier_reconstructs_the_real_value(real):
    m, e = fp.quantize_multiplier(real)
    assert 2**30 <= m < 2**31
    assert abs(m * 2.0 ** (e - 31) - real) <= real * 2.0**-31


@pytest.mark.parametrize("real, expected", [(0.0, (0, 0)), (1.0, (2**30, 1)), (0.5, (2**30, 0)), (2.0**-40, (0, 0))])
def test_quantize_multiplier_special_values(real, expected):
    assert fp.quantize_multiplier(real) == expected


def test_single_rounding_caps_the_exponent_at_30():
    assert fp.quantize_multiplier(2.0**40, TFLITE_REFERENCE)[1] == 41
    assert fp.quantize_multiplier(2.0**40, TFLITE_SINGLE_ROUNDING) == (2**31 - 1, 30)


@pytest.mark.parametrize("real", [-1.0, float("nan"), float("inf")])
def test_quantize_multiplier_rejects_bad_values(real):
    with pytest.raises(ValueError, match="Expected a finite multiplier"):
        fp.quantize_multiplier(real)


@SETTINGS
@given(int32s, int32s)
def test_srdhm_is_the_rounded_high_product(a, b):
    got = int(fp.saturating_rounding_doubling_high_mul(a, b))
    if a == b == fp.INT32_MIN:
        assert got == fp.INT32_MAX
    else:
        assert got == _round_half_up(Fraction(a * b, 2**31))


@SETTINGS
@given(int32s, st.integers(0, 31))
def test_rounding_divide_by_pot_rounds_half_away_from_zero(x, n):
    assert int(fp.rounding_divide_by_pot(x, n)) == _round_half_away(Fraction(x, 2**n))


@SETTINGS
@given(st.integers(-(2**24), 2**24), st.integers(2**30, 2**31 - 1), st.integers(-31, 8))
def test_both_roundings_are_within_one_of_the_exact_product(x, m, e):
    exact = Fraction(x * m) * Fraction(2) ** (e - 31)
    single = int(fp.multiply_by_quantized_multiplier(x, m, e, TFLITE_SINGLE_ROUNDING))
    double = int(fp.multiply_by_quantized_multiplier(x, m, e, TFLITE_REFERENCE))
    if abs(exact) < 2**30:
        assert single == math.floor(exact + Fraction(1, 2))  # one rounding: ties towards +inf
        assert abs(double - exact) <= 1


def test_double_rounding_differs_from_single_rounding_on_a_known_case():
    # x = -749, M = 1076921458 * 2^-35: the exact product is -23.4756; the rounding high multiply
    # gives -375.5 -> -376, whose rounding shift by 4 lands on the tie -23.5 -> -24.
    m, e = 1076921458, -4
    assert int(fp.multiply_by_quantized_multiplier(-749, m, e, TFLITE_REFERENCE)) == -24
    assert int(fp.multiply_by_quantized_multiplier(-749, m, e, TFLITE_SINGLE_ROUNDING)) == -23


def test_single_rounding_saturates_instead_of_overflowing():
    assert int(fp.multiply_by_quantized_multiplier(fp.INT32_MAX, 2**31 - 1, 30, TFLITE_SINGLE_ROUNDING)) == fp.INT32_MAX
    assert int(fp.multiply_by_quantized_multiplier(fp.INT32_MIN, 2**31 - 1, 30, TFLITE_SINGLE_ROUNDING)) == fp.INT32_MIN


@pytest.mark.parametrize("value, expected", [(2**31, fp.INT32_MIN), (-(2**31) - 1, fp.INT32_MAX), (2**32 + 5, 5)])
def test_wrap_int32(value, expected):
    assert int(fp.wrap_int32(value)) == expected


@pytest.mark.parametrize("value, expected", [(0.5, 1.0), (-0.5, -1.0), (2.5, 3.0), (-2.5, -3.0), (0.49999999999999994, 0.0)])
def test_round_half_away(value, expected):
    assert float(fp.round_half_away(value)) == expected


@SETTINGS
@given(st.integers(-(2**31) + 1, 0))
def test_exp_on_negative_values_is_accurate(raw):
    got = int(fp.exp_on_negative_values(raw, 5)) / 2**31
    assert abs(got - math.exp(raw / 2**26)) < 2e-8 * 2**5 + 1e-9


@SETTINGS
@given(st.integers(0, fp.INT32_MAX))
def test_one_over_one_plus_x_is_accurate(raw):
    x = raw / 2**31
    assert abs(int(fp.one_over_one_plus_x_for_x_in_0_1(raw)) / 2**31 - 1 / (1 + x)) < 1e-8


@SETTINGS
@given(st.integers(1, fp.INT32_MAX))
def test_get_reciprocal(raw):
    scale, bits = fp.get_reciprocal(raw, 12)
    value = raw / 2**19  # Q12.19
    assert abs(int(scale) / 2**31 * 2.0 ** (-int(bits)) - 1 / value) <= 1e-8 / value * 4


def test_target_validation():
    with pytest.raises(ValueError, match="rounding"):
        DspTarget(rounding="nearest")
    with pytest.raises(ValueError, match="accumulator_bits"):
        DspTarget(accumulator_bits=16)
    with pytest.raises(ValueError, match="fully_connected_requantize"):
        DspTarget(fully_connected_requantize="float32")
