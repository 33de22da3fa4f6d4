// Checkpoints without copies of the model: the exported weights are views of the parameters, and the optimizer
// state goes from AdamW's moments to optimizer.safetensors and back a piece at a time. The tests hold for any number
// of ranks: ds-unit runs them as one process, tests/e2e/mpi_comm.sh under `mpirun -np 2`.
#include <doctest/doctest.h>

#include <numeric>

#include "ds/checkpoint.h"
#include "ds/comm.h"
#include "ds/config.h"
#include "ds/error.h"
#include "ds/model.h"
#include "ds/optim.h"
#include "temp_dir.h"

using namespace ds;

namespace {

// Where an exported tensor's values live in params(): the MTP layers' copies of the embedding and head are those.
int64_t offset_of(const Model<float>& model, const std::string& name) {
  if (const ParamInfo* p = model.find_param(name)) return p->offset;
  const bool embed = name.ends_with(".embed_tokens.weight");
  REQUIRE((embed || name.ends_with(".shared_head.head.weight")));
  return model.find_param(embed ? "model.embed_tokens.weight" : "lm_head.weight")->offset;
}

// Distinct values, so a moment written in the wrong place or order is told apart.
std::vector<float> ramp(size_t n, float start) {
  std::vector<float> x(n);
  std::iota(x.begin(), x.end(), start);
  return x;
}

// What gather_state hands over: the values in order, the size of each piece and where the first one lay.
struct Gathered {
  std::vector<float> values;
  std::vector<size_t> sizes;
  const float* first = nullptr;
};
Gathered gather(const AdamW& optimizer, AdamW::Moment moment, int64_t chunk) {
  Gathered g;
  optimizer.gather_state(moment, chunk, [&](std::span<const float> piece) {
    if (g.sizes.empty()) g.first = piece.data();
    g.sizes.push_back(piece.size());
    g.values.insert(g.values.end(), piece.begin(), piece.end());
  });
  return g;
}

}  // namespace

TEST_CASE("a float model exports views of its parameters, a double model copies") {
  const ModelConfig config = resolve_model_config("tiny");
  Model<float> model(config);
  model.init_random(3);
  const auto tensors = model.export_tensors();
  CHECK(tensors.size() == model.param_infos().size() + 2 * size_t(config.num_nextn_predict_layers));
  for (const auto& entry : tensors) {  // not a structured binding: INFO's lambda captures the name
    const std::string& name = entry.first;
    const Tensor& t = entry.second;
    INFO(name);
    CHECK(t.dtype() == DType::F32);
    CHECK(t.data<float>() == model.params().data() + offset_of(model, name));
  }

  Model<double> twin(config);
  twin.init_random(3);
  for (const auto& entry : twin.export_tensors()) {
    const std::string& name = entry.first;
    const Tensor& t = entry.second;
    INFO(name);
    const ParamInfo* p = twin.find_param(name);
    if (!p) continue;  // the MTP copies
    const double* values = twin.params().data() + p->offset;
    CHECK(static_cast<const void*>(t.data<float>()) != static_cast<const void*>(values));
    for (int64_t i = 0; i < t.numel(); ++i) REQUIRE(t.data<float>()[i] == float(values[i]));
  }
}

TEST_CASE("AdamW hands its moments over whole in one process, in pieces over ranks") {
  auto comm = dist::make_comm({.timeout_s = 120});
  const ModelConfig config = resolve_model_config("tiny");
  const Model<float> model(config);
  const auto n = int64_t(model.params().size());
  AdamW optimizer(model.param_infos(), n, {}, comm.get());
  const std::vector<float> m = ramp(size_t(n), 1), v = ramp(size_t(n), -5);
  optimizer.load_state(m, v);

  const int64_t chunk = n / 3 + 1;  // pieces that cut across the ranks' parts
  const Gathered first = gather(optimizer, AdamW::Moment::First, chunk);
  CHECK(first.values == m);
  if (comm->size() == 1) {  // the optimizer's own array, not a copy
    CHECK(first.sizes == std::vector<size_t>{size_t(n)});
    CHECK(first.first == optimizer.m().data());
  } else {
    CHECK(first.sizes == std::vector<size_t>{size_t(chunk), size_t(chunk), size_t(n - 2 * chunk)});
  }
  CHECK(gather(optimizer, AdamW::Moment::Second, chunk).values == v);

  CHECK_THROWS_WITH_AS(optimizer.load_state(std::span(m).first(size_t(n) - 1), v),
                       doctest::Contains("optimizer state of"), Error);
  optimizer.reset();
  CHECK(gather(optimizer, AdamW::Moment::Second, chunk).values == std::vector<float>(size_t(n), 0.0f));
  CHECK(optimizer.steps() == 0);
}

TEST_CASE("optimizer.safetensors round trip from any number of ranks") {
  auto comm = dist::make_comm({.timeout_s = 120});
  TempDir dir;  // rank 0's is written; the other ranks' stay empty
  const ModelConfig config = resolve_model_config("tiny");
  const Model<float> model(config);
  const auto n = int64_t(model.params().size());
  AdamW optimizer(model.param_infos(), n, {}, comm.get());
  const std::vector<float> m = ramp(size_t(n), 0.5f), v = ramp(size_t(n), 7);
  optimizer.load_state(m, v);
  write_optimizer_state(dir.path.string(), optimizer);
  if (comm->rank() != 0) {
    CHECK(dir.count() == 0);
    return;
  }
  const auto [m2, v2] = read_optimizer_state(dir.path.string(), size_t(n));
  CHECK(m2 == m);
  CHECK(v2 == v);

  // Loaded back into one process, straight from the file.
  AdamW single(model.param_infos(), n, {});
  load_optimizer_state(dir.path.string(), single);
  CHECK(single.m() == m);
  CHECK(single.v() == v);

  CHECK_THROWS_WITH_AS(read_optimizer_state(dir.path.string(), size_t(n) + 1), doctest::Contains("does not match"),
                       Error);
}
