#pragma once
// A weight matrix as inference reads it, without owning it: F32 values, or FP8 e4m3 codes with DeepSeek's per-block
// dequantization multipliers (ds/quantize.h), so an FP8 checkpoint stays at one byte per weight in memory and
// is dequantized a row or a panel at a time inside the GEMM (ops::linear over a WeightMatrix, ds/ops.h).
#include <cstdint>
#include <string_view>
#include <vector>

#include "ds/tensor.h"

namespace ds {

namespace quant {
inline constexpr int64_t kBlock = 128;  // weight blocks are kBlock x kBlock, activation groups 1 x kBlock

// [ceil(out/128), ceil(in/128)] for a weight [out, in].
Shape weight_scale_shape(const Shape& weight_shape);

// Checks a 2-D F8_E4M3 weight against its weight_scale_inv: F32 of weight_scale_shape(q), every scale finite.
// Anything else is a ds::Error naming `what`.
void check_weight_scales(const Tensor& q, const Tensor& scale_inv, std::string_view what);
}  // namespace quant

// W [rows, cols] (a linear weight is [out, in]). FP8: W[i, j] = e4m3(e4m3[i, j]) * scale_inv[i/128, j/128], with
// scale_inv [ceil(rows/128), ceil(cols/128)]; edge blocks are partial.
struct WeightMatrix {
  int64_t rows = 0, cols = 0;
  const float* f32 = nullptr;        // the values, when not FP8
  const uint8_t* e4m3 = nullptr;     // the codes, when FP8
  const float* scale_inv = nullptr;  // with e4m3

  bool fp8() const { return e4m3 != nullptr; }
  int64_t bytes() const;  // what the matrix holds in memory: values, or codes and scales
  // Rows [first, first + n) as F32, row-major: a pointer into the values, or the rows dequantized into buffer.
  const float* rows_f32(int64_t first, int64_t n, std::vector<float>& buffer) const;
  // sum_j W[row, j] x[j] of an FP8 matrix, dequantizing as it reads: one byte per weight streamed.
  float dot_fp8(int64_t row, const float* x) const;
};

// Views a 2-D F8_E4M3 weight and its F32 weight_scale_inv after checking them: the scale's dtype and shape, finite
// scales, and no NaN code (0x7f, 0xff). Anything else is a ds::Error naming `what`.
WeightMatrix fp8_matrix(const Tensor& weight, const Tensor& scale_inv, std::string_view what);

}  // namespace ds
