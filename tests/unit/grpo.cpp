// The GRPO objective against values computed by hand for a small fixed batch, every aggregation, mu > 1 (ratio 1 on
// the first iteration, clipping once logp has moved), its gradient through the model against finite differences, and
// the KL reference's log-probabilities on the inference engine against the training forward's.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "ds/checkpoint.h"
#include "ds/config.h"
#include "ds/engine.h"
#include "ds/error.h"
#include "ds/grpo.h"
#include "ds/grpo_train.h"
#include "ds/inference_model.h"
#include "ds/model.h"
#include "ds/quantize.h"
#include "temp_dir.h"

using namespace ds;
using namespace ds::grpo;

namespace {

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tol = 1e-12) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK_MESSAGE(std::fabs(got[i] - want[i]) <= tol, i << ": " << got[i]);
}

// The fixed batch: sequence 0 has 2 completion tokens and advantage 1, sequence 1 has 3 tokens and advantage -0.5.
const std::vector<int64_t> kLengths = {2, 3};
const std::vector<double> kAdvantage = {1, 1, -0.5, -0.5, -0.5};
const std::vector<double> kOld = {-1.0, -2.0, -0.5, -1.5, -3.0};

// logp moved from kOld so the ratios are 1.25, 1.5 | 0.9, 0.7, 1.5.
std::vector<double> moved() {
  const double rho[] = {1.25, 1.5, 0.9, 0.7, 1.5};
  std::vector<double> logp(kOld);
  for (size_t i = 0; i < logp.size(); ++i) logp[i] += std::log(rho[i]);
  return logp;
}

Result loss_of(const std::vector<double>& logp, Aggregation agg, const Options& o,
               const std::vector<double>& ref = {}) {
  const std::vector<double> scale = token_scales(kLengths, agg, 4);
  return policy_loss({logp, kOld, ref, kAdvantage, scale}, o);
}

}  // namespace

TEST_CASE("grpo: group advantages") {
  // Group (1, 0, 0, 1): mean 0.5, sample std sqrt(1/3). Group (3, 1): mean 2, std sqrt(2). Group (2, 2): no signal.
  const std::vector<double> r = {1, 0, 0, 1};
  const double sd = std::sqrt(1.0 / 3.0), a = 0.5 / sd, b = 0.5 / (sd + 1e-4);
  check_close(advantages(r, 4, ScaleRewards::group, 0), {a, -a, -a, a});
  check_close(advantages(r, 4, ScaleRewards::group), {b, -b, -b, b});  // default eps 1e-4
  const std::vector<double> r2 = {3, 1, 2, 2};
  check_close(advantages(r2, 2, ScaleRewards::group, 0), {1 / std::sqrt(2.0), -1 / std::sqrt(2.0), 0, 0});
  check_close(advantages(r2, 2, ScaleRewards::none), {1, -1, 0, 0});  // Dr. GRPO: centred, not scaled
  CHECK(zero_variance_groups(r2, 2) == 1);
  CHECK(zero_variance_groups(r, 4) == 0);
  CHECK_THROWS_AS(advantages(r, 3, ScaleRewards::group), Error);
  CHECK_THROWS_AS(advantages(r, 1, ScaleRewards::group), Error);
}

TEST_CASE("grpo: token scales of each aggregation") {
  check_close(token_scales(kLengths, Aggregation::grpo, 4), {0.25, 0.25, 1.0 / 6, 1.0 / 6, 1.0 / 6});
  check_close(token_scales(kLengths, Aggregation::dapo, 4), {0.2, 0.2, 0.2, 0.2, 0.2});
  check_close(token_scales(kLengths, Aggregation::dr_grpo, 4), {0.125, 0.125, 0.125, 0.125, 0.125});
  CHECK(parse_aggregation("dr_grpo") == Aggregation::dr_grpo);
  CHECK_THROWS_AS(parse_aggregation("ppo"), Error);
  CHECK_THROWS_AS(parse_scale_rewards("batch"), Error);
}

TEST_CASE("grpo: first iteration (ratio 1), every aggregation") {
  // rho = 1 everywhere, so l_t = -A_t: -1, -1 | 0.5, 0.5, 0.5 and the weights are s_t * A_t.
  const Options o;
  Result r = loss_of(kOld, Aggregation::grpo, o);
  CHECK(r.loss == doctest::Approx((-1.0 + 0.5) / 2));
  check_close(r.weights, {0.25, 0.25, -1.0 / 12, -1.0 / 12, -1.0 / 12});
  CHECK(r.stats.clipped_low + r.stats.clipped_high == 0);
  CHECK(r.stats.ratio == doctest::Approx(5));

  r = loss_of(kOld, Aggregation::dapo, o);
  CHECK(r.loss == doctest::Approx((-2.0 + 1.5) / 5));
  check_close(r.weights, {0.2, 0.2, -0.1, -0.1, -0.1});

  r = loss_of(kOld, Aggregation::dr_grpo, o);
  CHECK(r.loss == doctest::Approx((-2.0 + 1.5) / 8));
  check_close(r.weights, {0.125, 0.125, -0.0625, -0.0625, -0.0625});
}

TEST_CASE("grpo: later iteration, clipping and clip-higher") {
  // Ratios 1.25, 1.5 (A = 1) | 0.9, 0.7, 1.5 (A = -0.5), epsilon 0.2.
  //   epsilon_high 0.28: l = -1.25, -1.28 (clipped high) | 0.45, 0.4 (clipped low), 0.75 (A < 0 and rho > 1: kept)
  //   epsilon_high 0.2:  l = -1.2 (clipped high), -1.2 (clipped high) | as above
  Options o;
  o.epsilon_high = 0.28;
  Result r = loss_of(moved(), Aggregation::grpo, o);
  CHECK(r.loss == doctest::Approx(((-1.25 - 1.28) / 2 + (0.45 + 0.4 + 0.75) / 3) / 2));
  check_close(r.weights, {0.25 * 1.25, 0, -0.45 / 6, 0, -0.75 / 6});
  CHECK(r.stats.clipped_high == 1);
  CHECK(r.stats.clipped_low == 1);

  o.epsilon_high = 0.2;
  r = loss_of(moved(), Aggregation::dapo, o);
  CHECK(r.loss == doctest::Approx((-1.2 - 1.2 + 0.45 + 0.4 + 0.75) / 5));
  check_close(r.weights, {0, 0, -0.45 / 5, 0, -0.75 / 5});
  CHECK(r.stats.clipped_high == 2);
  CHECK(r.stats.ratio == doctest::Approx(1.25 + 1.5 + 0.9 + 0.7 + 1.5));
}

TEST_CASE("grpo: k3 KL to the reference") {
  // ref - logp = ln 2 on every token: KL_t = 2 - ln 2 - 1, and its weight is beta * (2 - 1) per scaled token.
  Options o;
  o.beta = 0.1;
  std::vector<double> ref(kOld);
  for (double& x : ref) x += std::log(2.0);
  const Result r = loss_of(kOld, Aggregation::dapo, o, ref);
  const double kl = 1 - std::log(2.0);
  CHECK(r.stats.kl == doctest::Approx(5 * kl));
  CHECK(r.loss == doctest::Approx((-2.0 + 1.5) / 5 + 0.1 * kl));
  check_close(r.weights, {0.2 * 1.1, 0.2 * 1.1, 0.2 * (-0.5 + 0.1), 0.2 * (-0.5 + 0.1), 0.2 * (-0.5 + 0.1)});
  // KL is 0 at the reference, and the reference is not needed when beta is 0.
  CHECK(loss_of(kOld, Aggregation::dapo, o, kOld).stats.kl == 0);
  CHECK_THROWS_AS(loss_of(kOld, Aggregation::dapo, o), Error);
  CHECK_NOTHROW(loss_of(kOld, Aggregation::dapo, Options{}));
}

TEST_CASE("grpo: weights are -dL/dlogp (finite differences, every variant)") {
  std::vector<double> ref(kOld);
  for (size_t i = 0; i < ref.size(); ++i) ref[i] += 0.3 * double(i) - 0.5;
  for (Aggregation agg : {Aggregation::grpo, Aggregation::dapo, Aggregation::dr_grpo}) {
    Options o;
    o.epsilon_high = 0.28, o.beta = 0.05;
    const std::vector<double> logp = moved();
    const Result r = loss_of(logp, agg, o, ref);
    for (size_t i = 0; i < logp.size(); ++i) {
      std::vector<double> up = logp, down = logp;
      up[i] += 1e-6, down[i] -= 1e-6;
      const double numeric = (loss_of(up, agg, o, ref).loss - loss_of(down, agg, o, ref).loss) / 2e-6;
      CHECK(-r.weights[i] == doctest::Approx(numeric).epsilon(1e-6));
    }
  }
}

TEST_CASE("grpo: packing puts targets only on completion tokens") {
  const std::vector<uint32_t> p0 = {1, 2, 3}, c0 = {4, 5}, p1 = {6}, c1 = {7, 8, 9};
  const std::vector<Sequence> seqs = {{p0, c0}, {p1, c1}};
  const Packed p = pack(seqs, 0);
  CHECK(p.B == 2);
  CHECK(p.Tn == 4);
  CHECK(p.inputs == std::vector<int32_t>{1, 2, 3, 4, 6, 7, 8, 0});
  CHECK(p.targets == std::vector<int32_t>{-1, -1, 4, 5, 7, 8, 9, -1});
  CHECK(p.rows == std::vector<int64_t>{2, 3, 4, 5, 6});
}

TEST_CASE("grpo: gradient of the GRPO loss through the model") {
  // L(theta) = policy_loss(logp(theta)) with fixed old and reference log-probs; the model's backward with the returned
  // weights must give dL/dtheta.
  const ModelConfig config = resolve_model_config("tiny");
  Model<double> model(config);
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (const auto& p : model.param_infos())
    for (int64_t i = 0; i < shape_numel(p.shape); ++i) {
      double& w = model.params()[size_t(p.offset + i)];
      w = p.kind == ParamKind::Matrix ? 0.3 * normal(rng) : p.kind == ParamKind::Vector ? 1 + 0.1 * normal(rng) : 0;
    }
  const std::vector<uint32_t> p0 = {0, 11, 12, 13}, c0 = {20, 21, 22}, p1 = {0, 30}, c1 = {40, 41, 42, 43};
  const std::vector<Sequence> seqs = {{p0, c0}, {p1, c1}};
  const Packed packed = pack(seqs, 2);
  const std::vector<double> advantage = {0.8, 0.8, 0.8, -1.2, -1.2, -1.2, -1.2};
  LossOptions no_aux;
  no_aux.mtp_weight = 0, no_aux.balance_alpha = 0;

  auto logps = [&](const double* weights) {
    model.forward(packed.inputs.data(), packed.targets.data(), packed.B, packed.Tn, no_aux, weights);
    const std::vector<double> all = model.target_logprobs();
    std::vector<double> out;
    for (int64_t row : packed.rows) out.push_back(all[size_t(row)]);
    return out;
  };
  const std::vector<double> logp0 = logps(nullptr);
  // Old log-probs near the current ones (some ratios clip at epsilon 0.2), a reference further away.
  std::vector<double> old(logp0), ref(logp0);
  for (size_t i = 0; i < old.size(); ++i) {
    old[i] += i % 3 == 0 ? 0.4 : -0.05 * double(i);
    ref[i] += 0.2 - 0.1 * double(i);
  }
  const Options o{0.2, 0.28, 0.04};
  const std::vector<int64_t> lengths = {3, 4};
  for (Aggregation agg : {Aggregation::grpo, Aggregation::dapo, Aggregation::dr_grpo}) {
    const std::vector<double> scale = token_scales(lengths, agg, 6);
    auto loss = [&](const std::vector<double>& logp) { return policy_loss({logp, old, ref, advantage, scale}, o); };
    const Result r = loss(logp0);
    CHECK(r.stats.clipped_low + r.stats.clipped_high > 0);
    std::vector<double> weights(packed.inputs.size(), 0.0);
    for (size_t i = 0; i < packed.rows.size(); ++i) weights[size_t(packed.rows[i])] = r.weights[i];
    logps(weights.data());
    model.zero_grads();
    model.backward();
    const std::vector<double> analytic = model.grads();
    for (const auto& p : model.param_infos()) {
      if (p.kind == ParamKind::RouterBias) continue;
      for (int probe = 0; probe < 2; ++probe) {
        const size_t i = size_t(p.offset) + size_t(rng() % uint64_t(shape_numel(p.shape)));
        double& w = model.params()[i];
        const double saved = w;
        w = saved + 1e-6;
        const double up = loss(logps(nullptr)).loss;
        w = saved - 1e-6;
        const double down = loss(logps(nullptr)).loss;
        w = saved;
        const double numeric = (up - down) / 2e-6;
        CHECK_MESSAGE(std::fabs(analytic[i] - numeric) <= 1e-7 + 1e-5 * std::fabs(numeric),
                      p.name << " analytic " << analytic[i] << " numeric " << numeric);
      }
    }
  }
}

TEST_CASE(
    "grpo: the KL reference's log-probs on the engine are the training forward's, at a sampling temperature and "
    "for an FP8 base too") {
  // Larger weights than the training init, so that the log-probs spread far from -log V.
  const ModelConfig config = resolve_model_config("tiny");
  Model<float> base(config);
  base.init_random(3);
  for (const auto& p : base.param_infos())
    if (p.kind == ParamKind::Matrix)
      for (int64_t i = 0; i < shape_numel(p.shape); ++i) base.params()[size_t(p.offset + i)] *= 10.0f;
  const Tokenizer tok = Tokenizer::byte_level();
  TempDir tmp;
  write_model_dir(tmp / "f32", base, tok);
  quant::convert_model(tmp / "f32", tmp / "fp8", {});

  const std::vector<uint32_t> p0 = {0, 11, 12, 13}, c0 = {20, 21, 22}, p1 = {0, 30}, c1 = {40, 41, 42, 43, 44, 45};
  const std::vector<Sequence> seqs = {{p0, c0}, {p1, c1}};
  const Packed packed = pack(seqs, 2);
  LossOptions no_aux;
  no_aux.mtp_weight = 0, no_aux.balance_alpha = 0;
  auto model_logprobs = [&](Model<float>& model) {  // the Model path, which ds-grpo keeps with --fp8
    model.forward(packed.inputs.data(), packed.targets.data(), packed.B, packed.Tn, no_aux);
    const std::vector<double> all = model.target_logprobs();
    std::vector<double> out;
    for (int64_t row : packed.rows) out.push_back(all[size_t(row)]);
    return out;
  };

  const std::vector<double> want = model_logprobs(base);
  REQUIRE(want.size() == 9);
  CHECK(*std::max_element(want.begin(), want.end()) - *std::min_element(want.begin(), want.end()) > 1.0);
  Engine engine(base, tok);
  check_close(reference_logprobs(engine, packed, 1.0), want, 1e-5);

  // At temperature 0.7 both score the distribution the sampler draws from: sharper, so each log-prob moves.
  no_aux.temperature = 0.7;
  const std::vector<double> sharp = model_logprobs(base);
  check_close(reference_logprobs(engine, packed, 0.7), sharp, 1e-5);
  double sharpened = 0;
  for (size_t i = 0; i < want.size(); ++i) sharpened = std::max(sharpened, std::fabs(sharp[i] - want[i]));
  CHECK(sharpened > 0.1);
  no_aux.temperature = 1.0;

  // An FP8 base: its codes on the engine against the Model over the dequantized weights, which quantization moved
  // away from the f32 base's.
  const InferenceModel fp8 = load_inference_model(tmp / "fp8");
  REQUIRE(fp8.weights.fp8());
  LoadedModel dequantized = load_model_dir(tmp / "fp8");
  const std::vector<double> fp8_want = model_logprobs(dequantized.model);
  Engine fp8_engine(fp8.weights, fp8.tokenizer);
  check_close(reference_logprobs(fp8_engine, packed, 1.0), fp8_want, 1e-5);
  double moved = 0;
  for (size_t i = 0; i < want.size(); ++i) moved = std::max(moved, std::fabs(fp8_want[i] - want[i]));
  CHECK(moved > 1e-3);
}
