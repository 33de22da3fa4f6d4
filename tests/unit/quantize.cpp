// Block quantization of weights and activations, FP8 checkpoint loading and ds-quantize's model conversion.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "ds/bf16.h"
#include "ds/checkpoint.h"
#include "ds/error.h"
#include "ds/fp8.h"
#include "ds/fsutil.h"
#include "ds/ops.h"
#include "ds/quantize.h"
#include "ds/safetensors.h"

using namespace ds;
using namespace ds::quant;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct TempDir {
  fs::path path = fs::temp_directory_path() / fmt::format("ds-unit-quantize-{}-{}", ::getpid(), std::random_device{}());
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// Normal(0, sigma) values, with one row of much larger values so blocks get different scales.
Tensor random_weight(int64_t rows, int64_t cols, uint32_t seed, float sigma = 0.02f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> v(size_t(rows * cols));
  for (float& x : v) x = normal(rng);
  for (int64_t c = 0; c < cols; ++c) v[size_t(c)] *= 100;
  return Tensor::from_f32(v, {rows, cols});
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.bytes(), b.bytes(), a.nbytes()) == 0;
}

// A tiny random model written as ds-pretrain writes one.
std::string tiny_model(const TempDir& dir, const std::string& name = "model") {
  Model<float> model(resolve_model_config("tiny"));
  model.init_random(3);
  write_model_dir(dir / name, model, Tokenizer::byte_level());
  return dir / name;
}

}  // namespace

TEST_CASE("weight_scale_inv shapes, edge blocks included") {
  CHECK(weight_scale_shape({576, 7168}) == Shape{5, 56});  // V3's kv_a_proj_with_mqa
  CHECK(weight_scale_shape({24576, 1536}) == Shape{192, 12});
  CHECK(weight_scale_shape({128, 128}) == Shape{1, 1});
  CHECK(weight_scale_shape({129, 257}) == Shape{2, 3});
  CHECK(weight_scale_shape({20, 32}) == Shape{1, 1});  // smaller than one block
  CHECK_THROWS_AS(weight_scale_shape({4}), Error);
}

TEST_CASE("quantize_weight: per-block amax/448 scales, CUDA's rounding, error bounds") {
  const int64_t rows = 576, cols = 300;  // 5 x 3 blocks; the last row block has 64 rows, the last column block 44
  const Tensor w = random_weight(rows, cols, 1);
  ErrorStats stats;
  const QuantizedWeight q = quantize_weight(w, &stats);
  REQUIRE(q.weight.dtype() == DType::F8_E4M3);
  REQUIRE(q.weight.shape() == w.shape());
  REQUIRE(q.scale_inv.dtype() == DType::F32);
  REQUIRE(q.scale_inv.shape() == Shape{5, 3});

  const float* x = w.data<float>();
  const float* s = q.scale_inv.data<float>();
  const uint8_t* codes = q.weight.data<uint8_t>();
  for (int64_t rb = 0; rb < 5; ++rb)
    for (int64_t cb = 0; cb < 3; ++cb) {
      float amax = 0;
      for (int64_t r = rb * 128; r < std::min(rows, rb * 128 + 128); ++r)
        for (int64_t c = cb * 128; c < std::min(cols, cb * 128 + 128); ++c)
          amax = std::max(amax, std::abs(x[r * cols + c]));
      CHECK(s[rb * 3 + cb] == amax / 448.0f);
    }
  CHECK(s[0] > 10 * s[3]);  // the large first row lives in row block 0

  const Tensor deq = dequantize_weight(q.weight, q.scale_inv);
  double sum_sq_error = 0, sum_sq_ref = 0, max_abs = 0;
  bool saw_max_code = false;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      const float scale = s[r / 128 * 3 + c / 128];
      CHECK(codes[i] == float_to_e4m3(x[i] / scale));
      saw_max_code |= (codes[i] & 0x7f) == 0x7e;
      const double v = x[i], d = deq.data<float>()[i], err = std::abs(d - v);
      CHECK(d == double(e4m3_to_float(codes[i]) * scale));
      // Normal e4m3 range: 3 mantissa bits round to within 2^-4 relative; subnormal: half the step 2^-9 * scale.
      if (std::abs(v) / scale >= 0x1p-6)
        CHECK(err <= 0x1p-4 * std::abs(v) * (1 + 1e-6));
      else
        CHECK(err <= 0x1p-10 * scale * (1 + 1e-6));
      sum_sq_error += err * err, sum_sq_ref += v * v, max_abs = std::max(max_abs, err);
    }
  CHECK(saw_max_code);
  CHECK(stats.max_abs_error == doctest::Approx(max_abs));
  CHECK(stats.rel_rms() == doctest::Approx(std::sqrt(sum_sq_error / sum_sq_ref)));
  CHECK(stats.rel_rms() < 0.04);  // about 2^-4.5 for Gaussian weights
}

TEST_CASE("quantize_weight: zero blocks, other input dtypes, thread counts, bad input") {
  std::vector<float> v(200 * 130, 0.0f);
  v[5] = 3.0f;  // only block (0, 0) is non-zero
  const QuantizedWeight q = quantize_weight(Tensor::from_f32(v, {200, 130}));
  CHECK(q.scale_inv.to_vector<float>() == std::vector<float>{3.0f / 448, 1, 1, 1});
  CHECK(q.weight.data<uint8_t>()[5] == 0x7e);
  CHECK(dequantize_weight(q.weight, q.scale_inv).to_vector<float>() == v);

  const Tensor w = random_weight(300, 260, 2);
  const Tensor w_bf16 = w.to(DType::BF16);
  const QuantizedWeight from_bf16 = quantize_weight(w_bf16);
  const QuantizedWeight from_f32 = quantize_weight(w_bf16.to(DType::F32));
  CHECK(same_bytes(from_bf16.weight, from_f32.weight));
  CHECK(same_bytes(from_bf16.scale_inv, from_f32.scale_inv));
  const Tensor w_f16 = w.to(DType::F16);
  CHECK(same_bytes(quantize_weight(w_f16).weight, quantize_weight(w_f16.to(DType::F32)).weight));

  const int threads = get_threads();
  set_threads(1);
  ErrorStats one;
  const QuantizedWeight q1 = quantize_weight(w, &one);
  set_threads(3);
  ErrorStats three;
  const QuantizedWeight q3 = quantize_weight(w, &three);
  set_threads(threads);
  CHECK(same_bytes(q1.weight, q3.weight));
  CHECK(one.sum_sq_error == three.sum_sq_error);  // merged in block order: bit-identical

  std::vector<float> bad = w.to_vector<float>();
  bad[1000] = NAN;
  CHECK_THROWS_WITH_AS(quantize_weight(Tensor::from_f32(bad, w.shape())), doctest::Contains("NaN"), Error);
  bad[1000] = INFINITY;
  CHECK_THROWS_AS(quantize_weight(Tensor::from_f32(bad, w.shape())), Error);
  CHECK_THROWS_AS(quantize_weight(Tensor::zeros(DType::F32, {4, 4, 4})), Error);
  CHECK_THROWS_AS(quantize_weight(Tensor::zeros(DType::I32, {4, 4})), Error);
}

TEST_CASE("dequantize_weight refuses mismatched scales and rounds to BF16") {
  const QuantizedWeight q = quantize_weight(random_weight(576, 136, 4));
  const Tensor f32 = dequantize_weight(q.weight, q.scale_inv);
  const Tensor bf16 = dequantize_weight(q.weight, q.scale_inv, "w", DType::BF16);
  for (int64_t i = 0; i < f32.numel(); ++i) REQUIRE(bf16.data<uint16_t>()[i] == float_to_bf16(f32.data<float>()[i]));

  CHECK_THROWS_WITH_AS(
      dequantize_weight(q.weight, Tensor::zeros(DType::F32, {4, 2}), "kv_a"),
      doctest::Contains("kv_a: weight_scale_inv is F32 [4, 2], the weight [576, 136] needs F32 [5, 2]"), Error);
  CHECK_THROWS_AS(dequantize_weight(q.weight, q.scale_inv.to(DType::BF16)), Error);
  CHECK_THROWS_AS(dequantize_weight(f32, q.scale_inv), Error);
  Tensor nan_scale = q.scale_inv.to(DType::F32);
  nan_scale.data<float>()[3] = NAN;
  CHECK_THROWS_WITH_AS(dequantize_weight(q.weight, nan_scale), doctest::Contains("NaN"), Error);
}

TEST_CASE("activations: 1x128 groups per token, the 1e-4 floor, ue8m0 scales") {
  const int64_t tokens = 3, K = 300;  // groups of 128, 128 and 44
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(size_t(2 * tokens * K));
  for (float& x : v) x = normal(rng);
  for (int64_t c = 0; c < K; ++c) v[size_t(K + c)] = 0;  // token 1 is all zeros
  const Tensor x = Tensor::from_f32(v, {2, tokens, K});

  for (ScaleFormat format : {ScaleFormat::F32, ScaleFormat::UE8M0}) {
    const QuantizedActivations q = quantize_activations(x, format);
    REQUIRE(q.scales.shape() == Shape{2, tokens, 3});
    const float* s = q.scales.data<float>();
    for (int64_t row = 0; row < 2 * tokens; ++row)
      for (int64_t g = 0; g < 3; ++g) {
        float amax = 0;
        for (int64_t c = g * 128; c < std::min(K, g * 128 + 128); ++c)
          amax = std::max(amax, std::abs(v[size_t(row * K + c)]));
        const float exact = std::max(amax, 1e-4f) / 448.0f, scale = s[row * 3 + g];
        if (format == ScaleFormat::F32) {
          CHECK(scale == exact);
        } else {
          int e;
          CHECK(std::frexp(scale, &e) == 0.5f);  // a power of two
          CHECK(scale >= exact);
          CHECK(scale < 2 * exact);
        }
        for (int64_t c = g * 128; c < std::min(K, g * 128 + 128); ++c)
          CHECK(q.values.data<uint8_t>()[row * K + c] == float_to_e4m3(v[size_t(row * K + c)] / scale));
      }
    const Tensor back = dequantize_activations(q.values, q.scales);
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float scale = s[i / K * 3 + i % K / 128], orig = v[size_t(i)];
      CHECK(std::abs(back.data<float>()[i] - orig) <= std::max(0x1p-4f * std::abs(orig), 0x1p-10f * scale) * 1.000001f);
    }
  }
  const Tensor wrong_scales = Tensor::zeros(DType::F32, {2, tokens, 2});
  CHECK_THROWS_AS(dequantize_activations(quantize_activations(x).values, wrong_scales), Error);
  CHECK_THROWS_AS(quantize_activations(x.to(DType::BF16)), Error);
}

TEST_CASE("convert to BF16 and F32 measures its error") {
  const Tensor w = random_weight(70, 33, 6);
  ErrorStats e;
  const Tensor b = convert(w, DType::BF16, &e);
  CHECK(b.dtype() == DType::BF16);
  CHECK(same_bytes(b, w.to(DType::BF16)));
  CHECK(e.rel_rms() > 0);
  CHECK(e.rel_rms() < 0x1p-8);
  ErrorStats exact;
  CHECK(same_bytes(convert(b, DType::F32, &exact), b.to(DType::F32)));
  CHECK(exact.rel_rms() == 0);
  CHECK_THROWS_AS(convert(w, DType::F16), Error);
}

TEST_CASE("a DeepSeek-layout FP8 checkpoint dequantizes to known values") {
  // Written by tests/fixtures/fp8/make_checkpoint.py from the format's definition (out = 576, edge blocks).
  const std::string dir = std::string(DS_FIXTURES) + "/fp8/deepseek-layout";
  const safetensors::ModelFiles files(dir);
  const json expected = json::parse(read_file(dir + "/expected.json"));
  REQUIRE(expected.size() > 8);
  for (const json& e : expected) {
    const Tensor w = read_dequantized(files, e["name"], dir);
    REQUIRE(w.dtype() == DType::F32);
    CHECK(w.data<float>()[e["row"].get<int64_t>() * w.dim(1) + e["col"].get<int64_t>()] == e["value"].get<float>());
  }
  const Tensor kv = read_dequantized(files, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", dir);
  CHECK(kv.shape() == Shape{576, 136});
  CHECK(files.get("model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv").shape() == Shape{5, 2});
  CHECK(read_dequantized(files, "model.layers.0.input_layernorm.weight", dir).dtype() == DType::BF16);  // as stored
  CHECK_FALSE(read_dequantized(files, "no.such.weight", dir).defined());
}

TEST_CASE("corrupt or mismatched scale tensors are refused naming the tensor") {
  TempDir tmp;
  const std::string name = "model.layers.0.self_attn.o_proj.weight";
  const QuantizedWeight q = quantize_weight(random_weight(136, 130, 7));
  const auto check = [&](const safetensors::NamedTensors& tensors, const std::string& message) {
    const std::string dir = tmp / fmt::format("case{}", std::random_device{}());
    safetensors::save_model(dir, tensors);
    const safetensors::ModelFiles files(dir);
    CHECK_THROWS_WITH_AS(read_dequantized(files, name, dir), doctest::Contains(message.c_str()), Error);
  };
  check({{name, q.weight}}, "is F8_E4M3 but there is no 'model.layers.0.self_attn.o_proj.weight_scale_inv'");
  check({{name, q.weight}, {name + "_scale_inv", Tensor::zeros(DType::F32, {1, 2})}}, "needs F32 [2, 2]");
  check({{name, q.weight}, {name + "_scale_inv", q.scale_inv.to(DType::BF16)}}, "weight_scale_inv is BF16");
  check({{name, q.weight}, {name + "_scale_inv", Tensor::zeros(DType::F32, {2, 2, 1})}}, name);
}

TEST_CASE("convert_model: FP8 with DeepSeek's high-precision tensors, loadable, round trip, shards") {
  TempDir tmp;
  const std::string model = tiny_model(tmp);
  ConvertOptions options;
  options.to = Target::FP8;
  const ConvertReport report = convert_model(model, tmp / "fp8", options);
  CHECK(report.shards == 1);
  CHECK(report.bytes_out < report.bytes_in);
  CHECK(report.error.rel_rms() > 0);
  CHECK(report.error.rel_rms() < 0.03);

  const safetensors::ModelFiles files(tmp / "fp8");
  size_t fp8 = 0;
  for (const std::string& name : files.names()) {
    const auto* t = files.find(name);
    const bool high = name.find("embed_tokens") != std::string::npos || name.starts_with("lm_head") ||
                      name.ends_with("norm.weight") || name.ends_with("mlp.gate.weight") ||
                      name.find("e_score_correction_bias") != std::string::npos ||
                      name.find("eh_proj") != std::string::npos || name.find("shared_head") != std::string::npos;
    if (name.ends_with("_scale_inv")) {
      CHECK(t->dtype == DType::F32);
      CHECK(t->shape == weight_scale_shape(files.find(name.substr(0, name.size() - 10))->shape));
    } else if (high) {
      CHECK_MESSAGE(t->dtype == DType::F32, name);
    } else {
      CHECK_MESSAGE(t->dtype == DType::F8_E4M3, name);
      ++fp8;
    }
  }
  CHECK(fp8 > 10);
  // Written out of order with pwrite, the file is byte for byte what the reference-layout writer makes.
  safetensors::NamedTensors all;
  for (const std::string& name : files.names()) all.emplace_back(name, files.get(name));
  safetensors::save(tmp / "resaved.safetensors", all, {{"format", "pt"}});
  CHECK(read_file(tmp / "resaved.safetensors") == read_file(tmp / "fp8/model.safetensors"));
  const json config = json::parse(read_file(tmp / "fp8/config.json"));
  CHECK(config["quantization_config"] == json::parse(R"({"quant_method": "fp8", "fmt": "e4m3",
      "activation_scheme": "dynamic", "weight_block_size": [128, 128]})"));
  CHECK(fs::exists(tmp / "fp8/tokenizer.json"));
  CHECK(fs::exists(tmp / "fp8/generation_config.json"));

  // Every tool's loader takes the FP8 model; its weights are the dequantized ones.
  LoadedModel loaded = load_model_dir(tmp / "fp8");
  const std::string kv = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight";
  const Tensor expected = dequantize_weight(files.get(kv), files.get(kv + "_scale_inv"));
  const ParamInfo* p = loaded.model.find_param(kv);
  REQUIRE(p);
  CHECK(std::memcmp(loaded.model.params().data() + p->offset, expected.data<float>(), expected.nbytes()) == 0);

  // Back to F32: exact, quantization_config gone, same weights as the FP8 model.
  options.to = Target::F32;
  const ConvertReport back = convert_model(tmp / "fp8", tmp / "f32", options);
  CHECK(back.error.rel_rms() == 0);
  CHECK_FALSE(json::parse(read_file(tmp / "f32/config.json")).contains("quantization_config"));
  CHECK(load_model_dir(tmp / "f32").model.params() == loaded.model.params());

  // BF16 keeps the router bias in F32; a tiny shard size gives shards and an index.
  options.to = Target::BF16;
  options.max_shard_bytes = 20'000;
  const ConvertReport bf16 = convert_model(model, tmp / "bf16", options);
  CHECK(bf16.shards > 2);
  CHECK(fs::exists(tmp / "bf16/model.safetensors.index.json"));
  CHECK_FALSE(fs::exists(tmp / "bf16/model.safetensors"));
  const safetensors::ModelFiles sharded(tmp / "bf16");
  CHECK(sharded.find("model.layers.1.mlp.gate.e_score_correction_bias")->dtype == DType::F32);
  CHECK(sharded.find("model.layers.1.mlp.experts.0.up_proj.weight")->dtype == DType::BF16);
  CHECK(json::parse(read_file(tmp / "bf16/config.json"))["torch_dtype"] == "bfloat16");
  load_model_dir(tmp / "bf16");
}

TEST_CASE("convert_model: --keep, refusals, and nothing left behind by a failure") {
  TempDir tmp;
  const std::string model = tiny_model(tmp);
  ConvertOptions options;
  options.keep = {R"(experts\.[0-9]+\.down_proj)"};
  convert_model(model, tmp / "keep", options);
  const safetensors::ModelFiles files(tmp / "keep");
  CHECK(files.find("model.layers.1.mlp.experts.0.down_proj.weight")->dtype == DType::F32);
  CHECK(files.find("model.layers.1.mlp.experts.0.up_proj.weight")->dtype == DType::F8_E4M3);

  CHECK_THROWS_WITH_AS(convert_model(model, model, options), doctest::Contains("would overwrite the input"), Error);
  CHECK_THROWS_WITH_AS(convert_model(model, model + "/sub", options), doctest::Contains("would overwrite"), Error);
  CHECK_THROWS_WITH_AS(convert_model(model, tmp / "keep", options), doctest::Contains("already exists"), Error);
  options.keep = {"("};
  CHECK_THROWS_WITH_AS(convert_model(model, tmp / "x", options),
                       doctest::Contains("--keep: regex \"(\" does not compile"), Error);

  // A NaN weight fails the conversion; neither the output nor its staging directory remains.
  Model<float> bad(resolve_model_config("tiny"));
  bad.init_random(1);
  bad.params()[bad.find_param("model.layers.0.self_attn.o_proj.weight")->offset + 3] = NAN;
  write_model_dir(tmp / "bad", bad, Tokenizer::byte_level());
  options.keep = {};
  CHECK_THROWS_WITH_AS(convert_model(tmp / "bad", tmp / "out/bad-fp8", options),
                       doctest::Contains("model.layers.0.self_attn.o_proj.weight"), Error);
  CHECK(fs::is_empty(tmp / "out"));

  // A scale without its F8 weight is a broken model.
  safetensors::save_model(tmp / "stray", {{"a.weight_scale_inv", Tensor::zeros(DType::F32, {1, 1})}});
  fs::copy_file(model + "/config.json", tmp / "stray/config.json");
  CHECK_THROWS_WITH_AS(convert_model(tmp / "stray", tmp / "y", options), doctest::Contains("scales no F8_E4M3"), Error);
}

TEST_CASE("byte sizes and targets") {
  CHECK(parse_byte_size("5GB") == 5'000'000'000);
  CHECK(parse_byte_size("100MB") == 100'000'000);
  CHECK(parse_byte_size("64KiB") == 65536);
  CHECK(parse_byte_size("1.5gib") == 1610612736);
  CHECK(parse_byte_size("1000") == 1000);
  CHECK(parse_byte_size("0") == 0);
  CHECK(parse_byte_size("2 M") == 2'000'000);
  CHECK(parse_byte_size(" 3 kib ") == 3072);
  for (const char* bad : {"", "GB", "-5MB", "5XB", "1e9", "1..5", ".5GB", "5ib", "5 k b", "5GBB", "0x10"})
    CHECK_THROWS_AS(parse_byte_size(bad), Error);
  Target t;
  CHECK((parse_target("bf16", t) && t == Target::BF16));
  CHECK_FALSE(parse_target("fp16", t));
}
