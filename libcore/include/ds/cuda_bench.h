#pragma once
// ds-bench's GPU measurements (builds with CUDA), on the current device: cuBLASLt GEMMs in BF16 and in FP8 with
// DeepSeek-V3's block scaling on the same shapes (so the FP8 figure is a ratio to BF16 measured in the same run),
// the MLA decode kernel's bandwidth over the latent cache, and a training step through cuda::TrainModel with its
// MFU against the BF16 peak measured in the same run.
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

// The BF16 dense peak: the best TFLOP/s of square bf16 GEMMs of 4096 and 8192 through cuBLASLt, timed as gpu_gemm
// times them. What this GPU practically reaches now, shared or throttled as it may be: the MFU denominator.
double gpu_bf16_peak(double min_seconds);

// Times zero_grads + forward with loss + backward + clipping to norm 1 + DeviceAdamW step of a cuda::TrainModel
// with random weights on random tokens, in BF16 or, with fp8, in FP8 GEMMs (TrainModel::set_fp8): warmup untimed
// steps, then steps timed ones, each a wall time up to the device's end of the update. gflops counts the model FLOPs
// of ds/flops.h, as train_step does; mfu is gflops over peak_tflops (0 without a peak), for FP8 steps too.
StepResult gpu_train_step(const ModelConfig& config, int64_t batch, int64_t seq_len, int warmup, int steps, bool fp8,
                          double peak_tflops);

struct MlaDecodeResult {
  double best_ms = 0, median_ms = 0;
  double gbytes_per_s = 0;  // bytes read and written (cache, queries, output) over the best call
};
// One decode step of cuda::mla_decode: batch sequences of `context` cached tokens each, `heads` query heads, V3's
// widths (512 latent + 64 rope, bf16 cache, the 0.1352 softmax scale).
MlaDecodeResult gpu_mla_decode(int64_t batch, int64_t context, int64_t heads, double min_seconds);

// all_reduce (ds/bench.h) over device buffers on the current device: comm is NCCL's.
AllReduceResult gpu_all_reduce(dist::Comm& comm, int64_t bytes, double min_seconds);

}  // namespace ds::bench
