// The inference engine on a CUDA device against the same engine on the CPU: prefill and decode of several
// sequences as one batch, sequences opened while others are cached (the cache's slots grow), a prompt past the first
// cache capacity (its positions grow), the whole-sequence forward, FP8 weights, and greedy generation. The GPU rounds
// weights and GEMM inputs to BF16, so logits agree to a tolerance relative to their scale.
#include "ds/engine.h"

#include <algorithm>
#include <cmath>

#include "../unit/random_model.h"
#include "ds/config.h"
#include "ds/inference_model.h"
#include "ds/model.h"
#include "gpu_test.h"

using namespace ds;

namespace {

using test::random_model;
using test::random_tokens;

// Every logit within `tolerance` (3%) of the largest magnitude: BF16 GEMM inputs, not a wrong head, position or
// cache row.
void check_logits(const std::vector<float>& gpu, const std::vector<float>& cpu, const char* what,
                  double tolerance = 0.03) {
  REQUIRE(gpu.size() == cpu.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    worst = std::max(worst, double(std::fabs(gpu[i] - cpu[i])));
    scale = std::max(scale, double(std::fabs(cpu[i])));
  }
  MESSAGE(std::string(what) << ": max |logit| " << scale << ", max difference " << worst);
  CHECK(scale > 1.0);
  CHECK(worst <= tolerance * scale);
}

// The same appends on both engines, logits compared after each.
void check_engine(const ModelConfig& c, const InferenceWeights& weights, double tolerance = 0.03) {
  const Tokenizer tok = Tokenizer::byte_level();
  Engine cpu(weights, tok), gpu(weights, tok, Device{true, 0});
  const int64_t V = c.vocab_size;
  const auto a = random_tokens(9, 1, V), b = random_tokens(4, 2, V);
  const int64_t ca = cpu.open(), cb = cpu.open(), ga = gpu.open(), gb = gpu.open();
  check_logits(gpu.append({{ga, a}, {gb, b}}), cpu.append({{ca, a}, {cb, b}}), "prefill of 9 and 4 tokens", tolerance);
  for (uint32_t t = 0; t < 3; ++t)
    check_logits(gpu.append({{ga, {t + 5}}, {gb, {t + 7}}}), cpu.append({{ca, {t + 5}}, {cb, {t + 7}}}), "decode",
                 tolerance);
  // A third sequence opens while the others are cached; then all three go on together.
  const auto d = random_tokens(5, 3, V);
  const int64_t cd = cpu.open(), gd = gpu.open();
  check_logits(gpu.append({{gd, d}}), cpu.append({{cd, d}}), "a new sequence", tolerance);
  check_logits(gpu.append({{ga, {11}}, {gb, {12}}, {gd, {13}}}), cpu.append({{ca, {11}}, {cb, {12}}, {cd, {13}}}),
               "decode of three", tolerance);
  // A sequence cut back and continued differently reads only what it keeps.
  cpu.truncate(ca, 6), gpu.truncate(ga, 6);
  check_logits(gpu.append({{ga, {17, 18}}}), cpu.append({{ca, {17, 18}}}), "after truncate", tolerance);
  // Whole sequences, as the KL reference and perplexity use them.
  const auto inputs = random_tokens(2 * 10, 4, V);
  const std::vector<int32_t> ids(inputs.begin(), inputs.end());
  check_logits(gpu.forward(ids.data(), 2, 10), cpu.forward(ids.data(), 2, 10), "forward of 2 x 10", tolerance);
}

}  // namespace

TEST_CASE("CUDA engine equals the CPU engine: tiny (q_lora, noaux_tc MoE, widths 16 + 4)") {
  const ModelConfig c = resolve_model_config("tiny");
  const Model<float> model = random_model(c, 3);
  check_engine(c, model);
}

TEST_CASE("CUDA engine equals the CPU engine: no q_lora, tied, YaRN, softmax routing") {
  const ModelConfig c = test::tiny_variant();
  const Model<float> model = random_model(c, 4);
  check_engine(c, model);
}

// At demo widths, rounding only the weights of this random model to BF16 moves its logits on the CPU by up to 3.6%
// of their scale, hence a wider tolerance; and its layers are all dense, because a random MoE this wide flips an
// expert choice under such rounding now and then, which moves a row's logits wholesale (the tiny models above check
// the routed experts).
TEST_CASE("CUDA engine with FP8 weights equals the CPU engine on the same FP8 weights: demo widths") {
  ModelConfig c = resolve_model_config("demo");
  c.first_k_dense_replace = c.num_hidden_layers;
  const Model<float> model = random_model(c, 5);
  check_engine(c, inference_weights(model, true), 0.06);
}

TEST_CASE("CUDA engine: a prompt past the first cache capacity, then decode; greedy generation agrees") {
  ModelConfig c = resolve_model_config("tiny");
  c.max_position_embeddings = 1024;
  const Model<float> model = random_model(c, 6);
  const Tokenizer tok = Tokenizer::byte_level();
  Engine cpu(model, tok), gpu(model, tok, Device{true, 0});
  const auto prompt = random_tokens(300, 7, c.vocab_size);
  const int64_t cs = cpu.open(), gs = gpu.open();
  check_logits(gpu.append({{gs, prompt}}), cpu.append({{cs, prompt}}), "prefill of 300 tokens");
  for (uint32_t t = 0; t < 3; ++t) check_logits(gpu.append({{gs, {t}}}), cpu.append({{cs, {t}}}), "decode at 300+");

  // Greedy: the first token agrees (later ones may part where two logits are closer than BF16 resolves).
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 8;
  const std::vector<std::vector<uint32_t>> prompts = {random_tokens(6, 8, c.vocab_size)};
  const Completion want = cpu.generate(prompts, greedy, 1)[0], got = gpu.generate(prompts, greedy, 1)[0];
  REQUIRE(!want.tokens.empty());
  REQUIRE(!got.tokens.empty());
  CHECK(got.tokens[0] == want.tokens[0]);
}

TEST_CASE("CUDA engine: after the weights change in place, reload_weights makes it follow them") {
  const ModelConfig c = resolve_model_config("tiny");
  Model<float> model = random_model(c, 9);
  const Tokenizer tok = Tokenizer::byte_level();
  Engine cpu(model, tok), gpu(model, tok, Device{true, 0});
  const auto prompt = random_tokens(8, 10, c.vocab_size);
  const std::vector<float> before = gpu.append({{gpu.open(), prompt}});
  for (float& w : model.params()) w *= 0.8f;  // as an optimizer step would, under both engines
  gpu.reload_weights();
  const std::vector<float> after = gpu.append({{gpu.open(), prompt}});
  check_logits(after, cpu.append({{cpu.open(), prompt}}), "reloaded");
  double moved = 0;
  for (size_t i = 0; i < after.size(); ++i) moved = std::max(moved, double(std::fabs(after[i] - before[i])));
  CHECK(moved > 0.1);
}
