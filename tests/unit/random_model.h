#pragma once
// Random models, configs and token sequences for the engine tests (CPU and GPU), with weights large enough that
// attention and routing are far from uniform.
#include <cstdint>
#include <random>
#include <vector>

#include "ds/config.h"
#include "ds/model.h"

namespace ds::test {

// Matrices are init_random's times matrix_scale.
inline Model<float> random_model(const ModelConfig& c, uint64_t seed, float matrix_scale = 15.0f) {
  Model<float> model(c);
  model.init_random(seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  for (const auto& p : model.param_infos())
    for (int64_t i = 0; i < shape_numel(p.shape); ++i) {
      float& w = model.params()[size_t(p.offset + i)];
      if (p.kind == ParamKind::Matrix) w *= matrix_scale;
      if (p.kind == ParamKind::RouterBias) w = normal(rng);
    }
  return model;
}

// tiny through the architecture's other branches: no q_lora, tied embeddings, YaRN, group-limited softmax routing.
inline ModelConfig tiny_variant() {
  ModelConfig c = resolve_model_config("tiny");
  c.q_lora_rank = 0;
  c.tie_word_embeddings = true;
  c.rope_scaling.yarn = true;
  c.rope_scaling.factor = 4;
  c.rope_scaling.original_max_position_embeddings = 4;
  c.rope_scaling.mscale_all_dim = 0.707;
  c.topk_method = TopkMethod::GroupLimitedGreedy;
  c.scoring_func = ScoringFunc::Softmax;
  return c;
}

inline std::vector<uint32_t> random_tokens(size_t n, uint64_t seed, int64_t vocab) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> t(n);
  for (auto& x : t) x = uint32_t(rng() % uint64_t(vocab));
  return t;
}

}  // namespace ds::test
