// The bucketed gradient reduction's parts that one process can check: how buckets are cut from the parameters and
// split over the ZeRO parts, and the backward's report of final gradient ranges that starts their reduction.
// Bucketed against whole-array reduction on several ranks: tests/unit/dist_train.cpp, tests/e2e/mpi_pretrain.sh.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "ds/comm.h"
#include "ds/config.h"
#include "ds/error.h"
#include "ds/model.h"
#include "ds/optim.h"

using namespace ds;

namespace {

std::vector<ParamInfo> params_of_sizes(const std::vector<int64_t>& sizes) {
  std::vector<ParamInfo> params;
  int64_t offset = 0;
  for (int64_t n : sizes) {
    params.push_back({fmt::format("p{}", params.size()), {n}, offset, ParamKind::Matrix});
    offset += n;
  }
  return params;
}

struct Report {
  int64_t begin, end;
  std::vector<float> grads;  // the range's gradients when it was reported
};

// One forward and backward of model on random tokens, recording each range the backward reports final.
std::vector<Report> backward_reports(Model<float>& model, const LossOptions& loss, bool dlogits) {
  const ModelConfig& c = model.config();
  const int64_t B = 2, Tn = 8, N = B * Tn;
  std::mt19937 rng(5);
  std::vector<int32_t> inputs(static_cast<size_t>(N)), targets(static_cast<size_t>(N));
  for (auto& t : inputs) t = int32_t(rng() % uint32_t(c.vocab_size));
  for (auto& t : targets) t = int32_t(rng() % uint32_t(c.vocab_size));
  std::vector<Report> reports;
  const GradReady record = [&](int64_t begin, int64_t end) {
    reports.push_back({begin, end, {model.grads().begin() + begin, model.grads().begin() + end}});
  };
  model.zero_grads();
  if (dlogits) {
    model.forward(inputs.data(), nullptr, B, Tn, loss);
    std::vector<float> d(static_cast<size_t>(N * c.vocab_size));
    for (auto& x : d) x = float(int(rng() % 201) - 100) / 1000.0f;
    model.backward(d.data(), record);
  } else {
    model.forward(inputs.data(), targets.data(), B, Tn, loss);
    model.backward(record);
  }
  return reports;
}

}  // namespace

TEST_CASE("gradient buckets are cut at parameter boundaries from the end of the array") {
  const auto params = params_of_sizes({10, 5, 5, 20, 3});  // offsets 0, 10, 15, 20, 40; 43 values
  using B = std::vector<GradBucket>;
  CHECK(plan_grad_buckets(params, 43, 8) == B{{20, 43}, {10, 20}, {0, 10}});
  CHECK(plan_grad_buckets(params, 43, 1) == B{{40, 43}, {20, 40}, {15, 20}, {10, 15}, {0, 10}});
  CHECK(plan_grad_buckets(params, 43, 11) == B{{20, 43}, {0, 20}});
  CHECK(plan_grad_buckets(params, 43, 24) == B{{15, 43}, {0, 15}});  // the last bucket may be smaller
  CHECK(plan_grad_buckets(params, 43, 1000) == B{{0, 43}});
  // A smaller first bucket (DDP's), then the usual size.
  CHECK(plan_grad_buckets(params, 43, 11, 2) == B{{40, 43}, {20, 40}, {0, 20}});
  CHECK(plan_grad_buckets(params, 43, 11, 1000) == B{{20, 43}, {0, 20}});

  // A real model: contiguous buckets from the end to the start, each at least the size asked but the last.
  const Model<float> model(resolve_model_config("tiny"));
  const auto size = int64_t(model.params().size());
  const int64_t elems = size / 10;
  const std::vector<GradBucket> buckets = plan_grad_buckets(model.param_infos(), size, elems);
  REQUIRE(buckets.size() > 3);
  CHECK(buckets.front().end == size);
  CHECK(buckets.back().begin == 0);
  for (size_t i = 0; i + 1 < buckets.size(); ++i) {
    CHECK(buckets[i].begin == buckets[i + 1].end);
    CHECK(buckets[i].size() >= elems);
  }
}

TEST_CASE("a bucket's reduce-scatter counts are its overlap with each rank's part") {
  const std::vector<int64_t> parts = dist::split_evenly(10, 3);  // [0, 4), [4, 7), [7, 10)
  CHECK(bucket_counts({2, 8}, parts) == std::vector<int64_t>{2, 3, 1});
  CHECK(bucket_counts({0, 3}, parts) == std::vector<int64_t>{3, 0, 0});
  CHECK(bucket_counts({4, 7}, parts) == std::vector<int64_t>{0, 3, 0});
  CHECK(bucket_counts({7, 10}, parts) == std::vector<int64_t>{0, 0, 3});
  CHECK(bucket_counts({0, 10}, parts) == parts);
  CHECK(bucket_counts({3, 3}, parts) == std::vector<int64_t>{0, 0, 0});
}

TEST_CASE("the backward reports every gradient once, final, from the end of the array to its start") {
  ModelConfig tied = resolve_model_config("tiny");
  tied.tie_word_embeddings = true;
  struct Case {
    const char* name;
    ModelConfig config;
    LossOptions loss;
    bool dlogits;
  };
  const Case cases[] = {
      {"with MTP", resolve_model_config("tiny"), {.mtp_weight = 0.3, .balance_alpha = 0.01}, false},
      {"MTP skipped", resolve_model_config("tiny"), {.mtp_weight = 0}, false},
      {"tied embeddings", tied, {}, false},
      {"backward(dlogits)", resolve_model_config("tiny"), {}, true},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    Model<float> model(c.config);
    model.init_random(1);
    const std::vector<Report> reports = backward_reports(model, c.loss, c.dlogits);
    // One range per layer: embeddings, blocks, final norm with head, MTP modules.
    CHECK(reports.size() == size_t(c.config.num_hidden_layers + 2 + c.config.num_nextn_predict_layers));
    int64_t next_end = int64_t(model.grads().size());
    bool nonzero = false;
    for (const Report& r : reports) {
      CHECK(r.end == next_end);
      CHECK(r.begin < r.end);
      next_end = r.begin;
      // Nothing after the report changed these gradients.
      CHECK(std::equal(r.grads.begin(), r.grads.end(), model.grads().begin() + r.begin));
      for (float g : r.grads) nonzero = nonzero || g != 0.0f;
    }
    CHECK(next_end == 0);
    CHECK(nonzero);
  }
}

TEST_CASE("one process has no buckets and reduces nothing") {
  const Model<float> model(resolve_model_config("tiny"));
  const auto size = int64_t(model.params().size());
  AdamW optimizer(model.param_infos(), size, {}, nullptr, 0.001);
  std::vector<float> grads(static_cast<size_t>(size), 3.0f);
  CHECK(!optimizer.grad_hook(grads));
  const double norm = optimizer.reduce_grads(grads, 0);
  CHECK(norm == doctest::Approx(3.0 * std::sqrt(double(size))));
  CHECK(grads[0] == 3.0f);
  CHECK_THROWS_AS(AdamW(model.param_infos(), size, {}, nullptr, -1), Error);
}
