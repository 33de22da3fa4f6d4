// FP8-resident inference: linear layers over e4m3 codes and 128x128 block scales against the same product over the
// dequantized weights, the engine on an FP8 checkpoint against the engine on its dequantized copy, the engine's
// whole-sequence forward against the training forward, and the loader's refusals.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "ds/checkpoint.h"
#include "ds/engine.h"
#include "ds/error.h"
#include "ds/fp8.h"
#include "ds/fp8_matrix.h"
#include "ds/inference_model.h"
#include "ds/ops.h"
#include "ds/quantize.h"
#include "ds/safetensors.h"
#include "temp_dir.h"

using namespace ds;
namespace fs = std::filesystem;

namespace {

// Normal values whose size changes from block to block, so that the blocks get different scales.
Tensor random_weight(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(size_t(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      v[size_t(i * cols + j)] = normal(rng) * std::ldexp(1.0f, int((i / 128 + 3 * (j / 128)) % 7) - 3);
  return Tensor::from_f32(v, {rows, cols});
}

std::vector<float> random_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// A random model with larger weights than the training init, so attention and routing are far from uniform and
// greedy decoding has clear winners.
Model<float> random_model(const ModelConfig& c, uint64_t seed) {
  Model<float> model(c);
  model.init_random(seed);
  for (const auto& p : model.param_infos())
    if (p.kind == ParamKind::Matrix)
      for (int64_t i = 0; i < shape_numel(p.shape); ++i) model.params()[size_t(p.offset + i)] *= 15.0f;
  return model;
}

// max |a - b| over max |b|, with max |b| required to be far from zero.
double relative_difference(const std::vector<float>& a, const float* b) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    scale = std::max(scale, double(std::fabs(b[i])));
  }
  REQUIRE(scale > 1.0);
  return worst / scale;
}

}  // namespace

TEST_CASE("FP8 linear equals linear over the dequantized weights, edge blocks included") {
  struct Shape2 {
    int64_t out, in;
  };
  for (const Shape2 shape : {Shape2{576, 200}, Shape2{300, 129}, Shape2{128, 256}}) {
    const int64_t out = shape.out, in = shape.in;
    const quant::QuantizedWeight q = quant::quantize_weight(random_weight(out, in, uint32_t(out + in)));
    const Tensor dequantized = quant::dequantize_weight(q.weight, q.scale_inv);
    const WeightMatrix w = fp8_matrix(q.weight, q.scale_inv, "w");
    CHECK(w.bytes() == out * in + q.scale_inv.numel() * 4);
    CHECK(w.bytes() < out * in * 4 / 3);

    // Dequantized rows are exactly dequantize_weight's, whatever rows they start and end at.
    std::vector<float> buffer;
    for (const int64_t first : {int64_t(0), int64_t(127), out - 5}) {
      const int64_t n = std::min<int64_t>(first == 0 ? out : 3, out - first);
      CHECK(std::memcmp(w.rows_f32(first, n, buffer), dequantized.data<float>() + first * in,
                        size_t(n * in) * sizeof(float)) == 0);
    }

    for (const int64_t rows : {1, 3, 130}) {
      CAPTURE(out);
      CAPTURE(in);
      CAPTURE(rows);
      const std::vector<float> x = random_values(size_t(rows * in), uint32_t(rows));
      std::vector<float> got(size_t(rows * out)), want(got.size());
      ops::linear(got.data(), x.data(), w, rows);
      ops::linear(want.data(), x.data(), dequantized.data<float>(), rows, out, in);
      // Only the summation order differs, so each output is within float rounding of its terms' magnitude.
      double worst = 0;
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t n = 0; n < out; ++n) {
          double magnitude = 0;
          for (int64_t k = 0; k < in; ++k)
            magnitude += std::fabs(double(x[size_t(i * in + k)]) * dequantized.data<float>()[n * in + k]);
          worst = std::max(worst, std::fabs(double(got[size_t(i * out + n)]) - want[size_t(i * out + n)]) / magnitude);
        }
      CHECK(worst < 1e-5);
    }
  }
}

TEST_CASE("every e4m3 code dequantizes to its value, on the vector path and the scalar tail") {
  std::vector<uint8_t> codes;
  for (int c = 0; c < 256; ++c)
    if ((c & 0x7f) != 0x7f) codes.push_back(uint8_t(c));  // the two NaN codes are refused at load
  const int64_t n = int64_t(codes.size());                // 254: a block of 128 and one of 126 = 15 x 8 + 6
  Tensor q = Tensor::empty(DType::F8_E4M3, {1, n});
  std::memcpy(q.bytes(), codes.data(), codes.size());
  const Tensor scale = Tensor::from_f32(std::vector<float>{0.5f, 3.0f}, {1, 2});
  const WeightMatrix w = fp8_matrix(q, scale, "codes");
  std::vector<float> buffer, x(codes.size(), 0.0f);
  const float* values = w.rows_f32(0, 1, buffer);
  for (int64_t j = 0; j < n; ++j) {
    CHECK(values[j] == e4m3_to_float(codes[size_t(j)]) * (j < 128 ? 0.5f : 3.0f));
    x[size_t(j)] = 1.0f;  // a one-hot x picks out the weight through the dot product
    float y = 0;
    ops::linear(&y, x.data(), w, 1);
    CHECK(y == values[j]);
    x[size_t(j)] = 0.0f;
  }
}

TEST_CASE("an FP8 checkpoint stays FP8 in memory and generates what its dequantized copy does") {
  TempDir tmp;
  const ModelConfig c = resolve_model_config("tiny");
  write_model_dir(tmp / "f32", random_model(c, 7), Tokenizer::byte_level());
  quant::convert_model(tmp / "f32", tmp / "fp8", {});

  const InferenceModel resident = load_inference_model(tmp / "fp8");
  const LoadedModel dequantized = load_model_dir(tmp / "fp8");
  CHECK(resident.dir == tmp / "fp8");
  CHECK(resident.weights.fp8());
  CHECK_FALSE(InferenceWeights(dequantized.model).fp8());
  CHECK_FALSE(load_inference_model(tmp / "f32").weights.fp8());
  // Resident bytes: a byte per FP8 weight plus its scales, four per F32 value; the MTP layer is not read.
  const safetensors::ModelFiles files(tmp / "fp8");
  int64_t expected = 0;
  for (const std::string& name : files.names()) {
    const safetensors::TensorInfo* t = files.find(name);
    if (name.find("layers.2.") == std::string::npos)
      expected += shape_numel(t->shape) * int64_t(t->dtype == DType::F8_E4M3 ? 1 : 4);
  }
  CHECK(resident.weights.bytes() == expected);
  CHECK(resident.weights.bytes() < InferenceWeights(dequantized.model).bytes());

  Engine fp8(resident.weights, resident.tokenizer), f32(dequantized.model, dequantized.tokenizer);
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 16;
  const std::vector<std::vector<uint32_t>> prompts = {resident.tokenizer.encode("User: 12 + 30? Assistant:", true),
                                                      resident.tokenizer.encode("x", false)};
  const std::vector<Completion> a = fp8.generate(prompts, greedy, 1), b = f32.generate(prompts, greedy, 1);
  for (size_t i = 0; i < prompts.size(); ++i) {
    CHECK(a[i].tokens.size() == 16);
    CHECK(a[i].tokens == b[i].tokens);
  }
  // Prefill of many tokens (the panel GEMM), then one token at a time (the streaming one).
  const int64_t sa = fp8.open(), sb = f32.open();
  CHECK(relative_difference(fp8.append({{sa, prompts[0]}}), f32.append({{sb, prompts[0]}}).data()) < 1e-5);
  CHECK(relative_difference(fp8.append({{sa, {65}}}), f32.append({{sb, {65}}}).data()) < 1e-5);
}

TEST_CASE("Engine::forward: every position's logits as the training forward computes them, packed documents too") {
  ModelConfig c = resolve_model_config("tiny");
  c.q_lora_rank = 0;  // both attention variants: tiny has q_lora
  for (const ModelConfig& config : {resolve_model_config("tiny"), c}) {
    Model<float> model = random_model(config, 11);
    const Tokenizer tok = Tokenizer::byte_level();
    Engine engine(model, tok);
    const int64_t B = 2, Tn = 9, V = config.vocab_size;
    std::vector<int32_t> inputs(size_t(B * Tn));
    std::mt19937 rng(3);
    for (int32_t& t : inputs) t = int32_t(rng() % uint32_t(V));
    // Row 1 packs two documents: positions restart at 0 at its fifth token.
    const std::vector<int32_t> positions = {0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 0, 1, 2, 3, 4};

    const int64_t open = engine.open();  // an open sequence stays as it was
    const std::vector<float> before = engine.append({{open, {1, 2, 3}}});
    for (const int32_t* pos : {static_cast<const int32_t*>(nullptr), positions.data()}) {
      const std::vector<float> got = engine.forward(inputs.data(), B, Tn, pos);
      model.forward(inputs.data(), nullptr, B, Tn, {}, nullptr, pos);
      REQUIRE(got.size() == size_t(B * Tn * V));
      CHECK(relative_difference(got, model.logits()) < 2e-4);
    }
    CHECK(engine.length(open) == 3);
    CHECK(engine.tokens(open) == std::vector<uint32_t>{1, 2, 3});
    const int64_t again = engine.open();
    CHECK(relative_difference(engine.append({{again, {1, 2, 3}}}), before.data()) == 0);

    const std::vector<int32_t> bad_position = {0, 1, 3};
    CHECK_THROWS_WITH_AS(engine.forward(inputs.data(), 1, 3, bad_position.data()),
                         doctest::Contains("position 3 at token 2 of sequence 0"), Error);
    const std::vector<int32_t> bad_token = {0, int32_t(V)};
    CHECK_THROWS_WITH_AS(engine.forward(bad_token.data(), 1, 2), "token id 320 is outside the vocabulary of 320",
                         Error);
  }
}

TEST_CASE("corrupt FP8 tensors are refused naming the directory and the tensor") {
  TempDir tmp;
  Model<float> model(resolve_model_config("tiny"));
  model.init_random(5);
  write_model_dir(tmp / "f32", model, Tokenizer::byte_level());
  quant::convert_model(tmp / "f32", tmp / "fp8", {});
  const safetensors::ModelFiles files(tmp / "fp8");
  const std::string name = "model.layers.0.self_attn.o_proj.weight", scale = name + "_scale_inv";

  // A copy of the FP8 model with `name`'s entries replaced (an undefined tensor drops the entry).
  int cases = 0;
  const auto variant = [&](const Tensor& weight, const Tensor& scale_inv) {
    const std::string dir = tmp / fmt::format("case{}", ++cases);
    fs::copy(tmp / "fp8", dir);
    safetensors::NamedTensors tensors;
    for (const std::string& n : files.names())
      if (n != name && n != scale) tensors.emplace_back(n, files.get(n));
    if (weight.defined()) tensors.emplace_back(name, weight);
    if (scale_inv.defined()) tensors.emplace_back(scale, scale_inv);
    safetensors::save_model(dir, tensors);
    return dir;
  };
  const Tensor q = files.get(name), s = files.get(scale);
  const auto refused = [&](const Tensor& weight, const Tensor& scale_inv, const std::string& message) {
    const std::string dir = variant(weight, scale_inv), where = fmt::format("{}: tensor '{}", dir, name);
    CHECK_THROWS_WITH_AS(load_inference_model(dir), doctest::Contains(where.c_str()), Error);
    CHECK_THROWS_WITH_AS(load_inference_model(dir), doctest::Contains(message.c_str()), Error);
  };
  CHECK(load_inference_model(variant(q, s)).weights.fp8());  // the copy itself loads
  refused(q, Tensor::zeros(DType::F32, {2, 1}), "weight_scale_inv is F32 [2, 1], the weight [32, 16] needs F32 [1, 1]");
  refused(q, s.to(DType::BF16), "weight_scale_inv is BF16 [1, 1]");
  refused(q, {}, "is F8_E4M3 but there is no '" + scale + "'");
  refused(quant::dequantize_weight(q, s), s, "scales no F8_E4M3 weight");
  refused(q, Tensor::from_f32(std::vector<float>{NAN}, {1, 1}), "weight_scale_inv holds NaN or Inf");
  Tensor nan_code = Tensor::empty(DType::F8_E4M3, q.shape());
  std::memcpy(nan_code.bytes(), q.bytes(), q.nbytes());
  nan_code.data<uint8_t>()[7] = 0xff;
  refused(nan_code, s, "NaN codes");

  // A weight of the wrong shape loads, and the engine refuses it against the config.
  const quant::QuantizedWeight wide = quant::quantize_weight(random_weight(32, 24, 1));
  const InferenceModel misshapen = load_inference_model(variant(wide.weight, wide.scale_inv));
  const std::string message = fmt::format("tensor '{}' has shape [32, 24], the config needs [32, 16]", name);
  CHECK_THROWS_WITH_AS(Engine(misshapen.weights, misshapen.tokenizer), doctest::Contains(message.c_str()), Error);
}
