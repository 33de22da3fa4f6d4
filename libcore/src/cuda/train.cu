// The kernels a training step needs beyond the forward's (cuda_ops.h, "Training"): the backward passes of the
// embedding, MLA's shared RoPE key, the MoE combine and the routing weights, and the global gradient norm. Each is
// small next to the GEMMs, so each is plainly the CPU's loop (libcore/src/model, libcore/src/train/optim.cpp).
#include "common.cuh"
#include "cuda_ops.h"

namespace ds::cuda {

namespace {

__global__ void add_kernel(float* y, const float* a, const float* b, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a[i] + b[i];
}

__global__ void scale_kernel(float* x, float s, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= s;
}

// Thread (u, j) owns value j of the table row of the u-th distinct token and adds that token's rows in order.
__global__ void embedding_backward_kernel(float* dtable, const float* dout, const int32_t* unique_tokens,
                                          const int32_t* offsets, const int32_t* rows, int64_t unique, int64_t d) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= unique * d) return;
  const int64_t u = i / d, j = i % d;
  float acc = 0;
  for (int32_t r = offsets[u]; r < offsets[u + 1]; ++r) acc += dout[int64_t(rows[r]) * d + j];
  dtable[int64_t(unique_tokens[u]) * d + j] += acc;
}

__global__ void sum_heads_kernel(float* dst, int64_t dst_stride, const float* src, int64_t N, int64_t H,
                                 int64_t head_stride, int64_t offset, int64_t width) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * width) return;
  const int64_t n = i / width, c = i % width;
  const float* s = src + n * H * head_stride + offset + c;
  float acc = 0;
  for (int64_t h = 0; h < H; ++h) acc += s[h * head_stride];
  dst[n * dst_stride + c] += acc;
}

// One warp per assignment (n, k): lanes across the d values of the row.
__global__ void moe_combine_backward_kernel(float* dye, float* dweights, const float* dy, const float* ye,
                                            const int32_t* row_of, const float* weights, int64_t N, int64_t K,
                                            int64_t d) {
  const int64_t a = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (a >= N * K) return;  // whole warps leave together
  const int64_t n = a / K, row = row_of[a];
  const float w = weights[a];
  const float* g = dy + n * d;
  const float* out = ye + row * d;
  float* dr = dye + row * d;
  float dot = 0;
  for (int64_t j = lane; j < d; j += 32) {
    dr[j] = w * g[j];
    dot += g[j] * out[j];
  }
  dot = warp_sum(dot);
  if (lane == 0) dweights[a] = dot;
}

struct RouteBackwardParams {
  int E, K;
  bool sigmoid, renormalise;
  float routed_scale;
  const float* balance_f;  // [B, E], or null without the balance loss
  float balance_scale;
  int64_t T;
};

// One thread per token, its d(scores) in registers (E is at most kMaxRoutedExperts), then spread by the score
// function: sigmoid elementwise, softmax over the whole row.
__global__ void route_backward_kernel(float* dlogits, const float* dweights, const float* scores, const int32_t* chosen,
                                      int64_t N, RouteBackwardParams p) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const float* s = scores + n * p.E;
  const int32_t* ch = chosen + n * p.K;
  const float* dw = dweights + n * p.K;
  float* dl = dlogits + n * p.E;
  float ds[kMaxRoutedExperts];
  for (int e = 0; e < p.E; ++e) ds[e] = 0.0f;
  // Through w = scale * s / (sum of chosen s) when renormalised, else w = scale * s.
  if (p.renormalise) {
    float sum = 0, dot = 0;
    for (int k = 0; k < p.K; ++k) sum += s[ch[k]];
    const float z = sum + 1e-20f;
    for (int k = 0; k < p.K; ++k) dot += dw[k] * s[ch[k]];
    for (int k = 0; k < p.K; ++k) ds[ch[k]] += p.routed_scale * (dw[k] / z - dot / (z * z));
  } else {
    for (int k = 0; k < p.K; ++k) ds[ch[k]] += p.routed_scale * dw[k];
  }
  // The balance loss alpha/B sum_i f_i P_i of the token's sequence, P_i the mean over its tokens of s_i / sum_j s_j.
  if (p.balance_f) {
    const float* f = p.balance_f + (n / p.T) * p.E;
    float total = 0, dot = 0;
    for (int e = 0; e < p.E; ++e) total += s[e];
    for (int e = 0; e < p.E; ++e) dot += p.balance_scale * f[e] * s[e] / total;
    for (int e = 0; e < p.E; ++e) ds[e] += (p.balance_scale * f[e] - dot) / total;
  }
  if (p.sigmoid) {
    for (int e = 0; e < p.E; ++e) dl[e] = ds[e] * s[e] * (1.0f - s[e]);
  } else {
    float dot = 0;
    for (int e = 0; e < p.E; ++e) dot += ds[e] * s[e];
    for (int e = 0; e < p.E; ++e) dl[e] = s[e] * (ds[e] - dot);
  }
}

// Sum of squares in double: a fixed grid of blocks strides over x into one partial sum each, and one block adds the
// partial sums in a fixed order, so the result does not depend on scheduling.
constexpr int kSumBlocks = 1024, kSumThreads = 256;

__device__ inline double block_sum_double(double v, double* shared) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : 0.0;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__global__ void sum_squares_partial_kernel(double* partial, const float* x, int64_t n) {
  __shared__ double shared[32];
  double acc = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    acc += double(x[i]) * double(x[i]);
  acc = block_sum_double(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(double* out, const double* partial, int count) {
  __shared__ double shared[32];
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum_double(acc, shared);
  if (threadIdx.x == 0) *out = acc;
}

}  // namespace

void add(float* y, const float* a, const float* b, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  DS_LAUNCH(add_kernel, blocks_for(n, 256), 256, 0, stream, y, a, b, n);
  DS_CUDA_LAUNCHED();
}

void scale(float* x, float s, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  DS_LAUNCH(scale_kernel, blocks_for(n, 256), 256, 0, stream, x, s, n);
  DS_CUDA_LAUNCHED();
}

void embedding_backward(float* dtable, const float* dout, const int32_t* unique_tokens, const int32_t* offsets,
                        const int32_t* rows, int64_t unique, int64_t d, cudaStream_t stream) {
  if (unique * d == 0) return;
  DS_LAUNCH(embedding_backward_kernel, blocks_for(unique * d, 256), 256, 0, stream, dtable, dout, unique_tokens,
            offsets, rows, unique, d);
  DS_CUDA_LAUNCHED();
}

void sum_heads(float* dst, int64_t dst_stride, const float* src, int64_t N, int64_t H, int64_t head_stride,
               int64_t offset, int64_t width, cudaStream_t stream) {
  if (N * width == 0) return;
  DS_LAUNCH(sum_heads_kernel, blocks_for(N * width, 256), 256, 0, stream, dst, dst_stride, src, N, H, head_stride,
            offset, width);
  DS_CUDA_LAUNCHED();
}

void moe_combine_backward(float* dye, float* dweights, const float* dy, const float* ye, const int32_t* row_of,
                          const float* weights, int64_t N, int64_t K, int64_t d, cudaStream_t stream) {
  if (N * K == 0) return;
  DS_LAUNCH(moe_combine_backward_kernel, blocks_for(N * K * 32, 256), 256, 0, stream, dye, dweights, dy, ye, row_of,
            weights, N, K, d);
  DS_CUDA_LAUNCHED();
}

void route_backward(float* dlogits, const float* dweights, const float* scores, const int32_t* chosen, int64_t N,
                    const ModelConfig& config, const float* balance_f, float balance_scale, int64_t T,
                    cudaStream_t stream) {
  RouteBackwardParams p{};
  p.E = int(config.n_routed_experts);
  p.K = int(config.num_experts_per_tok);
  p.sigmoid = config.scoring_func == ScoringFunc::Sigmoid;
  p.renormalise = config.norm_topk_prob && p.K > 1;
  p.routed_scale = float(config.routed_scaling_factor);
  p.balance_f = balance_f, p.balance_scale = balance_scale, p.T = T;
  if (p.E < 1 || p.E > int(kMaxRoutedExperts) || p.K < 1 || p.K > p.E)
    fail_text("route_backward: unsupported routing (" + std::to_string(p.E) + " experts, top " + std::to_string(p.K) +
              ")");
  if (balance_f && T < 1) fail_text("route_backward: the balance loss needs sequences of at least one token");
  if (N == 0) return;
  DS_LAUNCH(route_backward_kernel, blocks_for(N, 128), 128, 0, stream, dlogits, dweights, scores, chosen, N, p);
  DS_CUDA_LAUNCHED();
}

void sum_squares(double* out, const float* x, int64_t n, cudaStream_t stream) {
  DeviceBuffer<double> partial(static_cast<size_t>(kSumBlocks));
  DS_LAUNCH(sum_squares_partial_kernel, kSumBlocks, kSumThreads, 0, stream, partial.data(), x, n);
  DS_CUDA_LAUNCHED();
  DS_LAUNCH(sum_partials_kernel, 1, kSumThreads, 0, stream, out, partial.data(), kSumBlocks);
  DS_CUDA_LAUNCHED();
}

}  // namespace ds::cuda
