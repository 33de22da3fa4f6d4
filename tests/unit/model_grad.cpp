// Every parameter gradient of the model, router and MTP included, against central finite differences in double.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "ds/config.h"
#include "ds/kd.h"
#include "ds/model.h"

using namespace ds;

namespace {

// Weights large enough that every path carries a gradient well above rounding noise.
void randomize(Model<double>& model, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (const auto& p : model.param_infos()) {
    double* w = model.params().data() + p.offset;
    for (int64_t i = 0; i < shape_numel(p.shape); ++i) {
      if (p.kind == ParamKind::Matrix)
        w[i] = 0.3 * normal(rng);
      else if (p.kind == ParamKind::Vector)
        w[i] = 1.0 + 0.1 * normal(rng);
      else
        w[i] = 0.1 * normal(rng);
    }
  }
}

// How the checked loss is formed: the model's own (cross-entropy, MTP, balance), or a distillation loss computed
// from the logits of a forward without targets and passed to backward(dlogits).
enum class Head { model, distill };

void check_gradients(const ModelConfig& config, const LossOptions& options, bool weighted = false,
                     const int32_t* positions = nullptr, Head head = Head::model) {
  Model<double> model(config);
  randomize(model, 7);
  const int64_t B = 2, Tn = 6, N = B * Tn;
  std::mt19937_64 rng(11);
  std::vector<int32_t> inputs(N), targets(N);
  for (int64_t n = 0; n < N; ++n) {
    inputs[size_t(n)] = int32_t(rng() % uint64_t(config.vocab_size));
    targets[size_t(n)] = n % 5 == 3 ? -1 : int32_t(rng() % uint64_t(config.vocab_size));  // some positions masked
  }
  // Per-token weights of either sign, as a policy-gradient loss has.
  std::vector<double> weights(static_cast<size_t>(N));
  for (auto& w : weights) w = double(int64_t(rng() % 2001) - 1000) / 1000.0;
  const double* w = weighted ? weights.data() : nullptr;
  std::vector<double> teacher(static_cast<size_t>(N * config.vocab_size)), dlogits(teacher.size());
  for (auto& z : teacher) z = double(int64_t(rng() % 2001) - 1000) / 500.0;
  kd::Options kd;
  kd.divergence = kd::Divergence::jsd, kd.temperature = 1.5, kd.top_k = 5;
  auto loss = [&] {
    if (head == Head::model) return model.forward(inputs.data(), targets.data(), B, Tn, options, w, positions).loss;
    model.forward(inputs.data(), nullptr, B, Tn, options, nullptr, positions);
    return kd::distill_loss(model.logits(), teacher.data(), targets.data(), N, config.vocab_size, kd, 0.7,
                            dlogits.data())
        .total;
  };
  loss();
  model.zero_grads();
  if (head == Head::model)
    model.backward();
  else
    model.backward(dlogits.data());
  const std::vector<double> analytic = model.grads();

  const double eps = 1e-6;
  for (const auto& p : model.param_infos()) {
    if (p.kind == ParamKind::RouterBias) continue;  // not trained by gradients
    const int64_t n = shape_numel(p.shape);
    double max_abs_grad = 0;
    for (int64_t probe = 0; probe < 4; ++probe) {
      const int64_t i = p.offset + int64_t(rng() % uint64_t(n));
      double& w = model.params()[size_t(i)];
      const double saved = w;
      w = saved + eps;
      const double up = loss();
      w = saved - eps;
      const double down = loss();
      w = saved;
      const double numeric = (up - down) / (2 * eps);
      const double a = analytic[size_t(i)];
      max_abs_grad = std::max(max_abs_grad, std::fabs(a));
      CHECK_MESSAGE(std::fabs(a - numeric) <= 1e-6 + 1e-5 * std::fabs(numeric),
                    p.name << "[" << i - p.offset << "] analytic " << a << " numeric " << numeric);
    }
  }
}

ModelConfig tiny() { return resolve_model_config("tiny"); }

}  // namespace

TEST_CASE("gradients: tiny preset (q_lora, noaux_tc sigmoid, groups, MTP, balance loss)") {
  LossOptions options;
  options.mtp_weight = 0.3;
  options.balance_alpha = 0.05;
  check_gradients(tiny(), options);
}

TEST_CASE("gradients: no q_lora, tied embeddings, softmax greedy routing, no renormalisation") {
  ModelConfig c = tiny();
  c.q_lora_rank = 0;
  c.tie_word_embeddings = true;
  c.topk_method = TopkMethod::Greedy;
  c.scoring_func = ScoringFunc::Softmax;
  c.norm_topk_prob = false;
  c.n_group = 1, c.topk_group = 1;
  c.num_nextn_predict_layers = 0;
  c.n_shared_experts = 0;
  check_gradients(c, {0.0, 0.02});
}

TEST_CASE("gradients: group-limited greedy (V2), YaRN rope, two MTP depths") {
  ModelConfig c = tiny();
  c.topk_method = TopkMethod::GroupLimitedGreedy;
  c.scoring_func = ScoringFunc::Softmax;
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 16.0;
  c.rope_scaling.yarn = true;
  c.rope_scaling.factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 4;
  c.rope_scaling.mscale = 0.707;
  c.rope_scaling.mscale_all_dim = 0.707;
  c.num_nextn_predict_layers = 2;
  check_gradients(c, {0.5, 0.0});
}

TEST_CASE("gradients: dense model (n_routed_experts = 0)") {
  ModelConfig c = tiny();
  c.n_routed_experts = 0;
  c.num_experts_per_tok = 0;
  c.n_shared_experts = 0;
  c.num_nextn_predict_layers = 1;
  check_gradients(c, {0.3, 0.0});
}

TEST_CASE("gradients: per-token weighted loss (the policy-gradient form)") {
  ModelConfig c = tiny();
  c.num_nextn_predict_layers = 0;
  check_gradients(c, {0.0, 0.0}, true);
}

TEST_CASE("gradients: per-token weighted loss at a sampling temperature (GRPO's log-probs at temperature 0.7)") {
  ModelConfig c = tiny();
  c.num_nextn_predict_layers = 0;
  LossOptions options{0.0, 0.0};
  options.temperature = 0.7;
  check_gradients(c, options, true);
}

TEST_CASE("gradients: packed documents (positions restart, attention and MTP stay within a document)") {
  const std::vector<int32_t> positions = {0, 1, 2, 3, 0, 1, 0, 1, 0, 1, 2, 3};  // B = 2 rows of 6
  check_gradients(tiny(), {0.3, 0.02}, false, positions.data());
}

TEST_CASE("gradients: a distillation loss on the logits through backward(dlogits), packed") {
  const std::vector<int32_t> positions = {0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4, 0};
  check_gradients(resolve_model_config("tiny-dense"), {0.0, 0.0}, false, positions.data(), Head::distill);
}

TEST_CASE("an MTP weight of 0 skips the MTP modules: same main loss, no MTP gradient or load") {
  const ModelConfig config = resolve_model_config("tiny");
  REQUIRE(config.num_nextn_predict_layers > 0);
  Model<double> model(config);
  randomize(model, 3);
  const int64_t B = 2, Tn = 6, N = B * Tn;
  std::vector<int32_t> inputs(N), targets(N);
  for (int64_t n = 0; n < N; ++n) inputs[n] = int32_t(n * 7 % 50), targets[n] = int32_t(n * 11 % 50);
  LossOptions with, without;
  with.mtp_weight = 0.3;
  without.mtp_weight = 0;
  const ForwardStats full = model.forward(inputs.data(), targets.data(), B, Tn, with);
  model.zero_grads();
  const ForwardStats main = model.forward(inputs.data(), targets.data(), B, Tn, without);
  model.backward();
  CHECK(main.main_loss == full.main_loss);
  CHECK(main.loss == main.main_loss + main.balance_loss);
  CHECK(main.mtp_loss == 0);
  CHECK(full.mtp_loss > 0);
  CHECK(main.expert_load.size() < full.expert_load.size());
  for (const ParamInfo& p : model.param_infos()) {
    if (p.name.find("layers." + std::to_string(config.num_hidden_layers) + ".") == std::string::npos) continue;
    for (int64_t i = 0; i < shape_numel(p.shape); ++i) CHECK(model.grads()[size_t(p.offset + i)] == 0.0);
  }
  model.update_router_bias(main.expert_load, 0.001);  // the main layers' loads alone are accepted
  model.update_router_bias(full.expert_load, 0.001);
}
