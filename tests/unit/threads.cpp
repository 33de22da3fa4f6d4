// The default thread count: the cores other programs leave idle, read from /proc/stat.
#include <doctest/doctest.h>

#include "ds/bench.h"
#include "ds/error.h"
#include "ds/threads.h"

using namespace ds;

TEST_CASE("/proc/stat's cpu line: busy time leaves out nice, idle and iowait") {
  // user nice system idle iowait irq softirq steal guest guest_nice
  const CpuTimes t = parse_cpu_times("cpu  100 50 20 1000 7 3 2 1 0 0\ncpu0 50 25 10 500 3 1 1 0 0 0\n");
  CHECK(t.busy == 100 + 20 + 3 + 2 + 1);
  CHECK(t.total == 100 + 50 + 20 + 1000 + 7 + 3 + 2 + 1);
  CHECK_THROWS_AS(parse_cpu_times("intr 5\n"), Error);
  CHECK_THROWS_AS(parse_cpu_times("cpu 1 2 3\n"), Error);
}

TEST_CASE("busy cores between two readings") {
  const CpuTimes before{.busy = 100, .total = 400}, after{.busy = 250, .total = 600};
  CHECK(busy_cores(before, after, 4) == doctest::Approx(3.0));  // 150 of 200 ticks on 4 cores
  CHECK(busy_cores(before, before, 4) == 0);                    // no time passed
}

TEST_CASE("the default takes only the cores that other programs leave idle") {
  const int cores = usable_cores();
  REQUIRE(cores >= 1);
  const int quiet = default_threads();
  CHECK(quiet >= 1);
  CHECK(quiet <= cores);
  // As many spinning processes as cores: none is idle, so the default is one thread.
  const bench::BusyProcesses busy(cores);
  CHECK(default_threads() == 1);
}
