// FP8 training emulation: the round trip per tile, and a model whose GEMMs run on rounded operands.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "ds/config.h"
#include "ds/fp8.h"
#include "ds/model.h"
#include "ds/ops.h"

using namespace ds;

TEST_CASE("fp8 round trip: tile maxima survive exactly, others within e4m3's precision") {
  const int64_t rows = 130, cols = 260;  // partial tiles on both edges
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> x(size_t(rows * cols)), y(x.size()), z(x.size()), t(x.size()), ty(x.size());
  for (float& v : x) v = normal(rng);
  for (auto tiles : {ops::Fp8Tiles::Rows, ops::Fp8Tiles::Columns, ops::Fp8Tiles::Blocks}) {
    ops::fp8_round_trip(y.data(), x.data(), rows, cols, tiles);
    ops::fp8_round_trip(z.data(), y.data(), rows, cols, tiles);
    CHECK(z == y);  // rounding again changes nothing
    size_t outside = 0;
    for (size_t i = 0; i < x.size(); ++i)
      outside += std::fabs(x[i]) > 0.05f && std::fabs(y[i] - x[i]) > std::fabs(x[i]) * 0.0625f;
    CHECK(outside == 0);
  }
  // Row tiles: each row's largest magnitude in its 128 group maps to 448 and back exactly.
  ops::fp8_round_trip(y.data(), x.data(), rows, cols, ops::Fp8Tiles::Rows);
  float amax = 0;
  size_t at = 0;
  for (size_t c = 0; c < 128; ++c)
    if (std::fabs(x[c]) > amax) amax = std::fabs(x[c]), at = c;
  CHECK(y[at] == x[at]);
  // Column tiles are row tiles of the transpose.
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[size_t(c * rows + r)] = x[size_t(r * cols + c)];
  ops::fp8_round_trip(ty.data(), t.data(), cols, rows, ops::Fp8Tiles::Rows);
  ops::fp8_round_trip(y.data(), x.data(), rows, cols, ops::Fp8Tiles::Columns);
  size_t differ = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) differ += y[size_t(r * cols + c)] != ty[size_t(c * rows + r)];
  CHECK(differ == 0);
  // An all-zero weight block stays zero (no division by zero).
  std::vector<float> zeros(128 * 128, 0.0f), out(zeros.size(), 1.0f);
  ops::fp8_round_trip(out.data(), zeros.data(), 128, 128, ops::Fp8Tiles::Blocks);
  CHECK(out == zeros);
}

TEST_CASE("a model under FP8 emulation stays close to full precision but is not identical") {
  const ModelConfig c = resolve_model_config("tiny");
  Model<float> model(c);
  model.init_random(3);
  std::vector<int32_t> inputs(16), targets(16);
  for (int i = 0; i < 16; ++i) inputs[size_t(i)] = 7 + i * 11 % 200, targets[size_t(i)] = 7 + (i + 1) * 11 % 200;
  const double full = model.forward(inputs.data(), targets.data(), 2, 8).main_loss;
  model.set_fp8(true);
  const double fp8 = model.forward(inputs.data(), targets.data(), 2, 8).main_loss;
  model.zero_grads();
  model.backward();
  double norm = 0;
  for (float g : model.grads()) norm += double(g) * g;
  CHECK(fp8 != full);
  CHECK(std::fabs(fp8 - full) < 0.01 * full);
  CHECK(std::isfinite(norm));
  CHECK(norm > 0);
  Model<double> reference(c);
  CHECK_THROWS(reference.set_fp8(true));
}
