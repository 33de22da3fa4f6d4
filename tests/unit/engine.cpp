// The latent-cache engine against the training forward (the naive per-head path), and the sampler's statistics.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "ds/config.h"
#include "ds/cuda.h"
#include "ds/engine.h"
#include "ds/error.h"
#include "ds/model.h"
#include "ds/sampler.h"
#include "ds/tokenizer.h"
#include "random_model.h"

using namespace ds;

namespace {

using test::random_model;
using test::random_tokens;

// Prefill `split` tokens, then decode the rest one at a time; every step's logits equal the full forward's.
void check_cache_matches_forward(const ModelConfig& c) {
  const Model<float> model = random_model(c, 3);
  Model<float> naive = random_model(c, 3);
  const Tokenizer tok = Tokenizer::byte_level();
  Engine engine(model, tok);
  const std::vector<uint32_t> tokens = random_tokens(12, 5, c.vocab_size);
  const std::vector<int32_t> inputs(tokens.begin(), tokens.end());
  naive.forward(inputs.data(), nullptr, 1, int64_t(inputs.size()));
  const int64_t V = c.vocab_size, split = 5;

  const int64_t seq = engine.open();
  std::vector<float> got = engine.append({{seq, {tokens.begin(), tokens.begin() + split}}});
  double worst = 0, scale = 0;
  for (int64_t t = split - 1; t < int64_t(tokens.size()); ++t) {
    if (t >= split) got = engine.append({{seq, {tokens[size_t(t)]}}});
    for (int64_t v = 0; v < V; ++v) {
      worst = std::max(worst, double(std::fabs(got[size_t(v)] - naive.logits()[t * V + v])));
      scale = std::max(scale, double(std::fabs(naive.logits()[t * V + v])));
    }
  }
  CHECK(engine.length(seq) == int64_t(tokens.size()));
  MESSAGE("max |logit| " << scale << ", max difference " << worst);
  CHECK(scale > 1.0);
  CHECK(worst < 2e-4 * scale);
}

}  // namespace

TEST_CASE("absorbed latent-cache decode equals the naive forward: q_lora, noaux_tc MoE") {
  check_cache_matches_forward(resolve_model_config("tiny"));
}

TEST_CASE("absorbed latent-cache decode equals the naive forward: no q_lora, tied, YaRN, softmax routing") {
  check_cache_matches_forward(test::tiny_variant());
}

TEST_CASE("a batch of sequences of different lengths equals each alone; the latent cache is smaller") {
  const ModelConfig c = resolve_model_config("tiny");
  const Model<float> model = random_model(c, 4);
  const Tokenizer tok = Tokenizer::byte_level();
  Engine engine(model, tok);
  const auto a = random_tokens(7, 1, c.vocab_size), b = random_tokens(3, 2, c.vocab_size);
  const int64_t sa = engine.open(), sb = engine.open();
  const std::vector<float> both = engine.append({{sa, a}, {sb, b}});
  const int64_t solo = engine.open();
  const std::vector<float> alone = engine.append({{solo, b}});
  const int64_t V = c.vocab_size;
  for (int64_t v = 0; v < V; ++v) CHECK(both[size_t(V + v)] == doctest::Approx(alone[size_t(v)]).epsilon(1e-4));
  CHECK(engine.cache_bytes_per_token() == 2 * (16 + 4) * 4);
  CHECK(engine.naive_cache_bytes_per_token() == 2 * 2 * (12 + 8) * 4);
  CHECK_THROWS(engine.append({{sa, random_tokens(size_t(c.max_position_embeddings), 3, V)}}));
}

TEST_CASE("an engine on a CUDA device that the build or the machine lacks is a clear error") {
#ifdef DS_CUDA
  if (cuda::device_count() > 0) return;  // tests/gpu compares that engine with this one
#endif
  const ModelConfig c = resolve_model_config("tiny");
  const Model<float> model = random_model(c, 4);
  const Tokenizer tok = Tokenizer::byte_level();
  CHECK_THROWS_AS(Engine(model, tok, Device{true, 0}), Error);
}

TEST_CASE("generation: seeds, batch independence, stop strings and length limits") {
  const ModelConfig c = resolve_model_config("tiny");
  const Model<float> model = random_model(c, 6);
  const Tokenizer tok = Tokenizer::byte_level();
  Engine engine(model, tok);
  const std::vector<uint32_t> p1 = tok.encode("User: hi Assistant:", true), p2 = tok.encode("x", false);
  SamplingOptions o;
  o.temperature = 1.0;
  o.max_new_tokens = 9;
  const auto together = engine.generate({p1, p2}, o, 42);
  const auto alone = engine.generate({p2}, o, 43);  // sequence 1 of the batch samples with seed 42 + 1
  CHECK(together[1].tokens == alone[0].tokens);
  CHECK(engine.generate({p1}, o, 42)[0].tokens == together[0].tokens);
  CHECK(together[0].finish_reason == (together[0].tokens.size() == 9 ? "length" : "eos"));
  CHECK(together[0].prompt_tokens == int64_t(p1.size()));
  for (uint32_t t : together[0].tokens) CHECK(t < tok.vocab_size());

  o.temperature = 0;
  const Completion greedy = engine.generate({p1}, o, 1)[0];
  CHECK(engine.generate({p1}, o, 999)[0].tokens == greedy.tokens);  // greedy ignores the seed
  if (greedy.text.size() >= 2) {
    o.stop = {greedy.text.substr(1, 1)};
    const Completion stopped = engine.generate({p1}, o, 1)[0];
    CHECK(stopped.finish_reason == "stop");
    CHECK(stopped.text == greedy.text.substr(0, greedy.text.find(o.stop[0])));
  }
  CHECK_THROWS(engine.generate({{}}, o, 1));
}

TEST_CASE("sampler: greedy, temperature, top-k, top-p, min-p and repetition penalty") {
  const std::vector<float> base = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  auto frequencies = [&](SamplingOptions o, std::vector<uint32_t> history = {}) {
    Sampler s(7);
    std::vector<double> f(base.size(), 0.0);
    const int n = 40000;
    for (int i = 0; i < n; ++i) {
      std::vector<float> l = base;
      f[s.sample(l, o, history)] += 1.0 / n;
    }
    return f;
  };
  SamplingOptions o;
  o.top_p = 1.0;
  o.temperature = 1.0;
  auto f = frequencies(o);
  CHECK(f[0] == doctest::Approx(0.5).epsilon(0.03));
  CHECK(f[3] == doctest::Approx(0.05).epsilon(0.1));
  o.top_p = 0.7;  // keeps 0.5 + 0.3
  f = frequencies(o);
  CHECK(f[0] == doctest::Approx(0.625).epsilon(0.03));
  CHECK(f[2] == 0.0);
  o.top_p = 1.0;
  o.top_k = 3;
  f = frequencies(o);
  CHECK(f[3] == 0.0);
  CHECK(f[2] == doctest::Approx(0.15 / 0.95).epsilon(0.05));
  o.top_k = 0;
  o.min_p = 0.5;  // keeps p >= 0.25
  f = frequencies(o);
  CHECK(f[1] == doctest::Approx(0.375).epsilon(0.04));
  CHECK(f[2] == 0.0);
  o.min_p = 0;
  o.temperature = 0.5;  // sharpens: p ~ p^2
  f = frequencies(o);
  CHECK(f[0] == doctest::Approx(0.25 / (0.25 + 0.09 + 0.0225 + 0.0025)).epsilon(0.03));
  o.temperature = 0;
  CHECK(frequencies(o)[0] == doctest::Approx(1.0));
  o.repetition_penalty = 100.0;  // token 0's logit log(0.5) < 0 is multiplied: it drops below token 1
  CHECK(frequencies(o, {0})[1] == doctest::Approx(1.0));
}
