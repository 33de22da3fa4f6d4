#pragma once
// The bookkeeping of the caching device allocator (cuda_memory.h), kept apart from the CUDA calls so that every
// build tests it: freed blocks wait by size and are handed out again to requests they fit without wasting more than
// half of the block, so a training step's repeated allocations stop reaching cudaMalloc after the first step.
#include <cstddef>
#include <map>
#include <utility>
#include <vector>

namespace ds::cuda {

class BlockCache {
 public:
  // The size a request is served with: multiples of 512 bytes up to 1 MiB, of 2 MiB above (so fewer distinct sizes
  // reach cudaMalloc and a block fits the next request of about the same size). 0 stays 0.
  static size_t round_size(size_t bytes);

  // Removes and returns the smallest cached block of at least `bytes` and at most twice that, with its size; null
  // when none fits.
  std::pair<void*, size_t> take(size_t bytes);
  void put(void* ptr, size_t bytes);
  // Removes and returns every cached block, for the caller to free.
  std::vector<std::pair<void*, size_t>> drain();
  size_t cached_bytes() const { return cached_; }

 private:
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

}  // namespace ds::cuda
