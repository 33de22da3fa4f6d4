#pragma once
// How FP8 e4m3 operands and their scales lie in GPU memory for the block-scaled GEMMs (cuda_gemm.h), which use
// cuBLASLt's layouts, and conversions from the CPU's layouts (ds/quantize.h). Plain C++: every build tests them.
//
// An operand is a row-major [rows, K] matrix of e4m3 codes, K contiguous, quantised in one of two ways:
//  - Groups (1x128, activations and gradients): one scale per row and 128 consecutive K; the scales are stored
//    [ceil(K/128)][rows], rows fastest (cuBLASLt's CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F).
//  - Blocks (128x128, weights): one scale per block, stored [ceil(rows/128)][round_up(ceil(K/128), 4)], K fastest,
//    the padding unused (CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F); DeepSeek's weight_scale_inv without padding.
// A value is e4m3(code) * scale, as on the CPU.
#include <cstdint>
#include <vector>

namespace ds::cuda {

enum class Fp8Scaling { Groups, Blocks };

inline constexpr int64_t kFp8Tile = 128;

inline int64_t fp8_tiles(int64_t n) { return (n + kFp8Tile - 1) / kFp8Tile; }
// The row stride of a Blocks scale matrix: ceil(K/128) padded to a multiple of 4.
inline int64_t fp8_block_scale_stride(int64_t K) { return (fp8_tiles(K) + 3) / 4 * 4; }
// Floats in the scale array of a [rows, K] operand.
int64_t fp8_scale_count(Fp8Scaling scaling, int64_t rows, int64_t K);
// Index of the scale of element (row, k).
int64_t fp8_scale_index(Fp8Scaling scaling, int64_t rows, int64_t K, int64_t row, int64_t k);

// From the CPU layouts to the GPU's: quant::quantize_activations' scales [rows, ceil(K/128)] (Groups), or a
// weight_scale_inv [ceil(rows/128), ceil(K/128)] (Blocks; the padding is zero).
std::vector<float> fp8_scales_to_gpu(Fp8Scaling scaling, const float* scales, int64_t rows, int64_t K);
// And back (the padding dropped).
std::vector<float> fp8_scales_from_gpu(Fp8Scaling scaling, const float* scales, int64_t rows, int64_t K);

}  // namespace ds::cuda
