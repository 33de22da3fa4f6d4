// Causal attention forward and backward on the tensor cores (see cuda_ops.h), FlashAttention-2's loops with
// mma.sync: a block takes 64 rows of one (sequence, head), a warp 16 of them, and walks the other side of the causal
// triangle 64 rows at a time through shared memory. Inputs are float and go to shared memory in bf16; products sum in
// float. The forward keeps an online softmax per query. The backward recomputes the probabilities from lse in two
// kernels, one over query blocks for dq and one over key blocks for dk and dv, so that every gradient element is summed
// by one thread in a fixed order (no atomics: a run repeats bit for bit).
#include "common.cuh"
#include "cuda_ops.h"

namespace ds::cuda {

namespace {

constexpr int kRows = 64;  // a block's rows, and the rows of each step over the other side
constexpr int kThreads = 128;

// Head-dim classes a kernel is compiled for (registers hold a warp's rows across the head dims).
struct HeadDims {
  int dk, dv;
};
constexpr HeadDims kHeadDims[] = {{64, 64}, {128, 128}, {192, 128}, {256, 256}};

struct Shape {
  int64_t B, T, H, dk, dv;
};

// The first key query t of sequence b sees: the start of its document (pos null: one document per sequence). Within a
// document positions count up from 0, so first keys never fall as t rises.
__device__ inline int64_t first_key(const int32_t* pos, const Shape& s, int64_t b, int64_t t) {
  return pos ? t - pos[b * s.T + t] : 0;
}

// Whether query t sees key j, given the first key it sees: causal, within its document, and t a real row.
__device__ inline bool sees(const Shape& s, int64_t t, int64_t first, int64_t j) {
  return t < s.T && j >= first && j <= t;
}

// Rows [t0, t0 + 64) of head h of sequence b of x [B*T, H, d] into shared memory as bf16; rows past T and the padding
// dims are zero. Four dims a thread at a time (one 16-byte load where the rows allow it).
__device__ inline void load_rows(__nv_bfloat16* dst, const float* x, const Shape& s, int64_t b, int64_t h, int64_t t0,
                                 int64_t d) {
  const int width = fragment_stride(d) - 8, quads = width / 4;
  const bool whole = d % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  for (int i = threadIdx.x; i < kRows * quads; i += kThreads) {
    const int row = i / quads, e = 4 * (i % quads);
    const int64_t t = t0 + row;
    float4 v = {0.0f, 0.0f, 0.0f, 0.0f};
    if (t < s.T && e < d) {
      const float* src = x + ((b * s.T + t) * s.H + h) * d + e;
      if (whole)
        v = *reinterpret_cast<const float4*>(src);
      else
        v = {src[0], e + 1 < d ? src[1] : 0.0f, e + 2 < d ? src[2] : 0.0f, e + 3 < d ? src[3] : 0.0f};
    }
    auto* out = reinterpret_cast<uint32_t*>(dst + row * (width + 8) + e);
    out[0] = pack_bf16(v.x, v.y);
    out[1] = pack_bf16(v.z, v.w);
  }
}

// 16 x 64 = rows [16 warp, +16) of `a` times the 64 rows of `b`, both [64, d] tiles: acc[n] holds columns 8n..8n+7.
__device__ inline void rows_times_rows(float (&acc)[8][4], const __nv_bfloat16* a, const __nv_bfloat16* b, int stride,
                                       int d_pad) {
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[n][i] = 0.0f;
  for (int k0 = 0; k0 < d_pad; k0 += 16) {
    uint32_t fa[4];
    fragment_a(fa, a + 16 * warp * stride + k0, stride);
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      uint32_t fb[2];
      fragment_b(fb, b + 8 * n * stride + k0, stride);
      mma_16x8x16(acc[n], fa, fb);
    }
  }
}

// acc [16, d] += p [16, 64] (as rows_times_rows leaves it) times the 64 rows of `b` [64, d].
template <int MaxTiles>
__device__ inline void accumulate_times_rows(float (&acc)[MaxTiles][4], const float (&p)[8][4], const __nv_bfloat16* b,
                                             int stride, int tiles) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    uint32_t fa[4];
    fragment_a_of(fa, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
    for (int n = 0; n < MaxTiles; ++n) {
      if (n >= tiles) break;
      uint32_t fb[2];
      fragment_b_rows(fb, b + 16 * kk * stride + 8 * n, stride);
      mma_16x8x16(acc[n], fa, fb);
    }
  }
}

// Row i of a lane's 16 x 64 tile, i in {0, 1}: g or g + 8; column c in 0..15: 8 (c / 2) + 2t + c % 2.
__device__ inline int tile_row(int i) { return threadIdx.x % 32 / 4 + 8 * i; }
__device__ inline int tile_col(int n, int i) { return 8 * n + 2 * (threadIdx.x % 4) + i % 2; }

// Adds a lane's part of a warp's 16 x d result to rows [r0, r0 + 16) of head h of x [B*T, H, d].
template <int MaxTiles>
__device__ inline void add_rows(float* x, const float (&acc)[MaxTiles][4], const Shape& s, int64_t b, int64_t h,
                                int64_t r0, int64_t d) {
#pragma unroll
  for (int n = 0; n < MaxTiles; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t t = r0 + tile_row(i / 2), e = tile_col(n, i);
      if (t < s.T && e < d) x[((b * s.T + t) * s.H + h) * d + e] += acc[n][i];
    }
}

// Forward: block (query rows [64 x, +64), head y, sequence z).
template <int Dims>
__global__ void __launch_bounds__(kThreads) attention_kernel(float* o, float* lse, const float* q, const float* k,
                                                             const float* v, const int32_t* pos, Shape s, float scale) {
  constexpr int kValueTiles = kHeadDims[Dims].dv / 8;
  const int qk_stride = fragment_stride(s.dk), v_stride = fragment_stride(s.dv);
  auto* sq = reinterpret_cast<__nv_bfloat16*>(dynamic_shared());
  __nv_bfloat16* sk = sq + kRows * qk_stride;
  __nv_bfloat16* sv = sk + kRows * qk_stride;
  const int64_t t0 = int64_t(blockIdx.x) * kRows, h = blockIdx.y, b = blockIdx.z;
  const int64_t r0 = t0 + 16 * (threadIdx.x / 32), t_last = min(t0 + kRows, s.T) - 1;
  int64_t row[2], first[2];
  for (int i = 0; i < 2; ++i) {
    row[i] = r0 + tile_row(i);
    first[i] = row[i] < s.T ? first_key(pos, s, b, row[i]) : 0;
  }
  load_rows(sq, q, s, b, h, t0, s.dk);

  float acc[kValueTiles][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  for (int64_t j0 = first_key(pos, s, b, t0); j0 <= t_last; j0 += kRows) {
    __syncthreads();  // every warp is done with the previous keys
    load_rows(sk, k, s, b, h, j0, s.dk);
    load_rows(sv, v, s, b, h, j0, s.dv);
    __syncthreads();
    float p[8][4];
    rows_times_rows(p, sq, sk, qk_stride, qk_stride - 8);
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t j = j0 + tile_col(n, i), t = row[i / 2];
        p[n][i] = sees(s, t, first[i / 2], j) ? p[n][i] * scale : -INFINITY;
        tile_max[i / 2] = fmaxf(tile_max[i / 2], p[n][i]);
      }
    float correction[2], base[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float m_new = fmaxf(m[i], warp_max<4>(tile_max[i]));
      base[i] = m_new == -INFINITY ? 0.0f : m_new;  // a row that has seen no key yet keeps everything at 0
      correction[i] = expf(m[i] - base[i]);
      m[i] = m_new;
      l[i] *= correction[i];
    }
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        p[n][i] = expf(p[n][i] - base[i / 2]);
        l[i / 2] += p[n][i];
      }
#pragma unroll
    for (int n = 0; n < kValueTiles; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[n][i] *= correction[i / 2];
    accumulate_times_rows(acc, p, sv, v_stride, (v_stride - 8) / 8);
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) l[i] = warp_sum<4>(l[i]);
#pragma unroll
  for (int n = 0; n < kValueTiles; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t t = row[i / 2], e = tile_col(n, i);
      if (t < s.T && e < s.dv) o[((b * s.T + t) * s.H + h) * s.dv + e] = acc[n][i] / l[i / 2];
    }
  if (threadIdx.x % 4 == 0)
    for (int i = 0; i < 2; ++i)
      if (row[i] < s.T) lse[(b * s.H + h) * s.T + row[i]] = m[i] + logf(l[i]);
}

// Backward, query pass: block (query rows [64 x, +64), head y, sequence z). D_t = dO_t . O_t (kept for the key pass),
// and dq_t += scale sum_j P_tj (dO_t . v_j - D_t) k_j.
template <int Dims>
__global__ void __launch_bounds__(kThreads)
    attention_backward_query_kernel(float* dq, float* delta, const float* dout, const float* q, const float* k,
                                    const float* v, const float* o, const float* lse, const int32_t* pos, Shape s,
                                    float scale) {
  constexpr int kKeyTiles = kHeadDims[Dims].dk / 8;
  const int qk_stride = fragment_stride(s.dk), v_stride = fragment_stride(s.dv);
  auto* sq = reinterpret_cast<__nv_bfloat16*>(dynamic_shared());
  __nv_bfloat16* sk = sq + kRows * qk_stride;
  __nv_bfloat16* sdo = sk + kRows * qk_stride;
  __nv_bfloat16* sv = sdo + kRows * v_stride;
  const int64_t t0 = int64_t(blockIdx.x) * kRows, h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r0 = t0 + 16 * warp, t_last = min(t0 + kRows, s.T) - 1;
  load_rows(sq, q, s, b, h, t0, s.dk);
  load_rows(sdo, dout, s, b, h, t0, s.dv);

  // D of the warp's 16 rows in float, a row at a time across the lanes; then each lane's two rows.
  float row_delta[2] = {0.0f, 0.0f}, row_lse[2] = {0.0f, 0.0f};
  int64_t row[2], first[2];
  for (int r = 0; r < 16; ++r) {
    const int64_t t = r0 + r;
    if (t >= s.T) break;
    const int64_t at = ((b * s.T + t) * s.H + h) * s.dv;
    float part = 0.0f;
    for (int64_t e = lane; e < s.dv; e += 32) part += dout[at + e] * o[at + e];
    const float D = warp_sum(part);
    if (lane == 0) delta[(b * s.H + h) * s.T + t] = D;
    for (int i = 0; i < 2; ++i)
      if (r == tile_row(i)) row_delta[i] = D;
  }
  for (int i = 0; i < 2; ++i) {
    row[i] = r0 + tile_row(i);
    first[i] = row[i] < s.T ? first_key(pos, s, b, row[i]) : 0;
    if (row[i] < s.T) row_lse[i] = lse[(b * s.H + h) * s.T + row[i]];
  }

  float acc[kKeyTiles][4] = {};
  for (int64_t j0 = first_key(pos, s, b, t0); j0 <= t_last; j0 += kRows) {
    __syncthreads();  // every warp is done with the previous keys
    load_rows(sk, k, s, b, h, j0, s.dk);
    load_rows(sv, v, s, b, h, j0, s.dv);
    __syncthreads();
    float p[8][4], dp[8][4];
    rows_times_rows(p, sq, sk, qk_stride, qk_stride - 8);
    rows_times_rows(dp, sdo, sv, v_stride, v_stride - 8);
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t j = j0 + tile_col(n, i), t = row[i / 2];
        const float prob = sees(s, t, first[i / 2], j) ? expf(p[n][i] * scale - row_lse[i / 2]) : 0.0f;
        p[n][i] = prob * (dp[n][i] - row_delta[i / 2]) * scale;  // dS
      }
    accumulate_times_rows(acc, p, sk, qk_stride, (qk_stride - 8) / 8);
  }
  add_rows(dq, acc, s, b, h, r0, s.dk);
}

// Backward, key pass: block (key rows [64 x, +64), head y, sequence z), over the queries that see them:
// dv_j += sum_t P_tj dO_t and dk_j += scale sum_t P_tj (dO_t . v_j - D_t) q_t.
template <int Dims>
__global__ void __launch_bounds__(kThreads)
    attention_backward_key_kernel(float* dk, float* dv, const float* delta, const float* dout, const float* q,
                                  const float* k, const float* v, const float* lse, const int32_t* pos, Shape s,
                                  float scale) {
  constexpr int kKeyTiles = kHeadDims[Dims].dk / 8, kValueTiles = kHeadDims[Dims].dv / 8;
  const int qk_stride = fragment_stride(s.dk), v_stride = fragment_stride(s.dv);
  auto* sk = reinterpret_cast<__nv_bfloat16*>(dynamic_shared());
  __nv_bfloat16* sq = sk + kRows * qk_stride;
  __nv_bfloat16* sv = sq + kRows * qk_stride;
  __nv_bfloat16* sdo = sv + kRows * v_stride;
  auto* query_lse = reinterpret_cast<float*>(sdo + kRows * v_stride);
  float* query_delta = query_lse + kRows;
  auto* query_first = reinterpret_cast<int64_t*>(query_delta + kRows);
  const int64_t j0 = int64_t(blockIdx.x) * kRows, h = blockIdx.y, b = blockIdx.z;
  const int64_t r0 = j0 + 16 * (threadIdx.x / 32), j_last = min(j0 + kRows, s.T) - 1;
  load_rows(sk, k, s, b, h, j0, s.dk);
  load_rows(sv, v, s, b, h, j0, s.dv);
  int64_t key[2];
  for (int i = 0; i < 2; ++i) key[i] = r0 + tile_row(i);

  float gk[kKeyTiles][4] = {}, gv[kValueTiles][4] = {};
  // The queries from j0 on, while a block of them starts in a document that began by the last key.
  for (int64_t t0 = j0; t0 < s.T && first_key(pos, s, b, t0) <= j_last; t0 += kRows) {
    __syncthreads();  // every warp is done with the previous queries
    load_rows(sq, q, s, b, h, t0, s.dk);
    load_rows(sdo, dout, s, b, h, t0, s.dv);
    for (int i = threadIdx.x; i < kRows; i += kThreads) {
      const int64_t t = t0 + i;
      query_lse[i] = t < s.T ? lse[(b * s.H + h) * s.T + t] : 0.0f;
      query_delta[i] = t < s.T ? delta[(b * s.H + h) * s.T + t] : 0.0f;
      query_first[i] = t < s.T ? first_key(pos, s, b, t) : 0;
    }
    __syncthreads();
    float p[8][4], dp[8][4];
    rows_times_rows(p, sk, sq, qk_stride, qk_stride - 8);  // S^T: keys by queries
    rows_times_rows(dp, sv, sdo, v_stride, v_stride - 8);  // dP^T
    float ds[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int c = tile_col(n, i);
        const int64_t t = t0 + c, j = key[i / 2];
        p[n][i] = sees(s, t, query_first[c], j) ? expf(p[n][i] * scale - query_lse[c]) : 0.0f;
        ds[n][i] = p[n][i] * (dp[n][i] - query_delta[c]) * scale;
      }
    accumulate_times_rows(gv, p, sdo, v_stride, (v_stride - 8) / 8);
    accumulate_times_rows(gk, ds, sq, qk_stride, (qk_stride - 8) / 8);
  }
  add_rows(dk, gk, s, b, h, r0, s.dk);
  add_rows(dv, gv, s, b, h, r0, s.dv);
}

Shape checked_shape(int64_t B, int64_t T, int64_t H, int64_t dk, int64_t dv) {
  if (dk < 1 || dv < 1 || dk > kMaxAttentionHeadDim || dv > kMaxAttentionHeadDim)
    fail_text("attention: head dims " + std::to_string(dk) + " and " + std::to_string(dv) + " must be 1.." +
              std::to_string(kMaxAttentionHeadDim));
  if (B > 65535 || H > 65535) fail_text("attention: at most 65535 sequences and heads");
  return {B, T, H, dk, dv};
}

// The smallest class of kHeadDims that holds the shape's head dims.
int head_dims_class(const Shape& s) {
  int c = 0;
  while (s.dk > kHeadDims[c].dk || s.dv > kHeadDims[c].dv) ++c;
  return c;
}

// Calls f(std::integral_constant<int, class>) for the shape's class, where f launches the kernels compiled for it.
template <typename F>
void with_head_dims(const Shape& s, F&& f) {
  switch (head_dims_class(s)) {
    case 0:
      return f(std::integral_constant<int, 0>{});
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    default:
      return f(std::integral_constant<int, 3>{});
  }
}

dim3 row_blocks(const Shape& s) { return {unsigned((s.T + kRows - 1) / kRows), unsigned(s.H), unsigned(s.B)}; }
size_t tile_bytes(int64_t d) { return sizeof(__nv_bfloat16) * kRows * size_t(fragment_stride(d)); }

}  // namespace

void attention(float* o, float* lse, const float* q, const float* k, const float* v, const int32_t* pos, int64_t B,
               int64_t T, int64_t H, int64_t dk, int64_t dv, float scale, cudaStream_t stream) {
  const Shape s = checked_shape(B, T, H, dk, dv);
  if (B * T * H == 0) return;
  const size_t smem = 2 * tile_bytes(dk) + tile_bytes(dv);
  with_head_dims(s, [&](auto dims) {
    DS_ALLOW_SHARED(attention_kernel<decltype(dims)::value>, smem);
    DS_LAUNCH(attention_kernel<decltype(dims)::value>, row_blocks(s), kThreads, smem, stream, o, lse, q, k, v, pos, s,
              scale);
    DS_CUDA_LAUNCHED();
  });
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const int32_t* pos, int64_t B, int64_t T,
                        int64_t H, int64_t dk_dim, int64_t dv_dim, float scale, cudaStream_t stream) {
  const Shape s = checked_shape(B, T, H, dk_dim, dv_dim);
  if (B * T * H == 0) return;
  DeviceBuffer<float> delta(static_cast<size_t>(B * H * T));
  const size_t smem = 2 * tile_bytes(dk_dim) + 2 * tile_bytes(dv_dim),
               key_smem = smem + kRows * (2 * sizeof(float) + sizeof(int64_t));
  with_head_dims(s, [&](auto dims) {
    DS_ALLOW_SHARED(attention_backward_query_kernel<decltype(dims)::value>, smem);
    DS_LAUNCH(attention_backward_query_kernel<decltype(dims)::value>, row_blocks(s), kThreads, smem, stream, dq,
              delta.data(), dout, q, k, v, o, lse, pos, s, scale);
    DS_CUDA_LAUNCHED();
    DS_ALLOW_SHARED(attention_backward_key_kernel<decltype(dims)::value>, key_smem);
    DS_LAUNCH(attention_backward_key_kernel<decltype(dims)::value>, row_blocks(s), kThreads, key_smem, stream, dk, dv,
              delta.data(), dout, q, k, v, lse, pos, s, scale);
    DS_CUDA_LAUNCHED();
  });
}

}  // namespace ds::cuda
