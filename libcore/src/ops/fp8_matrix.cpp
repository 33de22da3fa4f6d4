// FP8 weight matrices read in place: one byte per weight in memory, dequantized a block at a time as a GEMM reads it.
#include "ds/fp8_matrix.h"

#include <algorithm>
#include <cmath>

#include "ds/error.h"
#include "ds/fp8.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace ds {

namespace {

using quant::kBlock;

// sum x[j] e4m3(q[j]) and out[j] = e4m3(q[j]) * s over one block row: the portable versions, and the tails of the
// vector ones.
float dot_codes(const float* x, const uint8_t* q, int64_t n) {
  float sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += x[j] * e4m3_to_float(q[j]);
  return sum;
}

void dequantize_codes(float* out, const uint8_t* q, int64_t n, float s) {
  for (int64_t j = 0; j < n; ++j) out[j] = e4m3_to_float(q[j]) * s;
}

#if defined(__x86_64__)
// A table lookup per weight cannot keep up with memory, so on CPUs with AVX2 and F16C (all x86 of the last decade)
// sixteen codes at a time become IEEE halves: the sign moves to bit 15, exponent and mantissa to bits 13..7. A half's
// exponent bias is 8 more than e4m3's, so the half is the code's value / 2^8 exactly, subnormals included, and F16C
// converts it to float exactly. The build targets baseline x86-64, so these functions are compiled for AVX2 alone
// and chosen at run time; the last n % 16 codes of a block take the portable path.
#define DS_AVX2 __attribute__((target("avx2,fma,f16c")))

DS_AVX2 inline void decode16(const uint8_t* q, __m256& lo, __m256& hi) {
  const __m256i t = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))), 7);
  // The sign is now bit 14: adding it to itself carries it into bit 15.
  const __m256i half = _mm256_add_epi16(t, _mm256_and_si256(t, _mm256_set1_epi16(0x4000)));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(half));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(half, 1));
}

DS_AVX2 float dot_codes_avx2(const float* x, const uint8_t* q, int64_t n) {
  // Two accumulators hide the latency of the fused multiply-add.
  __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps(), lo, hi;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    decode16(q + j, lo, hi);
    a = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), lo, a);
    b = _mm256_fmadd_ps(_mm256_loadu_ps(x + j + 8), hi, b);
  }
  a = _mm256_add_ps(a, b);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s) * 0x1p8f + dot_codes(x + j, q + j, n - j);
}

DS_AVX2 void dequantize_codes_avx2(float* out, const uint8_t* q, int64_t n, float s) {
  // (value / 2^8) * 2^8 is exact, so the product with s rounds once, as dequantize_weight's does.
  const __m256 unit = _mm256_set1_ps(0x1p8f), scale = _mm256_set1_ps(s);
  __m256 lo, hi;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    decode16(q + j, lo, hi);
    _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_mul_ps(lo, unit), scale));
    _mm256_storeu_ps(out + j + 8, _mm256_mul_ps(_mm256_mul_ps(hi, unit), scale));
  }
  dequantize_codes(out + j, q + j, n - j, s);
}

// F16C from cpuid itself: clang's __builtin_cpu_supports does not know it.
const bool kAvx2 = [] {
  unsigned eax, ebx, ecx, edx;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
  return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}();
#endif

float dot_block(const float* x, const uint8_t* q, int64_t n) {
#if defined(__x86_64__)
  if (kAvx2) return dot_codes_avx2(x, q, n);
#endif
  return dot_codes(x, q, n);
}

void dequantize_block(float* out, const uint8_t* q, int64_t n, float s) {
#if defined(__x86_64__)
  if (kAvx2) return dequantize_codes_avx2(out, q, n, s);
#endif
  dequantize_codes(out, q, n, s);
}

int64_t blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }

}  // namespace

namespace quant {

Shape weight_scale_shape(const Shape& weight_shape) {
  if (weight_shape.size() != 2) fail("a block-quantized weight is 2-D, not {}", shape_str(weight_shape));
  return {blocks(weight_shape[0]), blocks(weight_shape[1])};
}

void check_weight_scales(const Tensor& q, const Tensor& scale_inv, std::string_view what) {
  if (q.dtype() != DType::F8_E4M3 || q.ndim() != 2)
    fail("{}: expected a 2-D F8_E4M3 weight, got {} {}", what, dtype_name(q.dtype()), shape_str(q.shape()));
  const Shape expected = weight_scale_shape(q.shape());
  if (scale_inv.dtype() != DType::F32 || scale_inv.shape() != expected)
    fail("{}: weight_scale_inv is {} {}, the weight {} needs F32 {}", what, dtype_name(scale_inv.dtype()),
         shape_str(scale_inv.shape()), shape_str(q.shape()), shape_str(expected));
  const float* scale = scale_inv.data<float>();
  if (!std::all_of(scale, scale + scale_inv.numel(), [](float v) { return std::isfinite(v); }))
    fail("{}: weight_scale_inv holds NaN or Inf", what);
}

}  // namespace quant

int64_t WeightMatrix::bytes() const {
  if (!fp8()) return rows * cols * int64_t(sizeof(float));
  return rows * cols + blocks(rows) * blocks(cols) * int64_t(sizeof(float));
}

const float* WeightMatrix::rows_f32(int64_t first, int64_t n, std::vector<float>& buffer) const {
  if (!fp8()) return f32 + first * cols;
  buffer.resize(size_t(n * cols));
  const int64_t col_blocks = blocks(cols);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = first + i;
    const float* s = scale_inv + row / kBlock * col_blocks;
    for (int64_t b = 0; b < col_blocks; ++b) {
      const int64_t j = b * kBlock;
      dequantize_block(&buffer[size_t(i * cols + j)], e4m3 + row * cols + j, std::min(kBlock, cols - j), s[b]);
    }
  }
  return buffer.data();
}

float WeightMatrix::dot_fp8(int64_t row, const float* x) const {
  const int64_t col_blocks = blocks(cols);
  const float* s = scale_inv + row / kBlock * col_blocks;
  const uint8_t* q = e4m3 + row * cols;
  float sum = 0;
  for (int64_t b = 0; b < col_blocks; ++b) {
    const int64_t j = b * kBlock;
    sum += dot_block(x + j, q + j, std::min(kBlock, cols - j)) * s[b];
  }
  return sum;
}

WeightMatrix fp8_matrix(const Tensor& weight, const Tensor& scale_inv, std::string_view what) {
  quant::check_weight_scales(weight, scale_inv, what);
  const float* s = scale_inv.data<float>();
  const uint8_t* q = weight.data<uint8_t>();
  if (std::any_of(q, q + weight.numel(), [](uint8_t c) { return (c & 0x7f) == 0x7f; }))
    fail("{}: the weight holds NaN codes", what);
  WeightMatrix m;
  m.rows = weight.dim(0);
  m.cols = weight.dim(1);
  m.e4m3 = q;
  m.scale_inv = s;
  return m;
}

}  // namespace ds
