// Causal attention forward and backward without the probability matrix (see ds/cuda_ops.h). Every kernel gives one
// warp a row (a query, or in the key pass a key) and walks the other side of the causal triangle, lane l holding
// dims l, l+32, ... of each head vector; dot products are warp sums. Plain and exact in float; a tensor-core
// version would tile the same loops.
#include "common.cuh"
#include "ds/cuda_ops.h"

namespace ds::cuda {

namespace {

constexpr int kWarps = 8;  // per block
constexpr int kPerLane = int(kMaxAttentionHeadDim) / 32;

// The problem and the row a warp owns: sequence b, head h, position t.
struct Shape {
  int64_t B, T, H, dk, dv;
};
struct Row {
  int64_t b, h, t;
  bool valid;
};
__device__ inline Row warp_row(const Shape& s) {
  const int64_t w = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  return {w / (s.H * s.T), w / s.T % s.H, w % s.T, w < s.B * s.H * s.T};
}

// Loads dims lane, lane+32, ... of a head vector (0 past d).
__device__ inline void load(float (&dst)[kPerLane], const float* src, int64_t d) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) dst[i] = lane + 32 * i < d ? src[lane + 32 * i] : 0.0f;
}
__device__ inline float dot(const float (&a)[kPerLane], const float* b, int64_t d) {
  const int lane = threadIdx.x % 32;
  float acc = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < d) acc += a[i] * b[lane + 32 * i];
  return warp_sum(acc);
}
// dst[dims] += src held by lanes.
__device__ inline void add_to(float* dst, const float (&src)[kPerLane], int64_t d) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < d) dst[lane + 32 * i] += src[i];
}

// The first key query t of sequence b sees: the start of its document (pos null: one document per sequence).
__device__ inline int64_t first_key(const int32_t* pos, const Shape& s, int64_t b, int64_t t) {
  return pos ? t - pos[b * s.T + t] : 0;
}

// Offsets of (sequence b, position t, head h) in the q/k and the v/o layouts.
__device__ inline int64_t qk_at(const Shape& s, int64_t b, int64_t t, int64_t h) {
  return ((b * s.T + t) * s.H + h) * s.dk;
}
__device__ inline int64_t v_at(const Shape& s, int64_t b, int64_t t, int64_t h) {
  return ((b * s.T + t) * s.H + h) * s.dv;
}

__global__ void attention_kernel(float* o, float* lse, const float* q, const float* k, const float* v,
                                 const int32_t* pos, Shape s, float scale) {
  const Row r = warp_row(s);
  if (!r.valid) return;
  float qi[kPerLane], acc[kPerLane];
  load(qi, q + qk_at(s, r.b, r.t, r.h), s.dk);
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const int lane = threadIdx.x % 32;
  for (int64_t j = first_key(pos, s, r.b, r.t); j <= r.t; ++j) {
    const float score = dot(qi, k + qk_at(s, r.b, j, r.h), s.dk) * scale;
    const float m_new = fmaxf(m, score), correction = expf(m - m_new), p = expf(score - m_new);
    l = l * correction + p;
    const float* vj = v + v_at(s, r.b, j, r.h);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (lane + 32 * i < s.dv) acc[i] = acc[i] * correction + p * vj[lane + 32 * i];
    m = m_new;
  }
  float* oi = o + v_at(s, r.b, r.t, r.h);
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < s.dv) oi[lane + 32 * i] = acc[i] / l;
  if (lane == 0) lse[(r.b * s.H + r.h) * s.T + r.t] = m + logf(l);
}

// Query pass: D_i = dO_i . O_i (kept for the key pass) and dq_i += scale sum_j P_ij (dO_i . v_j - D_i) k_j.
__global__ void attention_backward_query_kernel(float* dq, float* delta, const float* dout, const float* q,
                                                const float* k, const float* v, const float* o, const float* lse,
                                                const int32_t* pos, Shape s, float scale) {
  const Row r = warp_row(s);
  if (!r.valid) return;
  float qi[kPerLane], doi[kPerLane], acc[kPerLane];
  load(qi, q + qk_at(s, r.b, r.t, r.h), s.dk);
  load(doi, dout + v_at(s, r.b, r.t, r.h), s.dv);
  const int64_t row = (r.b * s.H + r.h) * s.T + r.t;
  const float D = dot(doi, o + v_at(s, r.b, r.t, r.h), s.dv), L = lse[row];
  const int lane = threadIdx.x % 32;
  if (lane == 0) delta[row] = D;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = 0.0f;
  for (int64_t j = first_key(pos, s, r.b, r.t); j <= r.t; ++j) {
    const float* kj = k + qk_at(s, r.b, j, r.h);
    const float p = expf(dot(qi, kj, s.dk) * scale - L);
    const float ds = p * (dot(doi, v + v_at(s, r.b, j, r.h), s.dv) - D) * scale;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (lane + 32 * i < s.dk) acc[i] += ds * kj[lane + 32 * i];
  }
  add_to(dq + qk_at(s, r.b, r.t, r.h), acc, s.dk);
}

// Key pass, a warp per key j: dv_j += sum_i P_ij dO_i and dk_j += scale sum_i P_ij (dO_i . v_j - D_i) q_i.
__global__ void attention_backward_key_kernel(float* dk, float* dv, const float* delta, const float* dout,
                                              const float* q, const float* k, const float* v, const float* lse,
                                              const int32_t* pos, Shape s, float scale) {
  const Row r = warp_row(s);
  if (!r.valid) return;
  float kj[kPerLane], vj[kPerLane], gk[kPerLane], gv[kPerLane];
  load(kj, k + qk_at(s, r.b, r.t, r.h), s.dk);
  load(vj, v + v_at(s, r.b, r.t, r.h), s.dv);
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) gk[i] = gv[i] = 0.0f;
  const int lane = threadIdx.x % 32;
  // The queries that see key r.t: from it to the end of its document, where a query's first key passes it.
  for (int64_t t = r.t; t < s.T && first_key(pos, s, r.b, t) <= r.t; ++t) {
    const int64_t row = (r.b * s.H + r.h) * s.T + t;
    const float* qi = q + qk_at(s, r.b, t, r.h);
    const float* doi = dout + v_at(s, r.b, t, r.h);
    const float p = expf(dot(kj, qi, s.dk) * scale - lse[row]);
    const float ds = p * (dot(vj, doi, s.dv) - delta[row]) * scale;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      if (lane + 32 * i < s.dv) gv[i] += p * doi[lane + 32 * i];
      if (lane + 32 * i < s.dk) gk[i] += ds * qi[lane + 32 * i];
    }
  }
  add_to(dk + qk_at(s, r.b, r.t, r.h), gk, s.dk);
  add_to(dv + v_at(s, r.b, r.t, r.h), gv, s.dv);
}

Shape checked_shape(int64_t B, int64_t T, int64_t H, int64_t dk, int64_t dv) {
  if (dk < 1 || dv < 1 || dk > kMaxAttentionHeadDim || dv > kMaxAttentionHeadDim)
    fail_text("attention: head dims " + std::to_string(dk) + " and " + std::to_string(dv) + " must be 1.." +
              std::to_string(kMaxAttentionHeadDim));
  return {B, T, H, dk, dv};
}

unsigned row_blocks(const Shape& s) { return blocks_for(s.B * s.H * s.T, kWarps); }

}  // namespace

void attention(float* o, float* lse, const float* q, const float* k, const float* v, const int32_t* pos, int64_t B,
               int64_t T, int64_t H, int64_t dk, int64_t dv, float scale, cudaStream_t stream) {
  const Shape s = checked_shape(B, T, H, dk, dv);
  if (B * T * H == 0) return;
  DS_LAUNCH(attention_kernel, row_blocks(s), 32 * kWarps, 0, stream)(o, lse, q, k, v, pos, s, scale);
  DS_CUDA_LAUNCHED();
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const int32_t* pos, int64_t B, int64_t T,
                        int64_t H, int64_t dk_dim, int64_t dv_dim, float scale, cudaStream_t stream) {
  const Shape s = checked_shape(B, T, H, dk_dim, dv_dim);
  if (B * T * H == 0) return;
  DeviceBuffer<float> delta(static_cast<size_t>(B * H * T));
  DS_LAUNCH(attention_backward_query_kernel, row_blocks(s), 32 * kWarps, 0, stream)(
      dq, delta.data(), dout, q, k, v, o, lse, pos, s, scale);
  DS_CUDA_LAUNCHED();
  DS_LAUNCH(attention_backward_key_kernel, row_blocks(s), 32 * kWarps, 0, stream)(
      dk, dv, delta.data(), dout, q, k, v, lse, pos, s, scale);
  DS_CUDA_LAUNCHED();
}

}  // namespace ds::cuda
