// Model weights as the inference engine reads them: F32, or FP8 kept as codes and block scales.
#include "ds/inference_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>

#include "ds/error.h"
#include "ds/model_dir.h"
#include "ds/quantize.h"
#include "ds/safetensors.h"

namespace ds {

namespace {

// The MTP modules are the layers numbered from num_hidden_layers on; inference runs the main model only.
bool is_mtp(const std::string& name, const ModelConfig& c) {
  constexpr std::string_view prefix = "model.layers.";
  if (!name.starts_with(prefix)) return false;
  int64_t layer = 0;
  const auto [end, ec] = std::from_chars(name.data() + prefix.size(), name.data() + name.size(), layer);
  return ec == std::errc() && layer >= c.num_hidden_layers;
}

WeightMatrix view_f32(const float* values, const Shape& shape) {
  WeightMatrix m;
  m.rows = shape[0];
  m.cols = shape.size() == 2 ? shape[1] : 1;
  m.f32 = values;
  return m;
}

}  // namespace

InferenceWeights::InferenceWeights(const Model<float>& model) : config_(model.config()), source_("model") {
  for (const ParamInfo& p : model.param_infos())
    if (!is_mtp(p.name, config_)) add(p.name, p.shape, view_f32(model.params().data() + p.offset, p.shape));
}

InferenceWeights::InferenceWeights(ModelConfig config, std::string source)
    : config_(std::move(config)), source_(std::move(source)) {}

void InferenceWeights::add(const std::string& name, const Shape& shape, const WeightMatrix& matrix,
                           const std::vector<Tensor>& storage) {
  tensors_.insert_or_assign(name, Entry{shape, matrix});
  storage_.insert(storage_.end(), storage.begin(), storage.end());
}

const InferenceWeights::Entry& InferenceWeights::find(const std::string& name, const Shape& shape) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) fail("{}: tensor '{}' is missing", source_, name);
  if (it->second.shape != shape)
    fail("{}: tensor '{}' has shape {}, the config needs {}", source_, name, shape_str(it->second.shape),
         shape_str(shape));
  return it->second;
}

WeightMatrix InferenceWeights::matrix(const std::string& name, const Shape& shape) const {
  return find(name, shape).matrix;
}

const float* InferenceWeights::vector(const std::string& name, int64_t n) const {
  return find(name, {n}).matrix.f32;  // FP8 tensors are 2-D, so a vector is F32
}

int64_t InferenceWeights::bytes() const {
  int64_t total = 0;
  for (const auto& [name, entry] : tensors_) total += entry.matrix.bytes();
  return total;
}

bool InferenceWeights::fp8() const {
  return std::ranges::any_of(tensors_, [](const auto& item) { return item.second.matrix.fp8(); });
}

InferenceModel load_inference_model(const std::string& path) {
  const std::string dir = resolve_model_dir(path);
  const ModelConfig config = load_config(dir + "/config.json", kFp8BytesPerParam);
  // As load_model_dir: a model directory must carry its own tokenizer, one that fits the vocabulary.
  if (!std::filesystem::exists(dir + "/tokenizer.json")) fail("{}: no tokenizer.json in the model directory", dir);
  Tokenizer tokenizer = Tokenizer::load(dir + "/tokenizer.json");
  if (tokenizer.vocab_size() > size_t(config.vocab_size))
    fail("{}: tokenizer has {} tokens, more than vocab_size {}", dir, tokenizer.vocab_size(), config.vocab_size);

  const safetensors::ModelFiles files(dir);
  InferenceWeights weights(config, dir);
  for (const std::string& name : files.names()) {
    if (name.ends_with("_scale_inv")) {  // read with its weight
      const std::string weight = name.substr(0, name.size() - std::string_view("_scale_inv").size());
      const safetensors::TensorInfo* w = files.find(weight);
      if (!w || w->dtype != DType::F8_E4M3) fail("{}: tensor '{}' scales no F8_E4M3 weight '{}'", dir, name, weight);
      continue;
    }
    if (is_mtp(name, config)) continue;
    const std::string what = fmt::format("{}: tensor '{}'", dir, name);
    Tensor t = files.get(name);
    if (t.dtype() == DType::F8_E4M3) {
      const std::string scale = name + "_scale_inv";
      if (!files.find(scale)) fail("{} is F8_E4M3 but there is no '{}'", what, scale);
      const Tensor s = files.get(scale);
      weights.add(name, t.shape(), fp8_matrix(t, s, what), {t, s});
      continue;
    }
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16 && t.dtype() != DType::F64)
      fail("{} is {}, not a floating-point tensor", what, dtype_name(t.dtype()));
    if (t.ndim() < 1 || t.ndim() > 2)
      fail("{} has shape {}; the model has 1-D and 2-D tensors", what, shape_str(t.shape()));
    if (t.dtype() != DType::F32) t = quant::convert(t, DType::F32);
    const float* v = t.data<float>();
    if (!std::all_of(v, v + t.numel(), [](float x) { return std::isfinite(x); })) fail("{} holds NaN or Inf", what);
    weights.add(name, t.shape(), view_f32(v, t.shape()), {t});
  }
  return {dir, std::move(weights), std::move(tokenizer)};
}

InferenceWeights inference_weights(const Model<float>& model, bool fp8) {
  const ModelConfig& c = model.config();
  InferenceWeights out(c, "model");
  for (const ParamInfo& p : model.param_infos()) {
    if (is_mtp(p.name, c)) continue;
    const float* values = model.params().data() + p.offset;
    const bool quantize = fp8 && p.shape.size() == 2 && p.name.ends_with(".weight") && !quant::fp8_keeps(p.name);
    if (quantize) {
      const quant::QuantizedWeight q = quant::quantize_weight(Tensor::view(DType::F32, p.shape, values, nullptr));
      out.add(p.name, p.shape, fp8_matrix(q.weight, q.scale_inv, p.name), {q.weight, q.scale_inv});
    } else {
      const Tensor copy = Tensor::from_f32({values, size_t(shape_numel(p.shape))}, p.shape);
      out.add(p.name, p.shape, view_f32(copy.data<float>(), p.shape), {copy});
    }
  }
  return out;
}

}  // namespace ds
