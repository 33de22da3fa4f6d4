// CPU ops in float against naive double-precision references, and the YaRN table against
// docs/architecture.md#yarn-rope.
#include <doctest/doctest.h>

#include <cmath>
#include <numbers>
#include <random>

#include "ds/ops.h"
#include "ds/parallel.h"

using namespace ds;

namespace {
std::vector<float> random_vector(size_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<float> v(n);
  for (float& x : v) x = float(normal(rng));
  return v;
}
}  // namespace

TEST_CASE("causal attention equals the naive double computation") {
  const int64_t B = 2, Tn = 7, H = 3, dk = 5, dv = 4;
  const auto q = random_vector(size_t(B * Tn * H * dk), 1), k = random_vector(q.size(), 2),
             v = random_vector(size_t(B * Tn * H * dv), 3);
  std::vector<float> o(v.size()), p(size_t(B * H * Tn * Tn));
  const double scale = 0.37;
  ops::attention(o.data(), p.data(), q.data(), k.data(), v.data(), B, Tn, H, dk, dv, scale);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tn; ++i) {
        std::vector<double> s(size_t(i + 1));
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < dk; ++d)
            dot += double(q[size_t(((b * Tn + i) * H + h) * dk + d)]) * k[size_t(((b * Tn + j) * H + h) * dk + d)];
          s[size_t(j)] = dot * scale;
          mx = std::max(mx, s[size_t(j)]);
        }
        for (auto& x : s) sum += (x = std::exp(x - mx));
        for (int64_t d = 0; d < dv; ++d) {
          double want = 0;
          for (int64_t j = 0; j <= i; ++j) want += s[size_t(j)] / sum * v[size_t(((b * Tn + j) * H + h) * dv + d)];
          CHECK(o[size_t(((b * Tn + i) * H + h) * dv + d)] == doctest::Approx(want).epsilon(1e-5));
        }
        for (int64_t j = i + 1; j < Tn; ++j) CHECK(p[size_t(((b * H + h) * Tn + i) * Tn + j)] == 0.0f);
      }
}

TEST_CASE("rmsnorm, swiglu and cross-entropy equal their definitions") {
  const int64_t N = 3, C = 8;
  const auto x = random_vector(size_t(N * C), 4), w = random_vector(size_t(C), 5);
  std::vector<float> y(x.size()), rstd(static_cast<size_t>(N));
  ops::rmsnorm(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6);
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += double(x[size_t(n * C + c)]) * x[size_t(n * C + c)];
    const double r = 1.0 / std::sqrt(ss / C + 1e-6);
    for (int64_t c = 0; c < C; ++c)
      CHECK(y[size_t(n * C + c)] == doctest::Approx(w[size_t(c)] * x[size_t(n * C + c)] * r).epsilon(1e-5));
  }

  std::vector<float> a(x.size());
  ops::swiglu(a.data(), x.data(), y.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i)
    CHECK(a[i] == doctest::Approx(x[i] / (1 + std::exp(-double(x[i]))) * y[i]).epsilon(1e-5));

  std::vector<float> logits = random_vector(size_t(N * C), 6, 3.0);
  const std::vector<float> saved = logits;
  const std::vector<int32_t> targets = {2, -1, 7};
  const double loss = ops::cross_entropy(logits.data(), targets.data(), N, C);
  double want = 0;
  for (int64_t n : {0, 2}) {
    double sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += std::exp(double(saved[size_t(n * C + c)]));
    want += std::log(sum) - saved[size_t(n * C + targets[size_t(n)])];
  }
  CHECK(loss == doctest::Approx(want).epsilon(1e-6));
  double row_sum = 0;
  for (int64_t c = 0; c < C; ++c) row_sum += logits[size_t(C + c)];
  CHECK(row_sum == doctest::Approx(1.0));
}

TEST_CASE("YaRN frequencies follow docs/architecture.md#yarn-rope and rope's inverse undoes it") {
  // DeepSeek-V3: dim 64, base 10000, factor 40, original 4096, beta 32/1 -> low 10, high 23.
  const ops::RopeTable t = ops::rope_table(64, 2, 10000.0, true, 40.0, 4096, 32.0, 1.0, 1.0);
  auto freq = [&](int64_t i) { return std::atan2(t.sin[size_t(t.half + i)], t.cos[size_t(t.half + i)]); };
  auto base = [](int64_t i) { return std::pow(10000.0, -2.0 * double(i) / 64.0); };
  CHECK(freq(0) == doctest::Approx(base(0)));
  CHECK(freq(10) == doctest::Approx(base(10)));         // extrapolated: unscaled
  CHECK(freq(23) == doctest::Approx(base(23) / 40.0));  // interpolated: divided by the factor
  CHECK(freq(31) == doctest::Approx(base(31) / 40.0));
  const double ramp = (16.0 - 10.0) / 13.0;  // blended band
  CHECK(freq(16) == doctest::Approx(base(16) * (1 - ramp) + base(16) / 40.0 * ramp));

  const ops::RopeTable plain = ops::rope_table(4, 50, 10000.0, false, 1.0, 1, 32.0, 1.0, 1.0);
  std::vector<float> x = {1.0f, 2.0f, 3.0f, 4.0f};
  const std::vector<int32_t> pos = {37};
  ops::rope(x.data(), pos.data(), 1, 1, 4, 4, plain, false);
  // Interleaved pairs: (x0, x1) rotate by 37 * theta^0, (x2, x3) by 37 * theta^-1/2.
  CHECK(x[0] == doctest::Approx(std::cos(37.0) - 2 * std::sin(37.0)));
  CHECK(x[1] == doctest::Approx(std::sin(37.0) + 2 * std::cos(37.0)));
  CHECK(x[2] == doctest::Approx(3 * std::cos(0.37) - 4 * std::sin(0.37)));
  ops::rope(x.data(), pos.data(), 1, 1, 4, 4, plain, true);
  CHECK(x[0] == doctest::Approx(1.0));
  CHECK(x[3] == doctest::Approx(4.0));
}

TEST_CASE("loops below parallel_worth run on one thread: a small reduction is the same on 1 and 2 threads") {
  CHECK_FALSE(parallel_worth(kParallelMinWork - 1));
  CHECK(parallel_worth(kParallelMinWork));
  // N * V just below the threshold: 2 threads would each sum half the rows, rounding differently.
  const int64_t V = 64, N = (kParallelMinWork - 1) / V;
  const auto logits = random_vector(size_t(N * V), 7, 3.0);
  std::vector<int32_t> targets(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) targets[size_t(n)] = int32_t(n * 7 % V);
  const int before = get_threads();
  double loss[2];
  for (const int threads : {1, 2}) {
    set_threads(threads);
    std::vector<float> work = logits;
    loss[threads - 1] = ops::cross_entropy(work.data(), targets.data(), N, V);
  }
  set_threads(before);
  CHECK(loss[0] == loss[1]);
}
