#pragma once
// simt: runs the CUDA kernels of libcore/src/cuda on the CPU, so that machines without a GPU execute them (tests only).
//
// The .cu files compile as C++ with this header included first (-include). It keeps CUDA's own host headers for the
// types (__nv_bfloat16, e4m3 conversions, cudaStream_t) and replaces what only nvcc knows: __shared__ becomes a static
// (blocks run one after another), the thread and block indices are set per CUDA thread, __syncthreads and the warp
// shuffles suspend the calling thread, and DS_LAUNCH (common.cuh) runs a grid here. Each CUDA thread of a block that
// synchronises is a fiber; a block whose threads wait at different barriers fails as a deadlock instead of hanging.
// The warp's tensor-core product and ldmatrix gather the 32 lanes' fragments or row addresses; cp.async copies wait in
// their thread's groups; dynamic shared memory starts as NaN bytes.
// simt.cpp holds the scheduler and the CUDA runtime calls; cublaslt.cpp the cuBLASLt subset.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace ds::simt {

// The running CUDA thread's coordinates, set by the scheduler before the thread runs or resumes. Launches take turns
// (one host thread at a time), so these are plain globals.
extern uint3 thread_idx, block_idx, block_dim, grid_dim;

void sync_threads();
// Exchanges `bytes` (at most 32) of `value` within the warp: `out` gets those of lane (this lane ^ lane_mask).
void warp_exchange(unsigned mask, const void* value, void* out, size_t bytes, int lane_mask);
// The warp-wide tensor-core product of common.cuh's mma_16x8x16, with its fragment layout.
void mma_16x8x16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
// ldmatrix.x2.trans: lanes 0-15 each name a 16-byte row of two 8x8 b16 matrices; each lane gets its fragment of
// their transposes.
void ldmatrix_x2_trans(uint32_t (&b)[2], const void* row);
// The launch's dynamic shared memory, filled with 0xff bytes (NaN as float and bf16) when each block starts.
unsigned char* dynamic_shared();
// cp.async: a copy lands when the thread waits for its group (common.cuh's copy_async_*), not before.
void copy_async(void* shared, const void* global, size_t bytes);
void copy_async_commit();
void copy_async_wait(int pending_groups);

template <typename T>
T shfl_xor(unsigned mask, T value, int lane_mask) {
  T out;
  warp_exchange(mask, &value, &out, sizeof(T), lane_mask);
  return out;
}

// Runs `thread` once for every thread of the grid; an invalid configuration sets the error cudaGetLastError returns.
// More than 48 KiB of dynamic shared memory needs allow_shared (common.cuh's DS_ALLOW_SHARED) first, as on the GPU.
void launch(const char* kernel, dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& thread);
void allow_shared(const char* kernel, size_t bytes);

// What DS_LAUNCH's launcher(...) returns: called with the kernel's arguments, it runs the grid. `call` calls the
// kernel, so that a template kernel deduces its parameters as it does under nvcc.
template <typename Call>
struct Launch {
  const char* kernel;
  dim3 grid, block;
  size_t shared_bytes;
  Call call;
  template <typename... Args>
  void operator()(const Args&... args) const {
    launch(kernel, grid, block, shared_bytes, [&] { call(args...); });
  }
};
template <typename Call>
Launch<Call> launcher(const char* kernel, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t, Call call) {
  return {kernel, grid, block, shared_bytes, call};
}

}  // namespace ds::simt

#define threadIdx (::ds::simt::thread_idx)
#define blockIdx (::ds::simt::block_idx)
#define blockDim (::ds::simt::block_dim)
#define gridDim (::ds::simt::grid_dim)
#define __syncthreads() ::ds::simt::sync_threads()
#define __shfl_xor_sync(mask, value, lane_mask) ::ds::simt::shfl_xor(mask, value, lane_mask)
#define DS_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)  \
  ::ds::simt::launcher(#kernel, grid, block, shared_bytes, stream, \
                       [](const auto&... arguments) { kernel(arguments...); })(__VA_ARGS__)
#define DS_ALLOW_SHARED(kernel, bytes) ::ds::simt::allow_shared(#kernel, bytes)
#define DS_MMA_16X8X16(d, a, b) ::ds::simt::mma_16x8x16(d, a, b)
#define DS_LDMATRIX_X2_TRANS(b, row) ::ds::simt::ldmatrix_x2_trans(b, row)
#define DS_DYNAMIC_SHARED() ::ds::simt::dynamic_shared()
#define DS_COPY_ASYNC_16(shared, global) ::ds::simt::copy_async(shared, global, 16)
#define DS_COPY_ASYNC_COMMIT() ::ds::simt::copy_async_commit()
#define DS_COPY_ASYNC_WAIT(pending_groups) ::ds::simt::copy_async_wait(pending_groups)

using std::max;
using std::min;
