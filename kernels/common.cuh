#pragma once
// Small device helpers shared by the kernels.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "ds/cuda_check.h"

// Launches a kernel: DS_LAUNCH(kernel, grid, block, shared_bytes, stream)(arguments...). tests/simt/simt.h defines
// it first, to run the kernels on the CPU.
#ifndef DS_LAUNCH
#define DS_LAUNCH(kernel, grid, block, shared_bytes, stream) kernel<<<grid, block, shared_bytes, stream>>>
#endif

// After every launch: a bad configuration shows up here, named with the kernel's call site.
#define DS_CUDA_LAUNCHED() DS_CUDA_CHECK(cudaGetLastError())

namespace ds::cuda {

inline constexpr unsigned kFullMask = 0xffffffffu;

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ inline float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}
__device__ inline float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
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

// e4m3 with saturation to +-448, as ds::float_to_e4m3 on the CPU.
__device__ inline uint8_t to_e4m3(float x) { return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3); }

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

}  // namespace ds::cuda
