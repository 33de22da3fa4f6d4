#pragma once
// How much memory this process can still take. Sizes read from files (a model config, a compressed shard, a file of
// unknown length) are checked against it before anything is allocated, so that an impossible size is an error naming
// the file instead of std::bad_alloc or the OOM killer.
#include <cstdint>
#include <string>

namespace ds {

// The address space this process has mapped now (what RLIMIT_AS limits); 0 where /proc cannot tell.
uint64_t mapped_bytes();

// The most bytes this process could still allocate: what physical RAM plus swap leaves beyond the memory it holds
// already, or what the address-space limit (RLIMIT_AS, `ulimit -v`) leaves beyond the address space it has mapped,
// whichever is less.
uint64_t memory_available();

// Throws "WHAT needs N GiB of memory, more than the M GiB available" (MiB below a GiB) when `bytes` exceed
// memory_available().
void require_memory(double bytes, const std::string& what);

}  // namespace ds
