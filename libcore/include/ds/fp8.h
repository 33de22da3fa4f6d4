#pragma once
// FP8 e4m3fn (safetensors "F8_E4M3", torch.float8_e4m3fn): 1 sign, 4 exponent bits (bias 7), 3 mantissa bits.
// Largest finite value 448, smallest subnormal 2^-9, no infinities, NaN = 0x7f and 0xff.
// The conversions here are bit-identical to CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) and to the
// Hopper instruction cvt.rn.satfinite.e4m3x2.f32, so what the CPU writes is what a GPU kernel would have written.
#include <array>
#include <cstdint>
#include <cstring>

namespace ds {

inline constexpr float kE4M3Max = 448.0f;

// Round to nearest even; magnitudes above 448 (infinities included) saturate to +-448; every NaN becomes 0x7f (CUDA
// drops the sign of a NaN); values at or below 2^-10 in magnitude become a zero of their sign.
// Branch-free, so that loops over arrays vectorise.
inline uint8_t float_to_e4m3(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  const uint32_t abs = bits & 0x7fffffffu, sign = (bits >> 24) & 0x80u;
  // Normal (|x| >= 2^-6): drop 20 of the 23 mantissa bits rounding to nearest even, then rebias the exponent from
  // 127 to 7; a carry moves into the exponent correctly.
  const uint32_t normal = ((abs + 0x7ffffu + ((abs >> 20) & 1u)) >> 20) - ((127u - 7u) << 3);
  // Subnormal (|x| < 2^-6, a multiple of 2^-9): adding 2^14, whose ulp is 2^-9, leaves |x| rounded to nearest even
  // by the FPU in the low mantissa bits.
  float magnitude;
  std::memcpy(&magnitude, &abs, 4);
  const float shifted = magnitude + 0x1p14f;
  uint32_t subnormal;
  std::memcpy(&subnormal, &shifted, 4);
  // Selects as masks (all ones where true) so that the compiler emits no branch.
  const auto mask = [](bool b) { return 0u - uint32_t(b); };
  const uint32_t is_subnormal = mask(abs < 0x3c800000u);
  uint32_t code = (subnormal & 0xfu & is_subnormal) | (normal & ~is_subnormal);
  const uint32_t saturates = mask(abs >= 0x43e80000u) | mask(code > 0x7eu);  // from 464 = 448 + half an ulp up
  code = ((code & ~saturates) | (0x7eu & saturates)) | sign;
  const uint32_t is_nan = mask(abs > 0x7f800000u);
  return uint8_t((code & ~is_nan) | (0x7fu & is_nan));
}

namespace detail {
constexpr std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> table{};
  for (int code = 0; code < 256; ++code) {
    const int exponent = (code >> 3) & 0xf, mantissa = code & 7;
    float magnitude = 0;
    if ((code & 0x7f) == 0x7f) {
      magnitude = __builtin_nanf("");
    } else {
      // value = (exponent ? 8 + mantissa : mantissa) * 2^(max(exponent, 1) - 10)
      magnitude = float(exponent ? 8 + mantissa : mantissa);
      for (int e = exponent > 0 ? exponent : 1; e < 10; ++e) magnitude /= 2;
      for (int e = 10; e < exponent; ++e) magnitude *= 2;
    }
    table[size_t(code)] = code & 0x80 ? -magnitude : magnitude;
  }
  return table;
}
}  // namespace detail

// Every code's value; exact (each e4m3 value is a float). The NaN codes give NaN.
inline constexpr std::array<float, 256> kE4M3Values = detail::make_e4m3_table();

inline float e4m3_to_float(uint8_t code) { return kE4M3Values[code]; }

}  // namespace ds
