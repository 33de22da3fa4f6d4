#pragma once
// When a loop is worth splitting over OpenMP's threads.
#include <cstdint>

namespace ds {

// Loops with fewer element operations than this run on one thread (`#pragma omp parallel for if
// (parallel_worth(n))`): waking the other threads costs microseconds on an idle machine, and up to a scheduler time
// slice each time when other programs hold the cores, far more than such a loop's work.
inline constexpr int64_t kParallelMinWork = int64_t(1) << 16;
constexpr bool parallel_worth(int64_t work) { return work >= kParallelMinWork; }

}  // namespace ds
