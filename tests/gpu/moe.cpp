// The router kernel against route_token, the CPU's routing, for V3's sigmoid group-limited top-k with the correction
// bias and for the softmax routings of V2 and V2-Lite.
#include <cmath>

#include "cuda_ops.h"
#include "ds/config.h"
#include "ds/ops.h"
#include "gpu_test.h"
#include "routing.h"

using namespace ds;
using namespace ds::cuda;
using namespace ds::gpu_test;

namespace {

void check_routing(const ModelConfig& c, bool with_bias) {
  Stream stream;
  const int64_t N = 300, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const std::vector<float> logits = random_floats(static_cast<size_t>(N * E), 1, 2.0f);
  const std::vector<float> bias = random_floats(static_cast<size_t>(E), 2, 0.1f);
  std::vector<float> scores = logits, weights(static_cast<size_t>(N * K));
  std::vector<int32_t> chosen(static_cast<size_t>(N * K));
  if (c.scoring_func == ScoringFunc::Sigmoid)
    for (float& s : scores) s = 1.0f / (1.0f + std::exp(-s));
  else
    ops::softmax_rows(scores.data(), N, E);
  for (int64_t n = 0; n < N; ++n)
    route_token(c, &scores[size_t(n * E)], with_bias ? bias.data() : nullptr, &chosen[size_t(n * K)],
                &weights[size_t(n * K)]);

  const DeviceBuffer<float> gl = to_device(logits, stream), gb = to_device(bias, stream);
  DeviceBuffer<float> gs(static_cast<size_t>(N * E)), gw(static_cast<size_t>(N * K));
  DeviceBuffer<int32_t> gc(static_cast<size_t>(N * K));
  route(gc.data(), gw.data(), gs.data(), gl.data(), with_bias ? gb.data() : nullptr, N, c, stream);
  check_close(to_host(gs, stream), scores, 1e-6, 1e-7);
  CHECK(to_host(gc, stream) == chosen);
  check_close(to_host(gw, stream), weights, 1e-5);
}

}  // namespace

TEST_CASE("V3 routing: sigmoid, correction bias, top-4 of 8 groups, top-8 of 256, renormalised x 2.5") {
  ModelConfig c;
  c.n_routed_experts = 256, c.num_experts_per_tok = 8, c.n_group = 8, c.topk_group = 4;
  c.topk_method = TopkMethod::NoauxTc, c.scoring_func = ScoringFunc::Sigmoid;
  c.norm_topk_prob = true, c.routed_scaling_factor = 2.5;
  check_routing(c, true);
  check_routing(c, false);
}

TEST_CASE("V2 routing: softmax, best-member group scores, top-6 without renormalisation x 16") {
  ModelConfig c;
  c.n_routed_experts = 160, c.num_experts_per_tok = 6, c.n_group = 8, c.topk_group = 3;
  c.topk_method = TopkMethod::GroupLimitedGreedy, c.scoring_func = ScoringFunc::Softmax;
  c.norm_topk_prob = false, c.routed_scaling_factor = 16.0;
  check_routing(c, false);
}

TEST_CASE("V2-Lite routing: plain top-6 of 64 softmax scores") {
  ModelConfig c;
  c.n_routed_experts = 64, c.num_experts_per_tok = 6, c.n_group = 1, c.topk_group = 1;
  c.topk_method = TopkMethod::Greedy, c.scoring_func = ScoringFunc::Softmax;
  c.norm_topk_prob = false, c.routed_scaling_factor = 1.0;
  check_routing(c, false);
}

TEST_CASE("routing refuses more experts than the kernel holds") {
  Stream stream;
  ModelConfig c;
  c.n_routed_experts = 512, c.num_experts_per_tok = 8, c.n_group = 8, c.topk_group = 4;
  CHECK_THROWS(route(nullptr, nullptr, nullptr, nullptr, nullptr, 1, c, stream));
}

TEST_CASE("token permutation: expert-major rows in token order, gathered and combined back") {
  Stream stream;
  const int64_t N = 150, K = 3, E = 40, d = 70;
  std::vector<int32_t> chosen(static_cast<size_t>(N * K));
  for (int64_t i = 0; i < N * K; ++i) chosen[size_t(i)] = int32_t((i * 7 + i / K * 13) % E);  // expert 39 unused
  for (int32_t& c : chosen)
    if (c == 39) c = 0;
  const std::vector<float> x = random_floats(static_cast<size_t>(N * d), 5), w = random_floats(size_t(N * K), 6);

  // The CPU's plan (Moe::forward's per-expert row lists) and the combine it implies.
  std::vector<int32_t> offsets(size_t(E + 1), 0), source, row_of(size_t(N * K));
  for (int64_t e = 0; e < E; ++e) {
    offsets[size_t(e)] = int32_t(source.size());
    for (int64_t i = 0; i < N * K; ++i)
      if (chosen[size_t(i)] == e) {
        row_of[size_t(i)] = int32_t(source.size());
        source.push_back(int32_t(i / K));
      }
  }
  offsets[size_t(E)] = int32_t(source.size());
  std::vector<float> xe(size_t(N * K * d)), y(size_t(N * d), 1.0f);
  for (size_t r = 0; r < source.size(); ++r)
    for (int64_t c = 0; c < d; ++c) xe[r * size_t(d) + size_t(c)] = x[size_t(source[r] * d + c)];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < d; ++c)
      for (int64_t k = 0; k < K; ++k)
        y[size_t(n * d + c)] += w[size_t(n * K + k)] * xe[size_t(row_of[size_t(n * K + k)] * d + c)];

  const DeviceBuffer<int32_t> gchosen = to_device(chosen, stream);
  DeviceBuffer<int32_t> goffsets(size_t(E + 1)), gsource(size_t(N * K)), grow_of(size_t(N * K));
  moe_plan(goffsets.data(), gsource.data(), grow_of.data(), gchosen.data(), N, K, E, stream);
  CHECK(to_host(goffsets, stream) == offsets);
  CHECK(to_host(gsource, stream) == source);
  CHECK(to_host(grow_of, stream) == row_of);

  const DeviceBuffer<float> gx = to_device(x, stream), gw = to_device(w, stream);
  DeviceBuffer<float> gxe(xe.size()), gy = to_device(std::vector<float>(y.size(), 1.0f), stream);
  moe_gather(gxe.data(), gx.data(), gsource.data(), N * K, d, stream);
  CHECK(to_host(gxe, stream) == xe);
  moe_combine(gy.data(), gxe.data(), grow_of.data(), gw.data(), N, K, d, stream);
  check_close(to_host(gy, stream), y, 1e-6, 1e-6);
}
