// ds-bench's contention measurement: busy processes that exist while held and are reaped after, and the runs of a
// tiny model's training step on 1 and 2 threads, contended and quiet.
#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "ds/bench.h"
#include "ds/config.h"
#include "ds/ops.h"

using namespace ds;

namespace {
std::string comm(int pid) {
  std::string name;
  std::getline(std::ifstream("/proc/" + std::to_string(pid) + "/comm"), name);
  return name;
}
}  // namespace

TEST_CASE("BusyProcesses run while held and are gone after") {
  std::vector<int> pids;
  {
    const bench::BusyProcesses busy(2);
    pids = busy.pids();
    REQUIRE(pids.size() == 2);
    for (const int pid : pids) {
      CHECK(kill(pid, 0) == 0);
      // The child names itself after fork; until then it carries this program's name.
      for (int i = 0; i < 1000 && comm(pid) != bench::kBusyName; ++i) usleep(1000);
      CHECK(comm(pid) == bench::kBusyName);
    }
  }
  for (const int pid : pids) CHECK(comm(pid) != bench::kBusyName);  // reaped: no such process, or another one
  CHECK(bench::BusyProcesses(0).pids().empty());
}

TEST_CASE("contention times 1, N and the default number of threads under load, then quiet") {
  const int before = get_threads();
  std::vector<int> seen;
  const auto runs = bench::contention(resolve_model_config("tiny"), 2, 8, 1, 2, 1,
                                      [&](const std::vector<int>& pids) { seen = pids; });
  CHECK(seen.size() == 1);
  for (const int pid : seen) CHECK(comm(pid) != bench::kBusyName);
  REQUIRE(runs.size() == 6);
  const int busy[] = {1, 1, 1, 0, 0, 0}, threads[] = {1, 2, 0, 1, 2, 0};
  for (size_t i = 0; i < 6; ++i) {
    CHECK(runs[i].busy == busy[i]);
    CHECK(runs[i].automatic == (threads[i] == 0));
    if (!runs[i].automatic) CHECK(runs[i].threads == threads[i]);
    CHECK(runs[i].threads >= 1);
    CHECK(runs[i].step.tokens_per_s > 0);
  }
  for (size_t i = 0; i < 6; i += 3) {
    CHECK(runs[i].vs_one_thread == 1.0);
    for (size_t j = i + 1; j < i + 3; ++j)
      CHECK(runs[j].vs_one_thread == doctest::Approx(runs[j].step.tokens_per_s / runs[i].step.tokens_per_s));
  }
  CHECK(get_threads() == 2);
  set_threads(before);
  CHECK_THROWS(bench::contention(resolve_model_config("tiny"), 2, 8, 1, 2, -1, [](const std::vector<int>&) {}));
}
