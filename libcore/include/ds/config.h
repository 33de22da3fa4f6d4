#pragma once
// ModelConfig: the DeepSeek-V3 architecture hyper-parameters, read from and written to a Hugging Face config.json
// (DeepseekV3Config keys; V2's are accepted), plus the built-in presets `tiny`, `demo`, `small` and the dense
// (distillation student) presets `tiny-dense` and `demo-dense`.
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>

namespace ds {

enum class TopkMethod { NoauxTc, Greedy, GroupLimitedGreedy };  // V3 / V2-Lite / V2
enum class ScoringFunc { Sigmoid, Softmax };

struct RopeScaling {
  bool yarn = false;  // false: plain RoPE
  double factor = 1.0;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;  // 0 = absent
};

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // dense MLP width
  int64_t moe_intermediate_size = 0;  // width of each routed or shared expert
  int64_t num_hidden_layers = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  int64_t num_attention_heads = 0;
  int64_t n_routed_experts = 0;  // 0: a dense model
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  TopkMethod topk_method = TopkMethod::NoauxTc;
  ScoringFunc scoring_func = ScoringFunc::Sigmoid;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  int64_t q_lora_rank = 0;  // 0: q_proj without compression
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  int64_t num_nextn_predict_layers = 0;  // MTP modules
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const;  // counts MTP layers (index >= num_hidden_layers) as MoE when experts exist
  double softmax_scale() const;            // docs/architecture.md#softmax-scale
  // Throws ds::Error naming `source` when a value is out of range or inconsistent, or the parameters are too many to
  // count in int64_t.
  void validate(const std::string& source) const;
};

// Parses a config.json object. Unknown keys are an error (a misspelt key must not silently change the model); keys
// of released configs that do not change the computation (architectures, torch_dtype, ...) are accepted.
ModelConfig config_from_json(const nlohmann::json& j, const std::string& source);
nlohmann::json config_to_json(const ModelConfig& config);
// Bytes of memory a parameter takes on each path that holds a model: FP8 inference (the least any weight takes),
// a float model, and training (float weights, gradients and AdamW's two moments).
constexpr int kFp8BytesPerParam = 1, kFloatBytesPerParam = 4, kTrainingBytesPerParam = 16;

// A config.json file, refused (check_model_memory) when the model cannot fit in memory at bytes_per_param; 0 for a
// caller that streams the weights and holds none.
ModelConfig load_config(const std::string& path, int bytes_per_param = kFloatBytesPerParam);

// A preset name or a path to a config.json, for a new model to train (refused when it cannot fit in memory at
// kTrainingBytesPerParam). Throws ds::Error for an unknown name.
ModelConfig resolve_model_config(const std::string& name_or_path);
const char* const* preset_names();  // null-terminated
bool is_preset(const std::string& name);

struct ParamCount {
  int64_t total = 0;   // main model (embeddings, all layers, final norm, head)
  int64_t active = 0;  // per token: only num_experts_per_tok routed experts
  int64_t mtp = 0;     // MTP modules' own parameters, not the shared embedding and head
};
ParamCount count_params(const ModelConfig& config);  // of a validated config

// Throws ds::Error naming `source`, the bytes needed and those available (ds/memory.h) when the parameters
// (count_params, MTP included) at bytes_per_param and the RoPE tables do not fit in this machine's memory.
void check_model_memory(const ModelConfig& config, int bytes_per_param, const std::string& source);

}  // namespace ds
