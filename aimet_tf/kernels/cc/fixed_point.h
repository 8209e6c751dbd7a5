// Fixed-point arithmetic of the integer pipeline (see aimet_tf/kernels/target.py for the
// formulas and aimet_tf/kernels/fixed_point.py for the numpy golden model).
#ifndef AIMET_TF_KERNELS_CC_FIXED_POINT_H_
#define AIMET_TF_KERNELS_CC_FIXED_POINT_H_

#include <algorithm>
#include <cstdint>
#include <limits>

namespace aimet_dsp {

enum class Rounding { kDouble, kSingle };

constexpr int32_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int32_t kInt32Min = std::numeric_limits<int32_t>::min();

// Two's complement wrap of a 64-bit value into int32 (what an int32 accumulator does).
inline int32_t WrapInt32(int64_t x) { return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(x))); }

inline int32_t SaturateInt32(int64_t x) {
  return static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(x, kInt32Min), kInt32Max));
}

// Reduces an exact 64-bit accumulator to int32: wrap (32-bit accumulator) or saturate (wide).
inline int32_t NarrowAccumulator(int64_t acc, bool wide) { return wide ? SaturateInt32(acc) : WrapInt32(acc); }

// High 32 bits of 2*a*b rounded to nearest, = floor(a*b / 2^31 + 1/2); a = b = INT32_MIN saturates.
inline int32_t SaturatingRoundingDoublingHighMul(int32_t a, int32_t b) {
  if (a == kInt32Min && b == kInt32Min) return kInt32Max;
  const int64_t ab = static_cast<int64_t>(a) * static_cast<int64_t>(b);
  const int64_t nudge = ab >= 0 ? (int64_t{1} << 30) : (1 - (int64_t{1} << 30));
  return static_cast<int32_t>((ab + nudge) / (int64_t{1} << 31));  // C++ '/' truncates
}

// x / 2^exponent rounded to nearest, ties away from zero; 0 <= exponent <= 31.
inline int32_t RoundingDivideByPot(int32_t x, int exponent) {
  const int32_t mask = static_cast<int32_t>((int64_t{1} << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

// x * 2^exponent, saturating for exponent > 0 and rounding for exponent < 0.
inline int32_t SaturatingRoundingMultiplyByPot(int32_t x, int exponent) {
  if (exponent == 0) return x;
  if (exponent < 0) return RoundingDivideByPot(x, -exponent);
  const int32_t threshold = static_cast<int32_t>((int64_t{1} << (31 - exponent)) - 1);
  if (x > threshold) return kInt32Max;
  if (x < -threshold) return kInt32Min;
  return WrapInt32(static_cast<int64_t>(x) * (int64_t{1} << exponent));
}

// y = x * m * 2^(shift - 31), rounded once (single) or twice (double, TFLite's default).
inline int32_t MultiplyByQuantizedMultiplier(int32_t x, int32_t m, int shift, Rounding rounding) {
  if (rounding == Rounding::kSingle) {
    const int total_shift = 31 - shift;
    const int64_t round = int64_t{1} << (total_shift - 1);
    return SaturateInt32((static_cast<int64_t>(x) * m + round) >> total_shift);
  }
  const int left_shift = shift > 0 ? shift : 0;
  const int right_shift = shift > 0 ? 0 : -shift;
  return RoundingDivideByPot(
      SaturatingRoundingDoublingHighMul(WrapInt32(static_cast<int64_t>(x) * (int64_t{1} << left_shift)), m),
      right_shift);
}

inline int32_t MultiplyByQuantizedMultiplierSmallerThanOneExp(int32_t x, int32_t m, int shift, Rounding rounding) {
  if (rounding == Rounding::kSingle) return MultiplyByQuantizedMultiplier(x, m, shift, rounding);
  return RoundingDivideByPot(SaturatingRoundingDoublingHighMul(x, m), -shift);
}

inline int32_t MultiplyByQuantizedMultiplierGreaterThanOne(int32_t x, int32_t m, int left_shift, Rounding rounding) {
  if (rounding == Rounding::kSingle) return MultiplyByQuantizedMultiplier(x, m, left_shift, rounding);
  return SaturatingRoundingDoublingHighMul(WrapInt32(static_cast<int64_t>(x) * (int64_t{1} << left_shift)), m);
}

// exp(a) for a in [-1/4, 0) in Q0.31: 4th-order Taylor series around -1/8.
inline int32_t ExpOnIntervalBetweenNegativeOneQuarterAnd0Excl(int32_t a) {
  constexpr int32_t kExpMinusOneEighth = 1895147668;  // round(exp(-1/8) * 2^31)
  constexpr int32_t kOneThird = 715827883;            // round(2^31 / 3)
  const int32_t x = a + (1 << 28);
  const int32_t x2 = SaturatingRoundingDoublingHighMul(x, x);
  const int32_t x3 = SaturatingRoundingDoublingHighMul(x2, x);
  const int32_t x4 = SaturatingRoundingDoublingHighMul(x2, x2);
  const int32_t x4_over_4 = SaturatingRoundingMultiplyByPot(x4, -2);
  const int32_t poly = SaturatingRoundingMultiplyByPot(
      WrapInt32(static_cast<int64_t>(SaturatingRoundingDoublingHighMul(WrapInt32(int64_t{x4_over_4} + x3), kOneThird)) + x2),
      -1);
  return WrapInt32(int64_t{kExpMinusOneEighth} +
                   SaturatingRoundingDoublingHighMul(kExpMinusOneEighth, WrapInt32(int64_t{x} + poly)));
}

// exp(a) for a <= 0 in Q(integer_bits).(31 - integer_bits); result in Q0.31.
inline int32_t ExpOnNegativeValues(int32_t a, int integer_bits) {
  static constexpr int kBits[7] = {-2, -1, 0, 1, 2, 3, 4};
  static constexpr int32_t kFactors[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
  const int fractional_bits = 31 - integer_bits;
  const int32_t one_quarter = int32_t{1} << (fractional_bits - 2);
  const int32_t a_mod_quarter_minus_one_quarter = (a & (one_quarter - 1)) - one_quarter;
  int32_t result = ExpOnIntervalBetweenNegativeOneQuarterAnd0Excl(
      SaturatingRoundingMultiplyByPot(a_mod_quarter_minus_one_quarter, integer_bits));
  const int32_t remainder = WrapInt32(int64_t{a_mod_quarter_minus_one_quarter} - a);
  for (int i = 0; i < 7; ++i) {
    if (integer_bits > kBits[i] && (remainder & (int32_t{1} << (fractional_bits + kBits[i])))) {
      result = SaturatingRoundingDoublingHighMul(result, kFactors[i]);
    }
  }
  if (integer_bits > 5 && a < -(int64_t{1} << (fractional_bits + 5))) result = 0;
  return a == 0 ? kInt32Max : result;
}

// 1 / (1 + x) for x in [0, 1) in Q0.31 (Newton-Raphson on (1 + x) / 2 in Q2.29).
inline int32_t OneOverOnePlusXForXIn01(int32_t a) {
  constexpr int32_t k48Over17 = 1515870810;
  constexpr int32_t kMinus32Over17 = -1010580540;
  int64_t sum = int64_t{a} + kInt32Max;
  sum += sum >= 0 ? 1 : -1;
  const int32_t half_denominator = static_cast<int32_t>(sum / 2);
  int32_t x = WrapInt32(int64_t{k48Over17} + SaturatingRoundingDoublingHighMul(half_denominator, kMinus32Over17));
  for (int i = 0; i < 3; ++i) {
    const int32_t half_denominator_times_x = SaturatingRoundingDoublingHighMul(half_denominator, x);
    const int32_t one_minus = WrapInt32((int64_t{1} << 29) - half_denominator_times_x);
    x = WrapInt32(int64_t{x} + SaturatingRoundingMultiplyByPot(SaturatingRoundingDoublingHighMul(x, one_minus), 2));
  }
  return SaturatingRoundingMultiplyByPot(x, 1);
}

inline int CountLeadingZeros32(uint32_t x) { return x == 0 ? 32 : __builtin_clz(x); }

// 1 / x for x > 0 in Q(integer_digits): returns the Q0.31 scale, sets num_bits_over_unit.
inline int32_t GetReciprocal(int32_t x, int integer_digits, int* num_bits_over_unit) {
  const int clz = CountLeadingZeros32(static_cast<uint32_t>(x));
  *num_bits_over_unit = integer_digits - clz;
  const uint32_t shifted = (static_cast<uint32_t>(x) << clz) - (uint32_t{1} << 31);
  return OneOverOnePlusXForXIn01(static_cast<int32_t>(shifted));
}

}  // namespace aimet_dsp

#endif  // AIMET_TF_KERNELS_CC_FIXED_POINT_H_
