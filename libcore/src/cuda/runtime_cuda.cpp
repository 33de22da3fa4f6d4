// The device layer's host side: error reporting, device choice, the caching allocator, streams and timers.
#include <cublasLt.h>
#include <fmt/format.h>

#include <mutex>
#include <unordered_map>

#include "cuda_cache.h"
#include "cuda_check.h"
#include "cuda_memory.h"
#include "cuda_stream.h"
#include "ds/cuda.h"
#include "ds/error.h"

namespace ds {
namespace cuda {

void fail_cuda(cudaError_t status, const char* call, const char* file, int line) {
  fail("CUDA error {} ({}: {}) in {} at {}:{}", int(status), cudaGetErrorName(status), cudaGetErrorString(status), call,
       file, line);
}

void fail_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  fail("cuBLAS error {} ({}: {}) in {} at {}:{}", int(status), cublasLtGetStatusName(status),
       cublasLtGetStatusString(status), call, file, line);
}

void fail_text(const std::string& message) { throw Error(message); }

int device_count() {
  int count = 0;
  // No driver or no GPU is an answer here (0 devices), not an error.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

void select_device(int index) {
  const int count = device_count();
  if (count == 0) fail("no CUDA device for cuda:{}", index);
  if (index >= count) fail("no CUDA device cuda:{} ({} device{} present)", index, count, count == 1 ? "" : "s");
  DS_CUDA_CHECK(cudaSetDevice(index));
}

namespace {

struct DeviceMemory {
  BlockCache cache;
  std::unordered_map<void*, size_t> live;  // block -> its (rounded) size
  size_t in_use = 0;
};

std::mutex memory_mutex;
std::unordered_map<int, DeviceMemory> memory;  // by device ordinal

int current_device() {
  int device = 0;
  DS_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

void free_blocks(BlockCache& cache) {
  for (const auto& [ptr, bytes] : cache.drain()) DS_CUDA_CHECK(cudaFree(ptr));
}

}  // namespace

void* allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t size = BlockCache::round_size(bytes);
  const int device = current_device();
  std::lock_guard lock(memory_mutex);
  DeviceMemory& m = memory[device];
  auto [ptr, block] = m.cache.take(size);
  if (!ptr) {
    block = size;
    cudaError_t status = cudaMalloc(&ptr, size);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // clear it, release what the cache holds, and try once more
      free_blocks(m.cache);
      status = cudaMalloc(&ptr, size);
      if (status == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        fail("out of GPU memory on cuda:{} allocating {} bytes ({} bytes in use)", device, size, m.in_use);
      }
    }
    DS_CUDA_CHECK(status);
  }
  m.live.emplace(ptr, block);
  m.in_use += block;
  return ptr;
}

void deallocate(void* ptr) {
  if (!ptr) return;
  std::lock_guard lock(memory_mutex);
  for (auto& [device, m] : memory) {
    const auto it = m.live.find(ptr);
    if (it == m.live.end()) continue;
    m.in_use -= it->second;
    m.cache.put(ptr, it->second);
    m.live.erase(it);
    return;
  }
}

void release_cached() {
  const int device = current_device();
  std::lock_guard lock(memory_mutex);
  free_blocks(memory[device].cache);
}

MemoryStats memory_stats() {
  const int device = current_device();
  std::lock_guard lock(memory_mutex);
  const DeviceMemory& m = memory[device];
  return {m.in_use, m.cache.cached_bytes()};
}

Stream::Stream() { DS_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
Stream::~Stream() { cudaStreamDestroy(stream_); }  // a destructor must not throw; nothing to do on failure
void Stream::synchronize() const { DS_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

Timer::Timer(cudaStream_t stream) : stream_(stream) {
  DS_CUDA_CHECK(cudaEventCreate(&begin_));
  DS_CUDA_CHECK(cudaEventCreate(&end_));
}
Timer::~Timer() {
  cudaEventDestroy(begin_);
  cudaEventDestroy(end_);
}
void Timer::start() { DS_CUDA_CHECK(cudaEventRecord(begin_, stream_)); }
double Timer::stop_ms() {
  DS_CUDA_CHECK(cudaEventRecord(end_, stream_));
  DS_CUDA_CHECK(cudaEventSynchronize(end_));
  float ms = 0;
  DS_CUDA_CHECK(cudaEventElapsedTime(&ms, begin_, end_));
  return double(ms);
}

}  // namespace cuda
}  // namespace ds
