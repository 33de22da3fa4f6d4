// The device training model against Model<float> on the CPU, on random tiny models (MoE with two MTP depths and
// q_lora, the variant without q_lora with tied embeddings, YaRN and softmax routing, and a dense model with MTP):
// losses, gradients and expert loads of one forward and backward (with the sequence-wise balance loss too), the
// device AdamW on the CPU's gradients, a few whole training steps, FP8 GEMMs at sizes that are multiples of 128, RL's
// weighted loss at a temperature over packed documents, and distillation's backward of a loss of the logits.
//
// Both sides start from the same BF16-representable parameters. The device rounds activations to BF16 at every GEMM
// input (relative error 2^-9 each). On the CPU, perturbing these models' weights by 2^-8 moves their losses by under
// 1e-3 relative and their gradients by under 1% (2% in the worst tensor), so the tolerances below (1% on losses, 3%
// on the whole gradient, 10% per tensor) leave room for the device's rounding and summation order while a missing
// or wrong term (an error of order one in some tensor) still fails. The router's BF16 logits may move a token whose
// best experts nearly tie to another expert; one moved token changes the routed experts' gradients by tens of
// percent, so where the loads differ only the whole gradient is compared, within 30%.
#include <algorithm>
#include <cmath>
#include <string>

#include "../unit/random_model.h"
#include "cuda_model.h"
#include "ds/bf16.h"
#include "ds/config.h"
#include "ds/error.h"
#include "ds/model.h"
#include "ds/optim.h"
#include "gpu_test.h"

using namespace ds;

namespace {

struct Batch {
  int64_t B = 0, Tn = 0;
  std::vector<int32_t> inputs, targets;
};

// B rows of Tn tokens, each target the next token of its row; two positions carry no loss.
Batch make_batch(int64_t vocab, int64_t B, int64_t Tn, uint64_t seed) {
  const std::vector<uint32_t> t = test::random_tokens(size_t(B * (Tn + 1)), seed, vocab);
  Batch batch{B, Tn, std::vector<int32_t>(size_t(B * Tn)), std::vector<int32_t>(size_t(B * Tn))};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Tn; ++i) {
      batch.inputs[size_t(b * Tn + i)] = int32_t(t[size_t(b * (Tn + 1) + i)]);
      batch.targets[size_t(b * Tn + i)] = int32_t(t[size_t(b * (Tn + 1) + i + 1)]);
    }
  batch.targets[3] = -1;
  batch.targets[size_t(B * Tn - 2)] = -1;
  return batch;
}

// Matrices at 3 times init_random's scale: attention and routing far from uniform, and the model not so chaotic that
// BF16 rounding changes its gradients by more than the tolerances above (at random_model's default of 15, a 2^-8
// perturbation moves them by 5-10%).
Model<float> bf16_model(const ModelConfig& c, uint64_t seed) {
  Model<float> model = test::random_model(c, seed, 3.0f);
  for (float& x : model.params()) x = bf16_to_float(float_to_bf16(x));
  return model;
}

double norm(const float* x, size_t n) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += double(x[i]) * double(x[i]);
  return std::sqrt(sum);
}
// |got - want| / |want| over n values (L2).
double relative_error(const float* got, const float* want, size_t n) {
  double diff = 0;
  for (size_t i = 0; i < n; ++i) diff += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
  return std::sqrt(diff) / std::max(norm(want, n), 1e-30);
}
double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  return relative_error(got.data(), want.data(), got.size());
}

void check_loss(double gpu, double cpu, double rel, const char* what) {
  MESSAGE(std::string(what) << ": device " << gpu << ", CPU " << cpu);
  CHECK(std::isfinite(gpu));
  CHECK(std::fabs(gpu - cpu) <= rel * std::fabs(cpu) + 1e-6);
}

// Assignments routed to another expert than on the CPU; true when none.
bool check_loads(const ForwardStats& gpu, const ForwardStats& cpu, int64_t tokens, int64_t top_k) {
  REQUIRE(gpu.expert_load.size() == cpu.expert_load.size());
  int64_t moved = 0;
  for (size_t l = 0; l < cpu.expert_load.size(); ++l) {
    REQUIRE(gpu.expert_load[l].size() == cpu.expert_load[l].size());
    int64_t total = 0;
    for (size_t e = 0; e < cpu.expert_load[l].size(); ++e) {
      moved += std::llabs(gpu.expert_load[l][e] - cpu.expert_load[l][e]);
      total += gpu.expert_load[l][e];
    }
    CHECK(total == tokens * top_k);
  }
  moved /= 2;
  const int64_t assignments = int64_t(cpu.expert_load.size()) * tokens * top_k;
  MESSAGE("expert loads: " << moved << " of " << assignments << " assignments moved");
  CHECK(moved <= std::max<int64_t>(4, assignments / 25));
  return moved == 0;
}

// The whole gradient within 3% of the CPU's and each tensor with a gradient within 10%, or where the routing moved,
// the whole within 30%. Router biases get no gradient on either side.
void check_gradients(const std::vector<ParamInfo>& infos, const std::vector<float>& gpu, const std::vector<float>& cpu,
                     bool same_routing) {
  const double whole = relative_error(gpu, cpu);
  MESSAGE("gradient: relative error " << whole << " of norm " << norm(cpu.data(), cpu.size()));
  CHECK(norm(cpu.data(), cpu.size()) > 0);
  CHECK(whole < (same_routing ? 0.03 : 0.3));
  double worst = 0;
  std::string worst_name;
  for (const ParamInfo& p : infos) {
    const size_t n = size_t(shape_numel(p.shape));
    const float *g = gpu.data() + p.offset, *w = cpu.data() + p.offset;
    if (p.kind == ParamKind::RouterBias) {
      CHECK(norm(g, n) == 0);
      continue;
    }
    if (!same_routing || norm(w, n) == 0) continue;  // zero: an expert no token chose, or a skipped MTP module
    const double e = relative_error(g, w, n);
    if (e > worst) worst = e, worst_name = p.name;
    if (e > 0.1) FAIL_CHECK(p.name << ": relative error " << e);
  }
  if (same_routing) MESSAGE("worst tensor: " << worst_name << " at " << worst);
}

ModelConfig moe_config() {
  ModelConfig c = resolve_model_config("tiny");
  c.num_nextn_predict_layers = 2;
  return c;
}
ModelConfig dense_config() {
  ModelConfig c = resolve_model_config("tiny-dense");
  c.num_nextn_predict_layers = 1;
  return c;
}

// Multiples of 128 wherever an FP8 GEMM sees a size, so every eligible linear layer runs in FP8.
ModelConfig fp8_config() {
  ModelConfig c = resolve_model_config("tiny");
  c.hidden_size = 128, c.intermediate_size = 256, c.moe_intermediate_size = 128;
  c.q_lora_rank = 128, c.kv_lora_rank = 128, c.qk_nope_head_dim = 64, c.qk_rope_head_dim = 128, c.v_head_dim = 128;
  return c;
}

void check_forward_backward(const ModelConfig& c, int64_t B, int64_t Tn) {
  Model<float> cpu = bf16_model(c, 7);
  cuda::TrainModel gpu(cpu);
  const Batch batch = make_batch(c.vocab_size, B, Tn, 11);
  const LossOptions options;
  const ForwardStats want = cpu.forward(batch.inputs.data(), batch.targets.data(), B, Tn, options);
  const ForwardStats got = gpu.forward(batch.inputs.data(), batch.targets.data(), B, Tn, options);
  CHECK(got.tokens == want.tokens);
  check_loss(got.main_loss, want.main_loss, 0.01, "main loss");
  check_loss(got.mtp_loss, want.mtp_loss, 0.01, "MTP loss");
  check_loss(got.loss, want.loss, 0.01, "loss");
  const bool same_routing = check_loads(got, want, B * Tn, c.num_experts_per_tok);
  cpu.zero_grads();
  cpu.backward();
  gpu.zero_grads();
  gpu.backward();
  check_gradients(cpu.param_infos(), gpu.grads(), cpu.grads(), same_routing);
  CHECK(gpu.params() == cpu.params());  // a forward and backward change no parameter
}

}  // namespace

TEST_CASE("device model: losses, expert loads and gradients match the CPU model") {
  SUBCASE("MoE, q_lora, two MTP depths") { check_forward_backward(moe_config(), 2, 16); }
  SUBCASE("MoE, q_proj, tied embeddings, YaRN, softmax group-limited routing") {
    check_forward_backward(test::tiny_variant(), 3, 11);
  }
  SUBCASE("dense with an MTP depth") { check_forward_backward(dense_config(), 2, 13); }
}

TEST_CASE("device model: MTP weight 0 skips the MTP modules as the CPU does") {
  const ModelConfig c = moe_config();
  Model<float> cpu = bf16_model(c, 3);
  cuda::TrainModel gpu(cpu);
  const Batch batch = make_batch(c.vocab_size, 2, 9, 5);
  LossOptions options;
  options.mtp_weight = 0;
  const ForwardStats want = cpu.forward(batch.inputs.data(), batch.targets.data(), 2, 9, options);
  const ForwardStats got = gpu.forward(batch.inputs.data(), batch.targets.data(), 2, 9, options);
  CHECK(got.mtp_loss == 0);
  CHECK(got.expert_load.size() == want.expert_load.size());  // the main model's MoE layers only
  check_loss(got.loss, want.loss, 0.01, "loss");
  cpu.zero_grads(), gpu.zero_grads();
  cpu.backward(), gpu.backward();
  check_gradients(cpu.param_infos(), gpu.grads(), cpu.grads(), check_loads(got, want, 18, c.num_experts_per_tok));
}

TEST_CASE("device AdamW: clipping, moments, bias corrections and decay equal ds::AdamW on the same gradients") {
  const ModelConfig c = moe_config();
  Model<float> cpu = bf16_model(c, 5);
  cuda::TrainModel gpu(cpu);
  const Batch batch = make_batch(c.vocab_size, 2, 12, 9);
  const std::vector<float> start = cpu.params();
  AdamWOptions options;
  options.weight_decay = 0.1;
  AdamW cpu_opt(cpu.param_infos(), int64_t(start.size()), options);
  cuda::DeviceAdamW gpu_opt(gpu, options);
  for (int step = 0; step < 3; ++step) {
    cpu.zero_grads();
    cpu.forward(batch.inputs.data(), batch.targets.data(), 2, 12);
    cpu.backward();
    gpu.set_grads(cpu.grads());
    const double max_norm = step == 1 ? 1e9 : 0.5 * norm(cpu.grads().data(), cpu.grads().size());  // clip, or not
    const double want_norm = cpu_opt.reduce_grads(cpu.grads(), max_norm);
    const double got_norm = gpu_opt.reduce_grads(max_norm);
    CHECK(std::fabs(got_norm - want_norm) <= 1e-9 * want_norm);
    CHECK(relative_error(gpu.grads(), cpu.grads()) < 1e-6);
    cpu_opt.step(cpu.params(), cpu.grads(), 1e-2);
    gpu_opt.step(1e-2);
    CHECK(gpu_opt.steps() == cpu_opt.steps());
  }
  const std::vector<float> got = gpu.params(), want = cpu.params();
  std::vector<float> got_delta(got.size()), want_delta(want.size());
  for (size_t i = 0; i < got.size(); ++i) got_delta[i] = got[i] - start[i], want_delta[i] = want[i] - start[i];
  MESSAGE("update: relative error " << relative_error(got_delta, want_delta));
  CHECK(relative_error(got_delta, want_delta) < 1e-4);
  CHECK(relative_error(gpu_opt.m(), cpu_opt.m()) < 1e-5);
  CHECK(relative_error(gpu_opt.v(), cpu_opt.v()) < 1e-5);
  for (const ParamInfo& p : cpu.param_infos())  // router biases are not moved by gradients
    if (p.kind == ParamKind::RouterBias)
      for (int64_t i = p.offset; i < p.offset + shape_numel(p.shape); ++i) CHECK(got[size_t(i)] == start[size_t(i)]);

  // The aux-loss-free rule moves the biases identically from the same loads.
  const ForwardStats stats = cpu.forward(batch.inputs.data(), batch.targets.data(), 2, 12);
  gpu.set_params(cpu.params());
  const std::vector<float> before = cpu.params();
  cpu.update_router_bias(stats.expert_load, 1e-3);
  gpu.update_router_bias(stats.expert_load, 1e-3);
  CHECK(gpu.params() == cpu.params());
  CHECK(cpu.params() != before);

  // Checkpoint round trip: the moments and step count come back as they were.
  cuda::DeviceAdamW resumed(gpu, options);
  resumed.load_state(cpu_opt.m(), cpu_opt.v());
  resumed.set_steps(cpu_opt.steps());
  CHECK(resumed.m() == cpu_opt.m());
  CHECK(resumed.v() == cpu_opt.v());
  resumed.reset();
  CHECK(resumed.steps() == 0);
  const std::vector<float> cleared = resumed.m();
  CHECK(norm(cleared.data(), cleared.size()) == 0);
}

TEST_CASE("device training steps track the CPU's") {
  const ModelConfig c = moe_config();
  Model<float> cpu = bf16_model(c, 13);
  cuda::TrainModel gpu(cpu);
  AdamWOptions options;
  AdamW cpu_opt(cpu.param_infos(), int64_t(cpu.params().size()), options);
  cuda::DeviceAdamW gpu_opt(gpu, options);
  for (int step = 0; step < 4; ++step) {
    CAPTURE(step);
    const Batch batch = make_batch(c.vocab_size, 2, 16, 20 + uint64_t(step));
    cpu.zero_grads(), gpu.zero_grads();
    const ForwardStats want = cpu.forward(batch.inputs.data(), batch.targets.data(), 2, 16);
    const ForwardStats got = gpu.forward(batch.inputs.data(), batch.targets.data(), 2, 16);
    check_loss(got.loss, want.loss, 0.03, "loss");
    cpu.backward(), gpu.backward();
    const double want_norm = cpu_opt.reduce_grads(cpu.grads(), 1.0), got_norm = gpu_opt.reduce_grads(1.0);
    CHECK(std::fabs(got_norm - want_norm) <= 0.05 * want_norm);
    cpu_opt.step(cpu.params(), cpu.grads(), 3e-3);
    gpu_opt.step(3e-3);
    // Each side balances from its own loads, as a run on either device would.
    cpu.update_router_bias(want.expert_load, 1e-3);
    gpu.update_router_bias(got.expert_load, 1e-3);
  }
}

namespace {

void check_fp8(const ModelConfig& c) {
  Model<float> cpu = bf16_model(c, 17);
  cuda::TrainModel gpu(cpu);
  const Batch batch = make_batch(c.vocab_size, 2, 24, 19);
  const ForwardStats bf16 = gpu.forward(batch.inputs.data(), batch.targets.data(), 2, 24);
  gpu.zero_grads();
  gpu.backward();
  const std::vector<float> bf16_grads = gpu.grads();

  gpu.set_fp8(true);
  cpu.set_fp8(true);
  const ForwardStats fp8 = gpu.forward(batch.inputs.data(), batch.targets.data(), 2, 24);
  const ForwardStats emulated = cpu.forward(batch.inputs.data(), batch.targets.data(), 2, 24);
  check_loss(fp8.loss, bf16.loss, 0.05, "FP8 against BF16");
  check_loss(fp8.loss, emulated.loss, 0.02, "FP8 against the CPU's FP8 emulation");
  CHECK(fp8.loss != bf16.loss);
  gpu.zero_grads();
  gpu.backward();
  const std::vector<float> fp8_grads = gpu.grads();
  CHECK(std::isfinite(norm(fp8_grads.data(), fp8_grads.size())));
  MESSAGE("FP8 gradient against BF16: relative difference " << relative_error(fp8_grads, bf16_grads));
  CHECK(relative_error(fp8_grads, bf16_grads) < 0.5);  // e4m3's 3 mantissa bits, and moved tokens
}

}  // namespace

TEST_CASE("device model in FP8: close to BF16 and to the CPU's emulation, and refused where shapes do not fit") {
  SUBCASE("sizes that are multiples of 128") { check_fp8(fp8_config()); }
  SUBCASE("demo's sizes, padded to whole tiles") {
    ModelConfig c = resolve_model_config("demo");
    c.num_hidden_layers = 2;
    check_fp8(c);
  }
  SUBCASE("refused") {  // tiny's kv_a_proj_with_mqa has 20 outputs: no FP8 GEMM takes it
    const ModelConfig c = resolve_model_config("tiny");
    cuda::TrainModel odd(bf16_model(c, 1));
    odd.set_fp8(true);
    const Batch b = make_batch(c.vocab_size, 1, 8, 2);
    CHECK_THROWS_AS(odd.forward(b.inputs.data(), b.targets.data(), 1, 8), Error);
  }
}

TEST_CASE("device model: the sequence-wise balance loss and its gradient match the CPU's") {
  for (const ModelConfig& c : {moe_config(), test::tiny_variant()}) {
    Model<float> cpu = bf16_model(c, 23);
    cuda::TrainModel gpu(cpu);
    const Batch batch = make_batch(c.vocab_size, 3, 10, 29);
    LossOptions options;
    options.balance_alpha = 0.1;  // large enough that its gradient is a visible part of the router's
    const ForwardStats want = cpu.forward(batch.inputs.data(), batch.targets.data(), 3, 10, options);
    const ForwardStats got = gpu.forward(batch.inputs.data(), batch.targets.data(), 3, 10, options);
    CHECK(want.balance_loss > 0);
    check_loss(got.balance_loss, want.balance_loss, 0.03, "balance loss");  // a moved token moves f
    check_loss(got.loss, want.loss, 0.01, "loss");
    const bool same_routing = check_loads(got, want, 30, c.num_experts_per_tok);
    cpu.zero_grads(), gpu.zero_grads();
    cpu.backward(), gpu.backward();
    check_gradients(cpu.param_infos(), gpu.grads(), cpu.grads(), same_routing);
  }
}

TEST_CASE("device AdamW over a shard (ZeRO-1): the whole's update inside it, nothing outside") {
  const ModelConfig c = moe_config();
  Model<float> cpu = bf16_model(c, 13);
  cuda::TrainModel whole_model(cpu), shard_model(cpu);
  const Batch batch = make_batch(c.vocab_size, 2, 12, 17);
  cpu.forward(batch.inputs.data(), batch.targets.data(), 2, 12);
  cpu.backward();
  whole_model.set_grads(cpu.grads()), shard_model.set_grads(cpu.grads());
  const int64_t size = whole_model.size(), begin = size / 3 + 5, end = 2 * size / 3;  // not on a tensor's edge
  AdamWOptions options;
  options.weight_decay = 0.1;
  cuda::DeviceAdamW whole(whole_model, options), shard(shard_model, options, begin, end);
  whole.reduce_grads(0);
  const double shard_norm = shard.reduce_grads(0);
  CHECK(std::fabs(shard_norm - norm(cpu.grads().data() + begin, size_t(end - begin))) <= 1e-6 * shard_norm);
  whole.step(1e-2), shard.step(1e-2);
  const std::vector<float> a = whole_model.params(), b = shard_model.params(), start = cpu.params();
  for (int64_t i = 0; i < size; ++i)
    if ((i >= begin && i < end ? a[size_t(i)] : start[size_t(i)]) != b[size_t(i)]) {
      FAIL_CHECK("parameter " << i << " of " << size << ": " << b[size_t(i)]);
      break;
    }
  const std::vector<float> m = whole.m();
  CHECK(shard.m() == std::vector<float>(m.begin() + begin, m.begin() + end));
  CHECK_THROWS_AS(cuda::DeviceAdamW(shard_model, options, end, begin), Error);
}

// Positions of packed documents: sequence b restarts at 0 every 5 + b tokens.
std::vector<int32_t> packed_positions(int64_t B, int64_t Tn) {
  std::vector<int32_t> pos;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) pos.push_back(int32_t(t % (5 + b)));
  return pos;
}

void check_doubles(const std::vector<double>& got, const std::vector<double>& want, double tolerance,
                   const char* what) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
  MESSAGE(std::string(what) << ": largest difference " << worst);
  CHECK(worst <= tolerance);
}

TEST_CASE("device model: RL's weighted loss at a temperature over packed documents matches the CPU's") {
  // GRPO's per-token weights (of either sign), its sampling temperature, the log-probabilities and entropies it
  // reads; packed documents mask attention and the MTP targets that lie in a later document.
  const ModelConfig c = moe_config();
  Model<float> cpu = bf16_model(c, 32);
  cuda::TrainModel gpu(cpu);
  const int64_t B = 2, Tn = 14;
  const Batch batch = make_batch(c.vocab_size, B, Tn, 37);
  const std::vector<int32_t> pos = packed_positions(B, Tn);
  std::vector<float> weights = gpu_test::random_floats(size_t(B * Tn), 41, 0.2f);
  LossOptions options;
  options.temperature = 0.7;
  const ForwardStats want =
      cpu.forward(batch.inputs.data(), batch.targets.data(), B, Tn, options, weights.data(), pos.data());
  const ForwardStats got =
      gpu.forward(batch.inputs.data(), batch.targets.data(), B, Tn, options, weights.data(), pos.data());
  check_loss(got.main_loss, want.main_loss, 0.01, "weighted main loss");
  check_loss(got.mtp_loss, want.mtp_loss, 0.01, "MTP loss");
  const bool same_routing = check_loads(got, want, B * Tn, c.num_experts_per_tok);
  // Log-probabilities of about -log(vocab): BF16 GEMM inputs move them by a few thousandths, a token routed to
  // another expert by a few hundredths.
  const double tolerance = same_routing ? 0.02 : 0.1;
  check_doubles(gpu.target_logprobs(), cpu.target_logprobs(), tolerance, "log-probabilities");
  check_doubles(gpu.entropies(), cpu.entropies(), tolerance, "entropies");
  cpu.zero_grads(), gpu.zero_grads();
  cpu.backward(), gpu.backward();
  check_gradients(cpu.param_infos(), gpu.grads(), cpu.grads(), same_routing);

  // The temperature and the documents both matter: without them the device's log-probabilities differ.
  gpu.forward(batch.inputs.data(), batch.targets.data(), B, Tn, {}, weights.data(), pos.data());
  std::vector<double> at_one = gpu.target_logprobs();
  gpu.forward(batch.inputs.data(), batch.targets.data(), B, Tn, options, weights.data());
  std::vector<double> unpacked = gpu.target_logprobs();
  const std::vector<double> cpu_logp = cpu.target_logprobs();
  double moved_t = 0, moved_docs = 0;
  for (size_t i = 0; i < cpu_logp.size(); ++i)
    moved_t = std::max(moved_t, std::fabs(at_one[i] - cpu_logp[i])),
    moved_docs = std::max(moved_docs, std::fabs(unpacked[i] - cpu_logp[i]));
  CHECK(moved_t > 0.1);
  CHECK(moved_docs > 0.05);
}

TEST_CASE("device model: the logits, and the backward of a loss computed from them, match the CPU's") {
  // Distillation: a forward without targets over packed documents, a loss of the logits on the host, its gradient
  // back through the model.
  for (const ModelConfig& c : {moe_config(), dense_config()}) {
    Model<float> cpu = bf16_model(c, 43);
    cuda::TrainModel gpu(cpu);
    const int64_t B = 2, Tn = 12, V = c.vocab_size;
    const Batch batch = make_batch(V, B, Tn, 47);
    const std::vector<int32_t> pos = packed_positions(B, Tn);
    const ForwardStats want = cpu.forward(batch.inputs.data(), nullptr, B, Tn, {}, nullptr, pos.data());
    const ForwardStats got = gpu.forward(batch.inputs.data(), nullptr, B, Tn, {}, nullptr, pos.data());
    const std::vector<float> logits = gpu.logits();
    const std::vector<float> cpu_logits(cpu.logits(), cpu.logits() + B * Tn * V);
    const double error = relative_error(logits, cpu_logits);
    MESSAGE("logits: relative error " << error);
    CHECK(error < 0.01);
    const bool same_routing = check_loads(got, want, B * Tn, c.num_experts_per_tok);
    const std::vector<float> dlogits = gpu_test::random_floats(size_t(B * Tn * V), 53, 0.01f);
    cpu.zero_grads(), gpu.zero_grads();
    cpu.backward(dlogits.data()), gpu.backward(dlogits.data());
    check_gradients(cpu.param_infos(), gpu.grads(), cpu.grads(), same_routing);
    CHECK_THROWS_AS(gpu.backward(), Error);  // no targets, no loss of its own
    CHECK_THROWS_AS(gpu.target_logprobs(), Error);
  }
}

TEST_CASE("device model refuses what it cannot do") {
  const ModelConfig c = moe_config();
  cuda::TrainModel gpu(bf16_model(c, 1));
  const Batch batch = make_batch(c.vocab_size, 1, 8, 3);
  CHECK_THROWS_AS(gpu.backward(), Error);  // no forward yet
  std::vector<int32_t> bad = batch.inputs;
  bad[0] = int32_t(c.vocab_size);
  CHECK_THROWS_AS(gpu.forward(bad.data(), batch.targets.data(), 1, 8), Error);
  std::vector<int32_t> pos = {0, 1, 2, 0, 1, 3, 4, 5};  // 1 -> 3 skips a position
  CHECK_THROWS_AS(gpu.forward(batch.inputs.data(), batch.targets.data(), 1, 8, {}, nullptr, pos.data()), Error);
  LossOptions cold;
  cold.temperature = 0;
  CHECK_THROWS_AS(gpu.forward(batch.inputs.data(), batch.targets.data(), 1, 8, cold), Error);
  gpu.forward(batch.inputs.data(), batch.targets.data(), 1, 8);
  CHECK_THROWS_AS(gpu.logits(), Error);  // a forward with targets turned them into their gradient
  const std::vector<float> dlogits(size_t(8 * c.vocab_size), 0.0f);
  CHECK_THROWS_AS(gpu.backward(dlogits.data()), Error);
}
