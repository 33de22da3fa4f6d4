#pragma once
// How many CPU threads the ops (OpenMP) and OpenBLAS use. OpenMP's threads wait for each other at the end of every
// parallel loop, so a thread the scheduler has given to another program holds all the others up: on cores that
// other programs keep busy, N threads can be far slower than one. By default a program therefore takes only the
// cores that are idle when it starts.
#include <cstdint>
#include <string>

namespace ds {

// threads > 0: that many; 0: default_threads().
void set_threads(int threads);
int get_threads();

// The cores this process may run on (its affinity mask) less those other programs keep busy, measured over a short
// interval at start (busy_cores); at least 1. Work at a lower priority (nice) does not count: it yields to us.
int default_threads();
// The cores this process may run on: its affinity mask.
int usable_cores();

// Cumulative CPU time of the whole machine, from the "cpu" line of /proc/stat, in its ticks.
struct CpuTimes {
  uint64_t busy = 0;   // user, system, irq, softirq and steal: work at normal or higher priority
  uint64_t total = 0;  // every column, nice and idle included
};
// Parses /proc/stat's text; throws ds::Error naming it when there is no "cpu" line.
CpuTimes parse_cpu_times(const std::string& proc_stat);
// How many of `cores` cores were busy between two readings, on average.
double busy_cores(const CpuTimes& before, const CpuTimes& after, int cores);

}  // namespace ds
