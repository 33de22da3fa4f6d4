#pragma once
// Device memory: a caching allocator over cudaMalloc (one per device, thread-safe), typed buffers that return their
// block to it, and copies between host and device.
//
// A freed block can be handed out again at once, so it must no longer be in use by queued work on another stream:
// queue all work of a device on one stream, or synchronise before freeing what another stream still reads.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "cuda_check.h"

namespace ds::cuda {

// size bytes on the current device (null for 0). When cudaMalloc fails, the cached blocks are released and it is
// tried once more; then a ds::Error names the size and what is in use and cached.
void* allocate(size_t bytes);
void deallocate(void* ptr);
// Frees every cached block of the current device (cudaFree); blocks in use are untouched.
void release_cached();
struct MemoryStats {
  size_t in_use = 0, cached = 0;
};
MemoryStats memory_stats();  // of the current device

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : data_(static_cast<T*>(allocate(n * sizeof(T)))), size_(n) {}
  ~DeviceBuffer() { deallocate(data_); }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// Asynchronous copies of n elements, queued on stream.
template <typename T>
void copy_to_device(T* dst, const T* src, size_t n, cudaStream_t stream) {
  DS_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyHostToDevice, stream));
}
template <typename T>
void copy_to_host(T* dst, const T* src, size_t n, cudaStream_t stream) {
  DS_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToHost, stream));
}

// Synchronous conveniences: a device copy of host values, and a host copy of a device buffer (waits for the stream).
template <typename T>
DeviceBuffer<T> to_device(const std::vector<T>& values, cudaStream_t stream) {
  DeviceBuffer<T> buffer(values.size());
  copy_to_device(buffer.data(), values.data(), values.size(), stream);
  DS_CUDA_CHECK(cudaStreamSynchronize(stream));
  return buffer;
}
template <typename T>
std::vector<T> to_host(const T* src, size_t n, cudaStream_t stream) {
  std::vector<T> values(n);
  copy_to_host(values.data(), src, n, stream);
  DS_CUDA_CHECK(cudaStreamSynchronize(stream));
  return values;
}
template <typename T>
std::vector<T> to_host(const DeviceBuffer<T>& buffer, cudaStream_t stream) {
  return to_host(buffer.data(), buffer.size(), stream);
}

}  // namespace ds::cuda
