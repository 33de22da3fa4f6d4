// MLA decode in the absorbed form over the latent cache (docs/architecture.md#absorbed-decode) on the tensor cores,
// FlashMLA's formulation with mma.sync: one KV head of width r + dr shared by all query heads, values = the first r
// dims of the keys. A block takes up to 64 heads of one query row (16 per head tile) over one chunk of its cache
// ("flash decoding"; a second kernel merges the chunks). The keys stream through shared memory 32 rows at a time, the
// next tile copied (cp.async) while the current one is used. Each head tile has two warps: for every key tile each
// takes half of the keys for the scores S = Q K^T, they agree on the rows' running maxima through shared memory, write
// the probabilities P there in bf16, and then each takes half of the value dims for O += P V. A query row names its
// cache slot and length, so prefill (many rows of one sequence, each seeing the rows up to its own) is the same
// operation as decode.
#include <algorithm>

#include "common.cuh"
#include "cuda_ops.h"

namespace ds::cuda {

namespace {

constexpr int kKeysPerTile = 32;                            // two warps take 16 keys each
constexpr int kMaxValueTiles = int(kMlaMaxLatent) / 2 / 8;  // 8-wide output tiles per warp: 32 at V3's 512
constexpr int kProbStride = kKeysPerTile + 8;               // P rows 4 banks apart
constexpr int64_t kMinChunk = 64;                           // cache rows per split, at least

// Shared memory: the queries [heads, stride], two key tiles [32, stride] and P [heads, kProbStride] in bf16, then
// each warp's row maxima and sums [2 halves, heads] in float.
__host__ __device__ inline size_t shared_bytes(int heads, int width) {
  const size_t stride = size_t(fragment_stride(width));
  return 2 * (heads * stride + 2 * kKeysPerTile * stride + size_t(heads) * kProbStride) + 4 * sizeof(float) * heads;
}

// Cache rows [j0, j0 + 32) of one sequence into a key tile; rows at or past `end` become zeros, so that their zero
// probabilities meet finite values.
__device__ inline void load_keys(__nv_bfloat16* tile, const __nv_bfloat16* kv, int64_t j0, int64_t end, int width,
                                 int stride, int threads) {
  if (width % 8 == 0 && reinterpret_cast<uintptr_t>(kv) % 16 == 0) {  // whole 16-byte pieces, 16-byte aligned
    const int pieces = width / 8;
    for (int i = threadIdx.x; i < kKeysPerTile * pieces; i += threads) {
      const int row = i / pieces, piece = i % pieces;
      __nv_bfloat16* dst = tile + row * stride + 8 * piece;
      if (j0 + row < end)
        copy_async_16(dst, kv + (j0 + row) * width + 8 * piece);
      else
        *reinterpret_cast<uint4*>(dst) = uint4{0, 0, 0, 0};
    }
  } else {
    for (int i = threadIdx.x; i < kKeysPerTile * width; i += threads) {
      const int row = i / width, e = i % width;
      tile[row * stride + e] = j0 + row < end ? kv[(j0 + row) * width + e] : __float2bfloat16(0.0f);
    }
  }
}

template <int HeadTiles>
__global__ void __launch_bounds__(64 * HeadTiles)
    mla_decode_split_kernel(float* o_part, float* ml_part, const float* q, const __nv_bfloat16* cache,
                            const int32_t* slots, const int32_t* lengths, int64_t H, int64_t capacity, int r, int dr,
                            float scale, int64_t chunk) {
  constexpr int kHeads = 16 * HeadTiles, kThreads = 64 * HeadTiles;
  const int width = r + dr, stride = fragment_stride(width), k_pad = stride - 8;
  const int half_dims = (r + 15) / 16 * 8, value_tiles = half_dims / 8;
  auto* sq = reinterpret_cast<__nv_bfloat16*>(dynamic_shared());
  __nv_bfloat16* sk = sq + kHeads * stride;
  __nv_bfloat16* sp = sk + 2 * kKeysPerTile * stride;
  float* smax = reinterpret_cast<float*>(sp + kHeads * kProbStride);
  float* ssum = smax + 2 * kHeads;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int head_tile = warp % HeadTiles, half = warp / HeadTiles;
  const int64_t h0 = int64_t(blockIdx.x) * kHeads, split = blockIdx.y, splits = gridDim.y, b = blockIdx.z;
  const int64_t begin = split * chunk, end = min(begin + chunk, int64_t(lengths[b]));
  const int64_t tiles = end > begin ? (end - begin + kKeysPerTile - 1) / kKeysPerTile : 0;
  const __nv_bfloat16* kv = cache + int64_t(slots ? slots[b] : b) * capacity * width;

  // The queries in bf16, zero past the width and past the last head; zero key columns past the width.
  for (int i = threadIdx.x; i < kHeads * k_pad; i += kThreads) {
    const int row = i / k_pad, e = i % k_pad;
    const int64_t h = h0 + row;
    sq[row * stride + e] = __float2bfloat16(h < H && e < width ? q[(b * H + h) * width + e] : 0.0f);
  }
  for (int i = threadIdx.x; i < 2 * kKeysPerTile * (k_pad - width); i += kThreads)
    sk[i / (k_pad - width) * stride + width + i % (k_pad - width)] = __float2bfloat16(0.0f);
  if (tiles > 0) load_keys(sk, kv, begin, end, width, stride, kThreads);
  copy_async_commit();

  // Lane (g, t) holds rows g and g + 8 of its head tile: their running maxima, its part of their sums, and columns
  // 2t, 2t + 1 of each 8-wide tile of its half of the output.
  float o[kMaxValueTiles][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const __nv_bfloat16* q_tile = sq + 16 * head_tile * stride;
  __nv_bfloat16* p_tile = sp + 16 * head_tile * kProbStride;
  for (int64_t it = 0; it < tiles; ++it) {
    const __nv_bfloat16* keys = sk + (it % 2) * kKeysPerTile * stride;
    copy_async_wait<0>();
    __syncthreads();  // the tile has landed, and every warp is done with the other one
    if (it + 1 < tiles)
      load_keys(sk + ((it + 1) % 2) * kKeysPerTile * stride, kv, begin + (it + 1) * kKeysPerTile, end, width, stride,
                kThreads);
    copy_async_commit();

    // Scores of this warp's 16 keys: two 8-wide tiles.
    float s[2][4] = {};
    const __nv_bfloat16* my_keys = keys + 16 * half * stride;
    for (int k0 = 0; k0 < k_pad; k0 += 16) {
      uint32_t a[4];
      fragment_a(a, q_tile + k0, stride);
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        uint32_t bk[2];
        fragment_b(bk, my_keys + 8 * n * stride + k0, stride);
        mma_16x8x16(s[n], a, bk);
      }
    }
    const int64_t j_first = begin + it * kKeysPerTile + 16 * half;
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[n][i] = j_first + 8 * n + 2 * t + i % 2 < end ? s[n][i] * scale : -INFINITY;
        tile_max[i / 2] = fmaxf(tile_max[i / 2], s[n][i]);
      }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      tile_max[i] = warp_max<4>(tile_max[i]);
      if (t == 0) smax[half * kHeads + 16 * head_tile + g + 8 * i] = tile_max[i];
    }
    __syncthreads();  // both halves' maxima

    float correction[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = 16 * head_tile + g + 8 * i;
      // The tile's first key is in the sequence, so the new maximum is finite; expf(-inf) = 0 on the first tile.
      const float m_new = fmaxf(m[i], fmaxf(smax[row], smax[kHeads + row]));
      correction[i] = expf(m[i] - m_new);
      l[i] *= correction[i];
      m[i] = m_new;
    }
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int i = 0; i < 4; i += 2) {
        const float p0 = expf(s[n][i] - m[i / 2]), p1 = expf(s[n][i + 1] - m[i / 2]);
        l[i / 2] += p0 + p1;
        const int row = g + 8 * (i / 2), key = 16 * half + 8 * n + 2 * t;
        *reinterpret_cast<uint32_t*>(p_tile + row * kProbStride + key) = pack_bf16(p0, p1);
      }
#pragma unroll
    for (int v = 0; v < kMaxValueTiles; ++v)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[v][i] *= correction[i / 2];
    __syncthreads();  // both halves' probabilities

    // O += P V over the tile's 32 keys, for this warp's half of the value dims.
#pragma unroll
    for (int k0 = 0; k0 < kKeysPerTile; k0 += 16) {
      uint32_t a[4];
      fragment_a(a, p_tile + k0, kProbStride);
#pragma unroll
      for (int v = 0; v < kMaxValueTiles; ++v) {
        if (v >= value_tiles) break;
        uint32_t bv[2];
        fragment_b_rows(bv, keys + k0 * stride + half * half_dims + 8 * v, stride);
        mma_16x8x16(o[v], a, bv);
      }
    }
  }

  // The rows' sums: over the four lanes of a row, then over the two halves.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] = warp_sum<4>(l[i]);
    if (t == 0) ssum[half * kHeads + 16 * head_tile + g + 8 * i] = l[i];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = 16 * head_tile + g + 8 * i;
    const int64_t h = h0 + row;
    if (h >= H) continue;
    const int64_t slot = (b * H + h) * splits + split;
    float* out = o_part + slot * r;
#pragma unroll
    for (int v = 0; v < kMaxValueTiles; ++v) {
      if (v >= value_tiles) break;
      const int d = half * half_dims + 8 * v + 2 * t;
      if (d < r) out[d] = o[v][2 * i];
      if (d + 1 < r) out[d + 1] = o[v][2 * i + 1];
    }
    if (half == 0 && t == 0) {
      ml_part[2 * slot] = m[i];  // -inf and 0 for a chunk past the sequence's end
      ml_part[2 * slot + 1] = ssum[row] + ssum[kHeads + row];
    }
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

template <int HeadTiles>
void launch_split(dim3 grid, float* o_part, float* ml_part, const float* q, const __nv_bfloat16* cache,
                  const int32_t* slots, const int32_t* lengths, int64_t H, int64_t capacity, int64_t r, int64_t dr,
                  float scale, int64_t chunk, cudaStream_t stream) {
  const size_t smem = shared_bytes(16 * HeadTiles, int(r + dr));
  DS_ALLOW_SHARED(mla_decode_split_kernel<HeadTiles>, smem);
  DS_LAUNCH(mla_decode_split_kernel<HeadTiles>, grid, 64 * HeadTiles, smem, stream, o_part, ml_part, q, cache, slots,
            lengths, H, capacity, int(r), int(dr), scale, chunk);
  DS_CUDA_LAUNCHED();
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
  if (r <= 0 || r > kMlaMaxLatent || dr < 0 || r + dr > kMlaMaxWidth)
    fail_text("mla_decode: latent width " + std::to_string(r) + " + rope width " + std::to_string(dr) +
              ": the latent must be 1.." + std::to_string(kMlaMaxLatent) + " wide and both at most " +
              std::to_string(kMlaMaxWidth));
  if (B == 0 || H == 0) return;
  if (B > 65535 || capacity < 1) fail_text("mla_decode: 1..65535 query rows over a cache of at least 1 row");
  // 16, 32 or 64 heads a block; enough (row, head group, chunk) blocks to fill the GPU twice, chunks of at least
  // kMinChunk cache rows.
  const int head_tiles = H <= 16 ? 1 : H <= 32 ? 2 : 4;
  const int64_t head_groups = (H + 16 * head_tiles - 1) / (16 * head_tiles);
  const int64_t wanted = (2 * int64_t(multiprocessors()) + B * head_groups - 1) / (B * head_groups);
  const int64_t splits =
      std::clamp<int64_t>(wanted, 1, std::min<int64_t>(65535, (capacity + kMinChunk - 1) / kMinChunk));
  const int64_t chunk = (capacity + splits - 1) / splits;
  DeviceBuffer<float> o_part(static_cast<size_t>(B * H * splits * r)), ml_part(static_cast<size_t>(B * H * splits * 2));
  const dim3 grid{unsigned(head_groups), unsigned(splits), unsigned(B)};
  if (head_tiles == 1)
    launch_split<1>(grid, o_part.data(), ml_part.data(), q, cache, slots, lengths, H, capacity, r, dr, scale, chunk,
                    stream);
  else if (head_tiles == 2)
    launch_split<2>(grid, o_part.data(), ml_part.data(), q, cache, slots, lengths, H, capacity, r, dr, scale, chunk,
                    stream);
  else
    launch_split<4>(grid, o_part.data(), ml_part.data(), q, cache, slots, lengths, H, capacity, r, dr, scale, chunk,
                    stream);
  DS_LAUNCH(mla_decode_combine_kernel, unsigned(B * H), 128, 0, stream, out, o_part.data(), ml_part.data(), splits,
            int(r));
  DS_CUDA_LAUNCHED();
}

void mla_cache_write(__nv_bfloat16* cache, int64_t capacity, const float* latent, const float* k_pe,
                     int64_t k_pe_stride, const int32_t* slots, const int32_t* pos, int64_t R, int64_t r, int64_t dr,
                     cudaStream_t stream) {
  if (R == 0) return;
  DS_LAUNCH(mla_cache_write_kernel, unsigned(R), 128, 0, stream, cache, capacity, latent, k_pe, k_pe_stride, slots, pos,
            int(r), int(dr));
  DS_CUDA_LAUNCHED();
}

}  // namespace ds::cuda
