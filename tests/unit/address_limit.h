#pragma once
// Lowers this process's address-space limit (RLIMIT_AS, as `ulimit -v`) to what is mapped now plus `headroom` bytes
// for one scope, so that ds::memory_available() is small and known; the limit before comes back at the end.
#include <sys/resource.h>

#include <cstdint>

#include "ds/memory.h"

class AddressSpaceLimit {
 public:
  explicit AddressSpaceLimit(uint64_t headroom) {
    ::getrlimit(RLIMIT_AS, &before_);
    rlimit lowered = before_;
    lowered.rlim_cur = ds::mapped_bytes() + headroom;
    ::setrlimit(RLIMIT_AS, &lowered);
  }
  ~AddressSpaceLimit() { ::setrlimit(RLIMIT_AS, &before_); }
  AddressSpaceLimit(const AddressSpaceLimit&) = delete;
  AddressSpaceLimit& operator=(const AddressSpaceLimit&) = delete;

 private:
  rlimit before_{};
};
