#pragma once
// Matrix products on the GPU through cuBLASLt, row-major as ops::gemm (the column-major library computes the
// transposed product with its operands swapped). Accumulation is FP32 throughout.
//  - gemm_bf16: BF16 operands, any transposes (forward, data- and weight-gradient GEMMs).
//  - gemm_fp8: e4m3 operands with DeepSeek-V3's fine-grained scales (fp8_layout.h), both K-contiguous, which is
//    the layout Hopper's FP8 tensor cores take: forward y = x W^T (x Groups, W Blocks), data gradient dx = dy W
//    (dy Groups, W^T Blocks) and weight gradient dW = dy^T x (both Groups over the token dimension: dy^T and x^T
//    quantised from their columns, see cuda_ops.h). Needs sm_90 and cuBLAS >= 12.9; promotion to FP32 is kept on
//    (no fast accumulation), as the V3 recipe requires for long K.
// Pointers must be 16-byte aligned for FP8; results go to F32 or BF16 outputs.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "fp8_layout.h"

namespace ds::cuda {

enum class OutType { F32, BF16 };

// C[M,N] = alpha op(A) op(B) + beta C, op(X) = X or X^T, leading dimensions in elements as in BLAS (row-major).
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const __nv_bfloat16* A,
               int64_t lda, const __nv_bfloat16* B, int64_t ldb, float beta, void* C, OutType c_type, int64_t ldc,
               cudaStream_t stream);

// The routed experts' GEMMs over expert-major rows (cuda::moe_plan): rows offsets[e] .. offsets[e + 1] - 1 of
// x [rows, K] go through expert e's weight w[e] [N, K] into the same rows of y [rows, N]. offsets (E + 1 values) and
// the array w of device pointers are host memory. One cuBLASLt call per expert with rows.
void grouped_linear_bf16(void* y, OutType y_type, const __nv_bfloat16* x, const __nv_bfloat16* const* w,
                         const int32_t* offsets, int64_t E, int64_t N, int64_t K, cudaStream_t stream);

struct Fp8Operand {
  const uint8_t* codes;  // [rows, K] e4m3, row-major
  const float* scales;   // in the layout of `scaling`
  Fp8Scaling scaling;
};
// y[M,N] = beta y + sum_k a[m,k] b[n,k] with a [M,K] and b [N,K] dequantised by their scales; y row-major [M,N].
// M must be a multiple of 4, N of 8 and K of 16 (cuBLASLt's 16-byte alignment); not both operands may be Blocks.
void gemm_fp8(const Fp8Operand& a, const Fp8Operand& b, int64_t M, int64_t N, int64_t K, float beta, void* y,
              OutType y_type, cudaStream_t stream);

}  // namespace ds::cuda
