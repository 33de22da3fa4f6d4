#pragma once
// Model directories (Hugging Face layout): config.json, model.safetensors (or shards with an index), the tokenizer
// files and generation_config.json. Weights load as F32 whether the directory holds them in F32, BF16 or FP8.
#include <string>

#include "ds/config.h"
#include "ds/model.h"
#include "ds/tokenizer.h"

namespace ds {

// Writes config.json, model.safetensors, the tokenizer files and generation_config.json into dir.
void write_model_dir(const std::string& dir, const Model<float>& model, const Tokenizer& tokenizer);

struct LoadedModel {
  std::string dir;  // the model directory actually read
  ModelConfig config;
  Model<float> model;
  Tokenizer tokenizer;
};
// A model directory, or a run directory (meaning its latest checkpoint).
std::string resolve_model_dir(const std::string& path);
LoadedModel load_model_dir(const std::string& path);
// Reads the weights of model directory `dir` into model in place (its shapes must match), with no second model.
void load_weights(const std::string& dir, Model<float>& model);

}  // namespace ds
