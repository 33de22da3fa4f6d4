#pragma once
// Token shards (man/dskit-formats.5): little-endian uint32 token ids, each document framed by BOS ... EOS.
// A shard is raw or zstd-compressed; readers tell them apart by the zstd magic number, never by the file name.
// "-" is stdin for reading and stdout for writing.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ds {

// Every id in the shard, decompressing as it reads.
std::vector<uint32_t> read_tokens(const std::string& path);

// Writes a shard atomically (see AtomicFile): raw when zstd_level is 0, else zstd at that level, compressed by
// `threads` worker threads when more than one.
void write_tokens(const std::string& path, std::span<const uint32_t> ids, int zstd_level = 0, int threads = 1);

// Throws naming the file and the first position whose id is not below vocab_size.
void check_token_range(const std::string& path, std::span<const uint32_t> ids, uint32_t vocab_size);

}  // namespace ds
