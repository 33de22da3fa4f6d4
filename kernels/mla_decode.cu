// MLA decode in the absorbed form over the latent cache (reference section 2.6): one KV head of width r + dr shared
// by all query heads, values = the first r dims of the keys. Split-KV ("flash decoding"): each block takes 8 heads
// of one sequence over one chunk of its cache, one warp per head, and keeps an online softmax; a second kernel merges
// the chunks. Lane l holds dims l, l+32, ... of the query, the key row and the output, so each key row is read
// coalesced and shared by the block's 8 heads through L1. A query row names its cache slot and length, so prefill
// (many rows of one sequence, each seeing the rows up to its own) is the same operation as decode.
#include <algorithm>

#include "common.cuh"
#include "ds/cuda_ops.h"

namespace ds::cuda {

namespace {

constexpr int kHeadsPerBlock = 8;
constexpr int kMaxPerLane = int(kMlaMaxWidth) / 32;  // 18 for V3's 576
constexpr int64_t kMinChunk = 64;                    // cache rows per split, at least

__global__ void mla_decode_split_kernel(float* o_part, float* ml_part, const float* q, const __nv_bfloat16* cache,
                                        const int32_t* slots, const int32_t* lengths, int64_t H, int64_t capacity,
                                        int r, int dr, float scale, int64_t chunk) {
  const int lane = threadIdx.x % 32;
  const int64_t h = int64_t(blockIdx.x) * kHeadsPerBlock + threadIdx.x / 32;
  const int64_t split = blockIdx.y, splits = gridDim.y, b = blockIdx.z;
  if (h >= H) return;  // a whole warp; there is no block-wide synchronisation
  const int width = r + dr;
  const float* qh = q + (b * H + h) * width;
  float qr[kMaxPerLane], acc[kMaxPerLane];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    qr[i] = lane + 32 * i < width ? qh[lane + 32 * i] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int64_t begin = split * chunk, end = min(begin + chunk, int64_t(lengths[b]));
  const __nv_bfloat16* kv = cache + int64_t(slots ? slots[b] : b) * capacity * width;
  for (int64_t j = begin; j < end; ++j) {
    const __nv_bfloat16* row = kv + j * width;
    float k[kMaxPerLane];
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      k[i] = lane + 32 * i < width ? __bfloat162float(row[lane + 32 * i]) : 0.0f;
      dot += qr[i] * k[i];
    }
    const float score = warp_sum(dot) * scale;
    const float m_new = fmaxf(m, score);
    const float correction = expf(m - m_new), p = expf(score - m_new);  // expf(-inf) = 0 on the first row
    l = l * correction + p;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i)
      if (lane + 32 * i < r) acc[i] = acc[i] * correction + p * k[i];
    m = m_new;
  }
  const int64_t slot = (b * H + h) * splits + split;
  float* o = o_part + slot * r;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i)
    if (lane + 32 * i < r) o[lane + 32 * i] = acc[i];
  if (lane == 0) {
    ml_part[2 * slot] = m;  // -inf and 0 for a chunk past the sequence's end
    ml_part[2 * slot + 1] = l;
  }
}

// One block per (sequence, head): out = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M), M the largest m_s.
__global__ void mla_decode_combine_kernel(float* out, const float* o_part, const float* ml_part, int64_t splits,
                                          int r) {
  const int64_t bh = blockIdx.x;
  const float* ml = ml_part + 2 * bh * splits;
  float M = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) M = fmaxf(M, ml[2 * s]);
  float L = 0;
  for (int64_t s = 0; s < splits; ++s) L += ml[2 * s + 1] * expf(ml[2 * s] - M);
  const float inv = 1.0f / L;
  for (int d = threadIdx.x; d < r; d += blockDim.x) {
    float acc = 0;
    for (int64_t s = 0; s < splits; ++s) acc += o_part[(bh * splits + s) * r + d] * expf(ml[2 * s] - M);
    out[bh * r + d] = acc * inv;
  }
}

__global__ void mla_cache_write_kernel(__nv_bfloat16* cache, int64_t capacity, const float* latent, const float* k_pe,
                                       int64_t k_pe_stride, const int32_t* slots, const int32_t* pos, int r, int dr) {
  const int64_t i = blockIdx.x;
  const int width = r + dr;
  __nv_bfloat16* row = cache + (int64_t(slots[i]) * capacity + pos[i]) * width;
  for (int e = threadIdx.x; e < width; e += blockDim.x)
    row[e] = __float2bfloat16(e < r ? latent[i * r + e] : k_pe[i * k_pe_stride + e - r]);
}

int multiprocessors() {
  int device = 0, count = 0;
  DS_CUDA_CHECK(cudaGetDevice(&device));
  DS_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

}  // namespace

void mla_decode(float* out, const float* q, const __nv_bfloat16* cache, const int32_t* slots, const int32_t* lengths,
                int64_t B, int64_t H, int64_t capacity, int64_t r, int64_t dr, float scale, cudaStream_t stream) {
  if (r <= 0 || dr < 0 || r + dr > kMlaMaxWidth)
    fail_text("mla_decode: latent width " + std::to_string(r) + " + rope width " + std::to_string(dr) +
              " must add up to at most " + std::to_string(kMlaMaxWidth));
  if (B == 0 || H == 0) return;
  if (B > 65535 || capacity < 1) fail_text("mla_decode: 1..65535 query rows over a cache of at least 1 row");
  // Enough (row, head group, chunk) blocks to fill the GPU twice, chunks of at least kMinChunk cache rows.
  const int64_t head_groups = (H + kHeadsPerBlock - 1) / kHeadsPerBlock;
  const int64_t wanted = (2 * int64_t(multiprocessors()) + B * head_groups - 1) / (B * head_groups);
  const int64_t splits =
      std::clamp<int64_t>(wanted, 1, std::min<int64_t>(65535, (capacity + kMinChunk - 1) / kMinChunk));
  const int64_t chunk = (capacity + splits - 1) / splits;
  DeviceBuffer<float> o_part(static_cast<size_t>(B * H * splits * r)), ml_part(static_cast<size_t>(B * H * splits * 2));
  const dim3 grid{unsigned(head_groups), unsigned(splits), unsigned(B)};
  DS_LAUNCH(mla_decode_split_kernel, grid, 32 * kHeadsPerBlock, 0, stream)(
      o_part.data(), ml_part.data(), q, cache, slots, lengths, H, capacity, int(r), int(dr), scale, chunk);
  DS_CUDA_LAUNCHED();
  DS_LAUNCH(mla_decode_combine_kernel, unsigned(B * H), 128, 0, stream)(
      out, o_part.data(), ml_part.data(), splits, int(r));
  DS_CUDA_LAUNCHED();
}

void mla_cache_write(__nv_bfloat16* cache, int64_t capacity, const float* latent, const float* k_pe,
                     int64_t k_pe_stride, const int32_t* slots, const int32_t* pos, int64_t R, int64_t r, int64_t dr,
                     cudaStream_t stream) {
  if (R == 0) return;
  DS_LAUNCH(mla_cache_write_kernel, unsigned(R), 128, 0, stream)(
      cache, capacity, latent, k_pe, k_pe_stride, slots, pos, int(r), int(dr));
  DS_CUDA_LAUNCHED();
}

}  // namespace ds::cuda
