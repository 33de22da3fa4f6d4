// Norms, rotary embedding, SwiGLU, cross-entropy and AdamW: the GPU twins of ds/ops.h and ds/optim.h, in float.
#include "common.cuh"
#include "cuda_ops.h"

namespace ds::cuda {

namespace {

constexpr int kRowThreads = 256;  // one block of this many threads per row

__global__ void cast_f32_to_bf16_kernel(__nv_bfloat16* dst, const float* src, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void cast_bf16_to_f32_kernel(float* dst, const __nv_bfloat16* src, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __bfloat162float(src[i]);
}

__global__ void rmsnorm_kernel(float* y, float* rstd, const float* x, const float* w, int64_t C, float eps,
                               int64_t x_stride) {
  __shared__ float shared[32];
  const int64_t n = blockIdx.x;
  const float* xr = x + n * x_stride;
  float ss = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += xr[c] * xr[c];
  ss = block_reduce<false>(ss, shared);
  const float r = 1.0f / sqrtf(ss / float(C) + eps);
  if (threadIdx.x == 0) rstd[n] = r;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) y[n * C + c] = w[c] * (xr[c] * r);
}

// dx = r (w dy - xhat mean(w dy xhat)), xhat = x r: one block per row.
__global__ void rmsnorm_backward_dx_kernel(float* dx, const float* dy, const float* x, const float* w,
                                           const float* rstd, int64_t C, int64_t x_stride) {
  __shared__ float shared[32];
  const int64_t n = blockIdx.x;
  const float* xr = x + n * x_stride;
  const float* g = dy + n * C;
  const float r = rstd[n];
  float dot = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dot += (w[c] * g[c]) * (xr[c] * r);
  const float mean = block_reduce<false>(dot, shared) / float(C);
  float* dxr = dx + n * x_stride;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dxr[c] += r * (w[c] * g[c] - xr[c] * r * mean);
}

// dw sums over rows: each block sums a chunk of rows for 256 columns into partial[chunk, C]; a second kernel adds
// the chunks in order, so the result does not depend on scheduling.
constexpr int64_t kRowsPerChunk = 256;

__global__ void rmsnorm_backward_dw_partial_kernel(float* partial, const float* dy, const float* x, const float* rstd,
                                                   int64_t N, int64_t C, int64_t x_stride) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t n0 = int64_t(blockIdx.y) * kRowsPerChunk, n1 = min(N, n0 + kRowsPerChunk);
  float acc = 0;
  for (int64_t n = n0; n < n1; ++n) acc += dy[n * C + c] * x[n * x_stride + c] * rstd[n];
  partial[blockIdx.y * C + c] = acc;
}

__global__ void sum_chunks_kernel(float* out, const float* partial, int64_t chunks, int64_t C) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0;
  for (int64_t k = 0; k < chunks; ++k) acc += partial[k * C + c];
  out[c] += acc;
}

__global__ void rope_kernel(float* x, const int32_t* pos, int64_t N, int64_t heads, int64_t row_stride,
                            int64_t head_stride, const float* cos, const float* sin, int64_t half, float sign) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * heads * half) return;
  const int64_t pair = i % half, h = i / half % heads, n = i / half / heads;
  const int64_t t = int64_t(pos[n]) * half + pair;
  const float c = cos[t], s = sign * sin[t];
  float* v = x + n * row_stride + h * head_stride + 2 * pair;
  const float a = v[0], b = v[1];
  v[0] = a * c - b * s;
  v[1] = a * s + b * c;
}

__global__ void swiglu_kernel(float* a, const float* g, const float* u, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) a[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

__global__ void swiglu_backward_kernel(float* dg, float* du, const float* da, const float* g, const float* u,
                                       int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float sig = 1.0f / (1.0f + expf(-g[i]));
  du[i] += da[i] * g[i] * sig;
  dg[i] += da[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
}

// The running (max, sum of exp(x - max)) of a softmax, merged from two parts; an empty part has max -inf.
struct SoftmaxState {
  float max = -INFINITY, sum = 0;
};
__device__ inline SoftmaxState merge(SoftmaxState a, SoftmaxState b) {
  if (a.max == -INFINITY) return b;
  if (b.max == -INFINITY) return a;
  const float m = fmaxf(a.max, b.max);
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

// One block per row: pass 1 finds the max and sum of the scaled row online, pass 2 (when asked) writes the gradient,
// in place if asked, and sums the entropy.
__global__ void cross_entropy_kernel(float* losses, float* entropies, float* dlogits, const float* logits,
                                     const int32_t* targets, int64_t V, float inverse_temperature, float scale,
                                     const float* row_scale) {
  __shared__ SoftmaxState shared[32];
  __shared__ float target_logit, reduce[32];
  const int64_t n = blockIdx.x;
  const float* row = logits + n * V;
  const int32_t target = targets[n];
  SoftmaxState st;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) st = merge(st, {row[c] * inverse_temperature, 1.0f});
  for (int offset = 16; offset > 0; offset /= 2)
    st = merge(st, {__shfl_xor_sync(kFullMask, st.max, offset), __shfl_xor_sync(kFullMask, st.sum, offset)});
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) shared[warp] = st;
  // Read before pass 2 may overwrite it.
  if (threadIdx.x == 0) target_logit = target >= 0 ? row[target] * inverse_temperature : 0.0f;
  __syncthreads();
  st = SoftmaxState{};
  for (int k = 0; k < int(blockDim.x / 32); ++k) st = merge(st, shared[k]);
  const float log_sum = logf(st.sum);
  if (threadIdx.x == 0) losses[n] = target >= 0 ? log_sum - (target_logit - st.max) : 0.0f;
  if (!dlogits && !entropies) return;
  float* d = dlogits ? dlogits + n * V : nullptr;
  // d(loss)/d(logit) carries the 1/temperature the logits were scaled by.
  const float s = target >= 0 ? scale * inverse_temperature * (row_scale ? row_scale[n] : 1.0f) : 0.0f;
  float entropy = 0;  // -sum p log p, log p = x - max - log(sum)
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
    const float log_p = row[c] * inverse_temperature - st.max - log_sum, p = expf(log_p);
    entropy -= p * log_p;
    if (d) d[c] = (p - (c == target ? 1.0f : 0.0f)) * s;
  }
  if (entropies) {
    entropy = block_reduce<false>(entropy, reduce);
    if (threadIdx.x == 0) entropies[n] = entropy;
  }
}

__global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, int64_t n, AdamWStep s) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = grads[i];
  const float mi = s.beta1 * m[i] + (1 - s.beta1) * g;
  const float vi = s.beta2 * v[i] + (1 - s.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  const float update = (mi / s.bc1) / (sqrtf(vi / s.bc2) + s.eps);
  params[i] -= s.lr * update + s.decay * params[i];
}

}  // namespace

void cast_f32_to_bf16(__nv_bfloat16* dst, const float* src, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  DS_LAUNCH(cast_f32_to_bf16_kernel, blocks_for(n, 256), 256, 0, stream, dst, src, n);
  DS_CUDA_LAUNCHED();
}

void cast_bf16_to_f32(float* dst, const __nv_bfloat16* src, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  DS_LAUNCH(cast_bf16_to_f32_kernel, blocks_for(n, 256), 256, 0, stream, dst, src, n);
  DS_CUDA_LAUNCHED();
}

void rmsnorm(float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t C, float eps, int64_t x_stride,
             cudaStream_t stream) {
  if (N == 0) return;
  DS_LAUNCH(rmsnorm_kernel, unsigned(N), kRowThreads, 0, stream, y, rstd, x, w, C, eps, x_stride ? x_stride : C);
  DS_CUDA_LAUNCHED();
}

void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t N, int64_t C, int64_t x_stride, cudaStream_t stream) {
  if (N == 0) return;
  if (x_stride == 0) x_stride = C;
  DS_LAUNCH(rmsnorm_backward_dx_kernel, unsigned(N), kRowThreads, 0, stream, dx, dy, x, w, rstd, C, x_stride);
  DS_CUDA_LAUNCHED();
  const int64_t chunks = (N + kRowsPerChunk - 1) / kRowsPerChunk;
  if (chunks > 65535) fail_text("rmsnorm_backward: more than 65535 x 256 rows in one call");
  DeviceBuffer<float> partial(static_cast<size_t>(chunks * C));
  DS_LAUNCH(rmsnorm_backward_dw_partial_kernel, dim3(blocks_for(C, 256), unsigned(chunks)), 256, 0, stream,
            partial.data(), dy, x, rstd, N, C, x_stride);
  DS_CUDA_LAUNCHED();
  DS_LAUNCH(sum_chunks_kernel, blocks_for(C, 256), 256, 0, stream, dw, partial.data(), chunks, C);
  DS_CUDA_LAUNCHED();
}

RopeTable upload_rope_table(const ops::RopeTable& table, cudaStream_t stream) {
  RopeTable t;
  t.half = table.half;
  t.max_pos = table.half ? int64_t(table.cos.size()) / table.half : 0;
  const std::vector<float> cos(table.cos.begin(), table.cos.end()), sin(table.sin.begin(), table.sin.end());
  t.cos = to_device(cos, stream);
  t.sin = to_device(sin, stream);
  return t;
}

void rope(float* x, const int32_t* pos, int64_t N, int64_t heads, int64_t row_stride, int64_t head_stride,
          const RopeTable& table, bool inverse, cudaStream_t stream) {
  const int64_t n = N * heads * table.half;
  if (n == 0) return;
  DS_LAUNCH(rope_kernel, blocks_for(n, 256), 256, 0, stream, x, pos, N, heads, row_stride, head_stride,
            table.cos.data(), table.sin.data(), table.half, inverse ? -1.0f : 1.0f);
  DS_CUDA_LAUNCHED();
}

void swiglu(float* a, const float* g, const float* u, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  DS_LAUNCH(swiglu_kernel, blocks_for(n, 256), 256, 0, stream, a, g, u, n);
  DS_CUDA_LAUNCHED();
}

void swiglu_backward(float* dg, float* du, const float* da, const float* g, const float* u, int64_t n,
                     cudaStream_t stream) {
  if (n == 0) return;
  DS_LAUNCH(swiglu_backward_kernel, blocks_for(n, 256), 256, 0, stream, dg, du, da, g, u, n);
  DS_CUDA_LAUNCHED();
}

void cross_entropy(float* losses, float* entropies, float* dlogits, const float* logits, const int32_t* targets,
                   int64_t N, int64_t V, float inverse_temperature, float scale, const float* row_scale,
                   cudaStream_t stream) {
  if (N == 0) return;
  DS_LAUNCH(cross_entropy_kernel, unsigned(N), kRowThreads, 0, stream, losses, entropies, dlogits, logits, targets, V,
            inverse_temperature, scale, row_scale);
  DS_CUDA_LAUNCHED();
}

void adamw(float* params, const float* grads, float* m, float* v, int64_t n, const AdamWStep& step,
           cudaStream_t stream) {
  if (n == 0) return;
  DS_LAUNCH(adamw_kernel, blocks_for(n, 256), 256, 0, stream, params, grads, m, v, n, step);
  DS_CUDA_LAUNCHED();
}

}  // namespace ds::cuda
