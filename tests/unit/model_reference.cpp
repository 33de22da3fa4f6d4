// The forward pass against logits that Hugging Face's DeepseekV3 / V2 implementation computed in float64 for the same
// weights (tests/fixtures/reference, made once by make_reference.py).
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>

#include "ds/config.h"
#include "ds/model.h"
#include "ds/safetensors.h"

using namespace ds;

namespace {

template <typename T>
double max_logit_error(const std::string& dir) {
  const ModelConfig config = load_config(dir + "/config.json");
  Model<T> model(config);
  safetensors::ModelFiles weights(dir);
  model.load([&](const std::string& name) { return weights.find(name) ? weights.get(name) : Tensor(); }, dir);

  safetensors::File reference(dir + "/reference.safetensors");
  const Tensor ids = reference.get("input_ids");
  const Tensor expected = reference.get("logits");
  const int64_t B = ids.dim(0), Tn = ids.dim(1), V = config.vocab_size;
  REQUIRE(expected.shape() == Shape{B, Tn, V});
  std::vector<int32_t> inputs(size_t(B * Tn));
  for (int64_t i = 0; i < B * Tn; ++i) inputs[size_t(i)] = int32_t(ids.data<int64_t>()[i]);
  model.forward(inputs.data(), nullptr, B, Tn);
  const std::vector<double> want = expected.to_vector<double>();
  double worst = 0, scale = 0;
  for (int64_t i = 0; i < B * Tn * V; ++i) {
    worst = std::max(worst, std::fabs(double(model.logits()[i]) - want[size_t(i)]));
    scale = std::max(scale, std::fabs(want[size_t(i)]));
  }
  MESSAGE(dir << ": max |logit| " << scale << ", max error " << worst);
  return worst / std::max(scale, 1.0);
}

}  // namespace

TEST_CASE("forward equals Hugging Face's logits on every reference fixture") {
  const std::filesystem::path root = std::filesystem::path(DS_FIXTURES) / "reference";
  int fixtures = 0;
  for (const auto& entry : std::filesystem::directory_iterator(root)) {
    if (!std::filesystem::exists(entry.path() / "reference.safetensors")) continue;
    ++fixtures;
    INFO(entry.path().filename().string());
    CHECK(max_logit_error<double>(entry.path().string()) < 1e-9);
    CHECK(max_logit_error<float>(entry.path().string()) < 1e-4);
  }
  CHECK(fixtures >= 2);
}
