#pragma once
// Helpers of the GPU tests: seeded inputs, device copies, and comparisons that say where values differ.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "cuda_memory.h"
#include "cuda_stream.h"
#include "ds/bf16.h"

namespace ds::gpu_test {

inline std::vector<float> random_floats(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// Values rounded to bf16 (so CPU and GPU see the same numbers), and their bf16 bits as the device type.
inline std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = bf16_to_float(float_to_bf16(x));
  return v;
}
inline std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __nv_bfloat16(__nv_bfloat16_raw{float_to_bf16(v[i])});
  return out;
}
inline std::vector<float> from_bf16(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(__nv_bfloat16_raw(v[i]).x);
  return out;
}

// Every |got - want| <= abs + rel * |want|; reports the first few that are not.
inline void check_close(const std::vector<float>& got, const std::vector<float>& want, double rel, double abs = 0) {
  REQUIRE(got.size() == want.size());
  int reported = 0;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    if (std::fabs(g - w) <= abs + rel * std::fabs(w)) continue;
    ++bad;
    if (reported++ < 5) FAIL_CHECK("index " << i << ": got " << g << ", want " << w);
  }
  CHECK(bad == 0);
}

}  // namespace ds::gpu_test
