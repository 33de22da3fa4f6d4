#include "ds/model_dir.h"

#include <nlohmann/json.hpp>

#include <filesystem>

#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/quantize.h"
#include "ds/safetensors.h"

namespace fs = std::filesystem;

namespace ds {

void write_model_dir(const std::string& dir, const Model<float>& model, const Tokenizer& tokenizer) {
  fs::create_directories(dir);
  write_file_atomic(dir + "/config.json", config_to_json(model.config()).dump(2) + "\n");
  const nlohmann::json generation = {{"bos_token_id", tokenizer.bos_id()},
                                     {"eos_token_id", tokenizer.eos_id()},
                                     {"do_sample", true},
                                     {"temperature", 0.6},
                                     {"top_p", 0.95}};
  write_file_atomic(dir + "/generation_config.json", generation.dump(2) + "\n");
  tokenizer.save(dir);
  safetensors::save_model(dir, model.export_tensors());
}

std::string resolve_model_dir(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) fail("{}: not a model or run directory", path);
  if (fs::exists(path + "/config.json")) return path;
  if (fs::exists(path + "/latest")) {
    const std::string target = fs::canonical(path + "/latest", ec).string();
    if (ec) fail("{}/latest: dangling link ({})", path, ec.message());
    return target;
  }
  fail("{}: no config.json and no latest checkpoint", path);
}

LoadedModel load_model_dir(const std::string& path) {
  const std::string dir = resolve_model_dir(path);
  ModelConfig config = load_config(dir + "/config.json");
  // Falling back to another tokenizer would give garbage silently, so a model directory must carry its own.
  if (!fs::exists(dir + "/tokenizer.json")) fail("{}: no tokenizer.json in the model directory", dir);
  Tokenizer tokenizer = Tokenizer::load(dir + "/tokenizer.json");
  if (tokenizer.vocab_size() > size_t(config.vocab_size))
    fail("{}: tokenizer has {} tokens, more than vocab_size {}", dir, tokenizer.vocab_size(), config.vocab_size);
  Model<float> model(config);
  load_weights(dir, model);
  return {dir, config, std::move(model), std::move(tokenizer)};
}

void load_weights(const std::string& dir, Model<float>& model) {
  safetensors::ModelFiles files(dir);
  // FP8 checkpoints (ds-quantize, DeepSeek's releases) load dequantized with their weight_scale_inv.
  model.load([&](const std::string& name) { return quant::read_dequantized(files, name, dir); }, dir);
}

}  // namespace ds
