#pragma once
// ds-bench's GPU measurements (builds with CUDA), on the current device: cuBLASLt GEMMs in BF16 and in FP8 with
// DeepSeek-V3's block scaling on the same shapes (so the FP8 figure is a ratio to BF16 measured in the same run),
// and the MLA decode kernel's bandwidth over the latent cache.
#include <cstdint>
#include <string>
#include <vector>

#include "ds/bench.h"

namespace ds::bench {

std::string gpu_name();  // of the current device, e.g. "NVIDIA H200"

// DeepSeek-V3's per-layer GEMMs (deepseek_v3_gemm_shapes) at each of these token counts.
inline const std::vector<int64_t> kGpuGemmTokens = {64, 128, 512, 2048, 8192};

struct GpuGemmResult {
  double bf16_tflops = 0, fp8_tflops = 0;  // best call of each; fp8 excludes quantising its inputs
  double bf16_median_tflops = 0, fp8_median_tflops = 0;
};
// Times y[M,N] = x[M,K] W[N,K]^T with bf16 operands and output, then with e4m3 operands (1x128 activation scales,
// 128x128 weight scales) and bf16 output: one warm-up call, then calls until min_seconds have passed (at least 3).
// Values do not change the speed of either, so the operands are constant patterns.
GpuGemmResult gpu_gemm(int64_t M, int64_t N, int64_t K, double min_seconds);

struct MlaDecodeResult {
  double best_ms = 0, median_ms = 0;
  double gbytes_per_s = 0;  // bytes read and written (cache, queries, output) over the best call
};
// One decode step of cuda::mla_decode: batch sequences of `context` cached tokens each, `heads` query heads, V3's
// widths (512 latent + 64 rope, bf16 cache, the 0.1352 softmax scale).
MlaDecodeResult gpu_mla_decode(int64_t batch, int64_t context, int64_t heads, double min_seconds);

}  // namespace ds::bench
