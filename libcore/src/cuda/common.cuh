#pragma once
// Small device helpers shared by the kernels.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "cuda_check.h"

// Launches a kernel: DS_LAUNCH(kernel, grid, block, shared_bytes, stream, arguments...). tests/simt/simt.h defines
// it first, to run the kernels on the CPU.
#ifndef DS_LAUNCH
#define DS_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<grid, block, shared_bytes, stream>>>(__VA_ARGS__)
#endif

// After every launch: a bad configuration shows up here, named with the kernel's call site.
#define DS_CUDA_LAUNCHED() DS_CUDA_CHECK(cudaGetLastError())

namespace ds::cuda {

inline constexpr unsigned kFullMask = 0xffffffffu;

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Sum or max over each group of Lanes consecutive lanes (the whole warp by default; 4 for the lanes that hold one row
// of an mma result); every lane of the group gets it.
template <int Lanes = 32>
__device__ inline float warp_sum(float v) {
  for (int offset = Lanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}
template <int Lanes = 32>
__device__ inline float warp_max(float v) {
  for (int offset = Lanes / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Sum or max over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets the result.
// `shared` holds 32 floats; the block must reach the call together.
template <bool Max>
__device__ inline float block_reduce(float v, float* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = Max ? warp_max(v) : warp_sum(v);
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : (Max ? -INFINITY : 0.0f);
  return Max ? warp_max(v) : warp_sum(v);
}

// d += A B on the tensor cores (mma.sync, sm_80 and later) for one warp: A a 16x16 bf16 tile, B 16x8 bf16, D 16x8
// float. With g = lane / 4 and t = lane % 4 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), a 32-bit register holds
// two bf16 of consecutive k (the lower k in the low half):
//   a = {A[g][2t..2t+1], A[g+8][2t..2t+1], A[g][2t+8..2t+9], A[g+8][2t+8..2t+9]},
//   b = {B[2t..2t+1][g], B[2t+8..2t+9][g]},  d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
__device__ inline void mma_16x8x16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef DS_MMA_16X8X16
  DS_MMA_16X8X16(d, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Two floats as the bf16 pair of one fragment register, `lo` in the low half.
__device__ inline uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &pair, sizeof bits);
  return bits;
}

// The row stride, in elements, of a bf16 tile of d columns in shared memory for the fragment loads below: d padded to
// k-steps of 16, and 8 more so that the eight rows of a fragment fall in different banks.
__host__ __device__ inline int fragment_stride(int64_t d) { return int((d + 15) / 16 * 16 + 8); }

// Fragments of bf16 tiles in shared memory, row-major with rows `stride` elements apart (fragment_stride's).
// A[m][k] = tile[m][k]:
__device__ inline void fragment_a(uint32_t (&a)[4], const __nv_bfloat16* tile, int stride) {
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const auto pair = [&](int row, int col) { return *reinterpret_cast<const uint32_t*>(tile + row * stride + col); };
  a[0] = pair(g, 2 * t);
  a[1] = pair(g + 8, 2 * t);
  a[2] = pair(g, 2 * t + 8);
  a[3] = pair(g + 8, 2 * t + 8);
}
// B[k][n] = tile[n][k], a tile whose rows are B's columns (the keys of Q K^T):
__device__ inline void fragment_b(uint32_t (&b)[2], const __nv_bfloat16* tile, int stride) {
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  b[0] = *reinterpret_cast<const uint32_t*>(tile + g * stride + 2 * t);
  b[1] = *reinterpret_cast<const uint32_t*>(tile + g * stride + 2 * t + 8);
}
// B[k][n] = tile[k][n], a tile whose rows are B's rows (the values of P V): ldmatrix's transposing load, from the
// 16-byte rows that lanes 0-15 name (so `tile` and `stride` keep rows 16-byte aligned), at full shared-memory width
// where 16-bit loads would take half.
__device__ inline void fragment_b_rows(uint32_t (&b)[2], const __nv_bfloat16* tile, int stride) {
  const __nv_bfloat16* row = tile + threadIdx.x % 16 * stride;
#ifdef DS_LDMATRIX_X2_TRANS
  DS_LDMATRIX_X2_TRANS(b, row);
#else
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(b[0]), "=r"(b[1])
               : "r"(address));
#endif
}
// The A fragment of the 16x16 tile that two adjacent 16x8 results hold (columns 0-7 and 8-15), in bf16: a product's
// rows feed the next product without leaving registers.
__device__ inline void fragment_a_of(uint32_t (&a)[4], const float (&left)[4], const float (&right)[4]) {
  a[0] = pack_bf16(left[0], left[1]);
  a[1] = pack_bf16(left[2], left[3]);
  a[2] = pack_bf16(right[0], right[1]);
  a[3] = pack_bf16(right[2], right[3]);
}

// Lets `kernel` launch with up to `bytes` of dynamic shared memory; above 48 KiB a launch needs it.
#ifndef DS_ALLOW_SHARED
#define DS_ALLOW_SHARED(kernel, bytes) \
  DS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)))
#endif

// The launch's dynamic shared memory (its shared_bytes), 16-byte aligned.
__device__ inline unsigned char* dynamic_shared() {
#ifdef DS_DYNAMIC_SHARED
  return DS_DYNAMIC_SHARED();
#else
  extern __shared__ __align__(16) unsigned char bytes[];
  return bytes;
#endif
}

// cp.async (sm_80 and later): 16 bytes from global to shared memory without passing through registers. Copies are
// grouped by commit; copy_async_wait<N>() returns once at most N of this thread's groups are still in flight, and a
// barrier after it shows the block's copies to every thread.
__device__ inline void copy_async_16(void* shared, const void* global) {
#ifdef DS_COPY_ASYNC_16
  DS_COPY_ASYNC_16(shared, global);
#else
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global));
#endif
}
__device__ inline void copy_async_commit() {
#ifdef DS_COPY_ASYNC_COMMIT
  DS_COPY_ASYNC_COMMIT();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int PendingGroups>
__device__ inline void copy_async_wait() {
#ifdef DS_COPY_ASYNC_WAIT
  DS_COPY_ASYNC_WAIT(PendingGroups);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PendingGroups));
#endif
}

// e4m3 with saturation to +-448, as ds::float_to_e4m3 on the CPU.
__device__ inline uint8_t to_e4m3(float x) { return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3); }

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

}  // namespace ds::cuda
