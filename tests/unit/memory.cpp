#include <doctest/doctest.h>
#include <unistd.h>

#include <string>

#include "address_limit.h"
#include "ds/error.h"
#include "ds/memory.h"

using namespace ds;

namespace {
constexpr uint64_t kMiB = uint64_t(1) << 20;
}

TEST_CASE("memory_available is the RAM and swap, or what the address-space limit leaves") {
  rlimit limit{};
  ::getrlimit(RLIMIT_AS, &limit);
  const uint64_t ram = uint64_t(::sysconf(_SC_PHYS_PAGES)) * uint64_t(::sysconf(_SC_PAGESIZE));
  CHECK(mapped_bytes() > 0);
  if (limit.rlim_cur == RLIM_INFINITY) CHECK(memory_available() + mapped_bytes() >= ram);  // less what it holds

  const AddressSpaceLimit lowered(256 * kMiB);
  const uint64_t available = memory_available();
  CHECK(available <= 256 * kMiB);
  CHECK(available > 192 * kMiB);  // what the limit leaves, less the little mapped since
  CHECK_NOTHROW(require_memory(double(64 * kMiB), "small.bin: the table"));
  try {
    require_memory(double(512 * kMiB), "big.bin: the table");
    FAIL("512 MiB fit under a 256 MiB limit");
  } catch (const Error& e) {
    const std::string msg = e.what();
    CHECK_MESSAGE(msg.starts_with("big.bin: the table needs 512.0 MiB of memory, more than the 2"), msg);
    CHECK_MESSAGE(msg.ends_with(" MiB available"), msg);
  }
}
