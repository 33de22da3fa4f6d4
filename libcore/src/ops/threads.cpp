#include "ds/threads.h"

#include <cblas.h>
#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include "ds/error.h"

namespace ds {

namespace {

// Long enough for a few of the kernel's 10 ms ticks on every core, short enough not to be noticed at start.
constexpr auto kSampleInterval = std::chrono::milliseconds(60);

CpuTimes read_cpu_times() {
  std::ifstream in("/proc/stat");
  std::stringstream text;
  text << in.rdbuf();
  return parse_cpu_times(text.str());
}

}  // namespace

int usable_cores() {
  cpu_set_t set;
  return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : omp_get_num_procs();
}

CpuTimes parse_cpu_times(const std::string& proc_stat) {
  std::istringstream in(proc_stat);
  std::string name;
  if (!(in >> name) || name != "cpu") fail("/proc/stat: no \"cpu\" line");
  // user nice system idle iowait irq softirq steal (guest time is already inside user and nice)
  uint64_t v[8] = {};
  for (uint64_t& x : v)
    if (!(in >> x)) fail("/proc/stat: the \"cpu\" line has fewer than 8 columns");
  CpuTimes t;
  t.busy = v[0] + v[2] + v[5] + v[6] + v[7];
  for (uint64_t x : v) t.total += x;
  return t;
}

double busy_cores(const CpuTimes& before, const CpuTimes& after, int cores) {
  if (after.total <= before.total || after.busy < before.busy) return 0;
  return double(after.busy - before.busy) / double(after.total - before.total) * cores;
}

int default_threads() {
  const int usable = usable_cores();
  if (usable == 1) return 1;  // nothing to choose: no need to wait for a measurement
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  try {
    const CpuTimes before = read_cpu_times();
    std::this_thread::sleep_for(kSampleInterval);
    const double busy = busy_cores(before, read_cpu_times(), int(online > 0 ? online : usable));
    const int idle = int(online > 0 ? online : usable) - int(std::lround(busy));
    return std::clamp(idle, 1, usable);
  } catch (const Error&) {
    return usable;  // no /proc/stat: take them all, as OpenMP would
  }
}

void set_threads(int threads) {
  if (threads <= 0) threads = default_threads();
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
}

int get_threads() { return omp_get_max_threads(); }

}  // namespace ds
