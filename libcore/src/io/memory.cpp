#include "ds/memory.h"

#include <sys/resource.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <utility>

#include "ds/error.h"

namespace ds {

namespace {
// The first two fields of /proc/self/statm in bytes: the address space mapped and the memory resident; 0 where /proc
// cannot tell.
std::pair<uint64_t, uint64_t> statm() {
  std::ifstream in("/proc/self/statm");
  uint64_t mapped = 0, resident = 0;
  in >> mapped >> resident;
  const auto page = uint64_t(::sysconf(_SC_PAGESIZE));
  return {mapped * page, resident * page};
}

// In GiB to two decimals, or in MiB to one below a GiB.
std::string format_bytes(double bytes) {
  constexpr double kMiB = 1 << 20, kGiB = 1 << 30;
  return bytes >= kGiB ? fmt::format("{:.2f} GiB", bytes / kGiB) : fmt::format("{:.1f} MiB", bytes / kMiB);
}
}  // namespace

uint64_t mapped_bytes() { return statm().first; }

uint64_t memory_available() {
  const auto [mapped, resident] = statm();
  uint64_t bytes = UINT64_MAX;
  struct sysinfo info {};
  if (::sysinfo(&info) == 0) {
    const uint64_t total = (uint64_t(info.totalram) + uint64_t(info.totalswap)) * info.mem_unit;
    bytes = total > resident ? total - resident : 0;
  }
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY)
    bytes = std::min<uint64_t>(bytes, limit.rlim_cur > mapped ? limit.rlim_cur - mapped : 0);
  return bytes;
}

void require_memory(double bytes, const std::string& what) {
  const uint64_t available = memory_available();
  if (bytes > double(available))
    fail("{} needs {} of memory, more than the {} available", what, format_bytes(bytes),
         format_bytes(double(available)));
}

}  // namespace ds
