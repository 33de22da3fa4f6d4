#include "cuda_cache.h"

namespace ds::cuda {

size_t BlockCache::round_size(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t(2) << 20, kLimit = size_t(1) << 20;
  const size_t unit = bytes <= kLimit ? kSmall : kLarge;
  return (bytes + unit - 1) / unit * unit;
}

std::pair<void*, size_t> BlockCache::take(size_t bytes) {
  const auto it = free_.lower_bound(bytes);
  if (it == free_.end() || it->first > 2 * bytes) return {nullptr, 0};
  const std::pair<void*, size_t> block{it->second, it->first};
  free_.erase(it);
  cached_ -= block.second;
  return block;
}

void BlockCache::put(void* ptr, size_t bytes) {
  free_.emplace(bytes, ptr);
  cached_ += bytes;
}

std::vector<std::pair<void*, size_t>> BlockCache::drain() {
  std::vector<std::pair<void*, size_t>> blocks;
  for (const auto& [bytes, ptr] : free_) blocks.emplace_back(ptr, bytes);
  free_.clear();
  cached_ = 0;
  return blocks;
}

}  // namespace ds::cuda
