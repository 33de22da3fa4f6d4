#include "ds/config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>

#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/jsonl.h"
#include "ds/memory.h"

namespace ds {

namespace {

double yarn_mscale(double factor, double mscale) { return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0; }

const char* topk_method_name(TopkMethod m) {
  switch (m) {
    case TopkMethod::NoauxTc:
      return "noaux_tc";
    case TopkMethod::Greedy:
      return "greedy";
    case TopkMethod::GroupLimitedGreedy:
      return "group_limited_greedy";
  }
  return "";
}

// Keys of released configs that do not change what is computed here.
const std::set<std::string> kIgnoredKeys = {"architectures",
                                            "model_type",
                                            "auto_map",
                                            "torch_dtype",
                                            "dtype",
                                            "transformers_version",
                                            "use_cache",
                                            "num_key_value_heads",
                                            "attention_dropout",
                                            "initializer_range",
                                            "ep_size",
                                            "pretraining_tp",
                                            "aux_loss_alpha",
                                            "seq_aux",
                                            "pad_token_id",
                                            "head_dim",
                                            "_name_or_path",
                                            "output_router_logits",
                                            "router_aux_loss_coef",
                                            "quantization_config",
                                            "mlp_bias",
                                            "rope_interleave",
                                            "hidden_act",
                                            "attention_bias"};

void parse_rope(ModelConfig& c, const nlohmann::json& rope, const std::string& source) {
  if (rope.is_null()) return;
  if (!rope.is_object()) fail("{}: rope_scaling must be an object or null", source);
  for (const auto& [key, value] : rope.items()) {
    if (key == "type" || key == "rope_type") {
      const std::string type = value.get<std::string>();
      if (type == "yarn")
        c.rope_scaling.yarn = true;
      else if (type != "default")
        fail("{}: rope type '{}' is not supported (yarn or default)", source, type);
    } else if (key == "factor") {
      c.rope_scaling.factor = value.get<double>();
    } else if (key == "original_max_position_embeddings") {
      if (!value.is_number_integer())
        fail("{}: rope_scaling.original_max_position_embeddings must be an integer", source);
      c.rope_scaling.original_max_position_embeddings = value.get<int64_t>();
    } else if (key == "beta_fast") {
      c.rope_scaling.beta_fast = value.get<double>();
    } else if (key == "beta_slow") {
      c.rope_scaling.beta_slow = value.get<double>();
    } else if (key == "mscale") {
      c.rope_scaling.mscale = value.get<double>();
    } else if (key == "mscale_all_dim") {
      c.rope_scaling.mscale_all_dim = value.get<double>();
    } else if (key == "rope_theta") {
      c.rope_theta = value.get<double>();
    } else {
      fail("{}: unknown rope_scaling key '{}'", source, key);
    }
  }
}

ModelConfig preset(const std::string& name) {
  ModelConfig c;
  c.topk_method = TopkMethod::NoauxTc;
  c.scoring_func = ScoringFunc::Sigmoid;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.num_nextn_predict_layers = 1;
  c.n_shared_experts = 1;
  if (name == "tiny") {  // unit and end-to-end tests: every architectural feature, well under 1M parameters
    c.vocab_size = 320, c.hidden_size = 32, c.intermediate_size = 64, c.moe_intermediate_size = 16;
    c.num_hidden_layers = 2, c.first_k_dense_replace = 1, c.num_attention_heads = 2;
    c.n_routed_experts = 4, c.num_experts_per_tok = 2, c.n_group = 2, c.topk_group = 1;
    c.q_lora_rank = 16, c.kv_lora_rank = 16, c.qk_nope_head_dim = 8, c.qk_rope_head_dim = 4, c.v_head_dim = 8;
    c.max_position_embeddings = 256;
  } else if (name == "demo") {  // learns the built-in arithmetic on a 2-core CPU in minutes
    c.vocab_size = 320, c.hidden_size = 192, c.intermediate_size = 512, c.moe_intermediate_size = 128;
    c.num_hidden_layers = 4, c.first_k_dense_replace = 1, c.num_attention_heads = 4;
    c.n_routed_experts = 8, c.num_experts_per_tok = 2, c.n_group = 2, c.topk_group = 1;
    c.q_lora_rank = 96, c.kv_lora_rank = 64, c.qk_nope_head_dim = 32, c.qk_rope_head_dim = 16, c.v_head_dim = 32;
    c.max_position_embeddings = 512;
  } else if (name == "tiny-dense" || name == "demo-dense") {  // distillation students: dense, no MTP
    c.n_routed_experts = 0, c.n_shared_experts = 0, c.num_nextn_predict_layers = 0;
    c.vocab_size = 320, c.max_position_embeddings = name == "tiny-dense" ? 256 : 512;
    if (name == "tiny-dense") {
      c.hidden_size = 32, c.intermediate_size = 64, c.num_hidden_layers = 2, c.num_attention_heads = 2;
      c.q_lora_rank = 0, c.kv_lora_rank = 16, c.qk_nope_head_dim = 8, c.qk_rope_head_dim = 4, c.v_head_dim = 8;
    } else {  // about a quarter of demo's activated parameters
      c.hidden_size = 128, c.intermediate_size = 160, c.num_hidden_layers = 3, c.num_attention_heads = 4;
      c.q_lora_rank = 0, c.kv_lora_rank = 32, c.qk_nope_head_dim = 16, c.qk_rope_head_dim = 8, c.v_head_dim = 16;
    }
  } else if (name == "small") {  // GPU scale: about 0.6B total, 0.2B active
    c.vocab_size = 32768, c.hidden_size = 1024, c.intermediate_size = 2816, c.moe_intermediate_size = 512;
    c.num_hidden_layers = 12, c.first_k_dense_replace = 1, c.num_attention_heads = 16;
    c.n_routed_experts = 32, c.num_experts_per_tok = 4, c.n_group = 4, c.topk_group = 2;
    c.q_lora_rank = 384, c.kv_lora_rank = 256, c.qk_nope_head_dim = 64, c.qk_rope_head_dim = 32, c.v_head_dim = 64;
    c.max_position_embeddings = 4096;
  } else {
    fail("unknown model config '{}' (presets: tiny, demo, small, tiny-dense, demo-dense; or a config.json path)", name);
  }
  return c;
}

// How many of the num_hidden_layers main layers are MoE (see is_moe_layer), without visiting each.
int64_t moe_layer_count(const ModelConfig& c) {
  if (c.n_routed_experts == 0) return 0;
  const int64_t f = c.moe_layer_freq;
  auto multiples_below = [&](int64_t x) { return x / f + (x % f != 0); };  // of f in [0, x)
  return multiples_below(c.num_hidden_layers) - multiples_below(std::min(c.first_k_dense_replace, c.num_hidden_layers));
}

// ParamCount in N: int64_t for count_params, double to check first that the counts fit in int64_t. Only the parts the
// model has are computed, so that every product is part of a count and bounding the counts bounds them all.
template <typename N>
struct Counts {
  N total, active, mtp;
};
template <typename N>
Counts<N> count(const ModelConfig& c) {
  const N d = N(c.hidden_size), H = N(c.num_attention_heads), nope = N(c.qk_nope_head_dim),
          rope = N(c.qk_rope_head_dim), q_lora = N(c.q_lora_rank), kv_lora = N(c.kv_lora_rank), v = N(c.v_head_dim),
          experts = N(c.n_routed_experts), shared = N(c.n_shared_experts);
  const N layers = N(c.num_hidden_layers), moe_layers = N(moe_layer_count(c)), dense_layers = layers - moe_layers,
          mtp_layers = N(c.num_nextn_predict_layers);
  const bool mtp_moe = c.is_moe_layer(c.num_hidden_layers);
  const N q = q_lora > 0 ? d * q_lora + q_lora + q_lora * H * (nope + rope) : d * H * (nope + rope);
  const N attn = q + d * (kv_lora + rope) + kv_lora + kv_lora * H * (nope + v) + H * v * d;
  const N dense = dense_layers > 0 || (mtp_layers > 0 && !mtp_moe) ? 3 * d * N(c.intermediate_size) : N(0);
  N moe_total = 0, moe_active = 0;
  if (moe_layers > 0 || (mtp_layers > 0 && mtp_moe)) {
    const N expert = 3 * d * N(c.moe_intermediate_size), router = experts * d + experts;
    moe_total = router + (experts + shared) * expert;
    moe_active = router + (N(c.num_experts_per_tok) + shared) * expert;
  }
  const N outside = N(c.vocab_size) * d * (c.tie_word_embeddings ? 1 : 2) + d;  // embeddings, head, final norm
  const N common = outside + layers * (attn + 2 * d) + dense_layers * dense;
  const N mtp =
      mtp_layers > 0 ? mtp_layers * (attn + 2 * d + (mtp_moe ? moe_total : dense) + 2 * d + 2 * d * d + d) : N(0);
  return {common + moe_layers * moe_total, common + moe_layers * moe_active, mtp};
}

}  // namespace

bool ModelConfig::is_moe_layer(int64_t layer) const {
  if (n_routed_experts == 0) return false;
  if (layer >= num_hidden_layers) return true;
  return layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
}

double ModelConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(double(qk_head_dim()));
  if (rope_scaling.yarn && rope_scaling.mscale_all_dim != 0.0) {
    const double m = yarn_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](int64_t v, const char* key) {
    if (v <= 0) fail("{}: {} must be positive, got {}", source, key, v);
  };
  auto non_negative = [&](int64_t v, const char* key) {
    if (v < 0) fail("{}: {} must be >= 0, got {}", source, key, v);
  };
  auto positive_real = [&](double v, const char* key) {
    if (!(v > 0) || !std::isfinite(v)) fail("{}: {} must be a positive number, got {}", source, key, v);
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(kv_lora_rank, "kv_lora_rank");
  positive(qk_nope_head_dim, "qk_nope_head_dim");
  positive(qk_rope_head_dim, "qk_rope_head_dim");
  positive(v_head_dim, "v_head_dim");
  positive(max_position_embeddings, "max_position_embeddings");
  positive(moe_layer_freq, "moe_layer_freq");
  non_negative(q_lora_rank, "q_lora_rank");
  non_negative(first_k_dense_replace, "first_k_dense_replace");
  non_negative(num_nextn_predict_layers, "num_nextn_predict_layers");
  non_negative(n_routed_experts, "n_routed_experts");
  non_negative(n_shared_experts, "n_shared_experts");
  non_negative(intermediate_size, "intermediate_size");
  non_negative(moe_intermediate_size, "moe_intermediate_size");
  non_negative(num_experts_per_tok, "num_experts_per_tok");
  // Token ids and positions are 32-bit in batches, shards and the kernels.
  if (vocab_size > INT32_MAX)
    fail("{}: vocab_size {} exceeds the limit of {} (32-bit token ids)", source, vocab_size, INT32_MAX);
  if (max_position_embeddings > INT32_MAX)
    fail("{}: max_position_embeddings {} exceeds the limit of {} (32-bit positions)", source, max_position_embeddings,
         INT32_MAX);
  if (qk_rope_head_dim % 2) fail("{}: qk_rope_head_dim must be even, got {}", source, qk_rope_head_dim);
  if (bos_token_id < 0 || bos_token_id >= vocab_size || eos_token_id < 0 || eos_token_id >= vocab_size)
    fail("{}: bos_token_id / eos_token_id must lie in [0, vocab_size)", source);
  positive_real(rms_norm_eps, "rms_norm_eps");
  positive_real(routed_scaling_factor, "routed_scaling_factor");
  positive_real(rope_theta, "rope_theta");
  if (rope_theta <= 1) fail("{}: rope_theta must exceed 1, got {}", source, rope_theta);
  if (n_routed_experts == 0 || moe_layer_count(*this) < num_hidden_layers)  // some layer is dense
    positive(intermediate_size, "intermediate_size");
  if (n_routed_experts > 0) {
    positive(moe_intermediate_size, "moe_intermediate_size");
    positive(num_experts_per_tok, "num_experts_per_tok");
    positive(n_group, "n_group");
    if (n_routed_experts % n_group)
      fail("{}: n_routed_experts {} is not divisible by n_group {}", source, n_routed_experts, n_group);
    if (topk_group < 1 || topk_group > n_group) fail("{}: topk_group must lie in [1, n_group]", source);
    if (num_experts_per_tok > topk_group * (n_routed_experts / n_group))
      fail("{}: num_experts_per_tok {} exceeds the experts in topk_group groups", source, num_experts_per_tok);
    if (topk_method == TopkMethod::NoauxTc && n_routed_experts / n_group < 2)
      fail("{}: noaux_tc routing needs at least 2 experts per group", source);
  }
  if (rope_scaling.yarn) {
    if (!(rope_scaling.factor >= 1.0) || !std::isfinite(rope_scaling.factor))
      fail("{}: rope_scaling.factor must be >= 1", source);
    positive(rope_scaling.original_max_position_embeddings, "rope_scaling.original_max_position_embeddings");
    positive_real(rope_scaling.beta_fast, "rope_scaling.beta_fast");
    positive_real(rope_scaling.beta_slow, "rope_scaling.beta_slow");
    if (!std::isfinite(rope_scaling.mscale) || !std::isfinite(rope_scaling.mscale_all_dim))
      fail("{}: rope_scaling.mscale and mscale_all_dim must be finite", source);
  }
  // In double first, as the int64_t arithmetic of count_params must not overflow.
  const Counts<double> n = count<double>(*this);
  if (n.total + n.mtp > 0x1p62)
    fail("{}: the model would have {:.3g} parameters, too many to count", source, n.total + n.mtp);
}

ModelConfig config_from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: a model config must be a JSON object", source);
  ModelConfig c;
  c.n_group = 1, c.topk_group = 1, c.norm_topk_prob = false;
  bool has_scoring = false;
  try {
    for (const auto& item : j.items()) {
      const std::string& key = item.key();
      const nlohmann::json& value = item.value();
      // get<int64_t>() would convert a float such as 1e27 with undefined behaviour.
      auto i64 = [&] {
        if (!value.is_null() && !value.is_number_integer()) fail("{}: '{}' must be an integer", source, key);
        return value.is_null() ? int64_t(0) : value.get<int64_t>();
      };
      if (key == "vocab_size")
        c.vocab_size = i64();
      else if (key == "hidden_size")
        c.hidden_size = i64();
      else if (key == "intermediate_size")
        c.intermediate_size = i64();
      else if (key == "moe_intermediate_size")
        c.moe_intermediate_size = i64();
      else if (key == "num_hidden_layers")
        c.num_hidden_layers = i64();
      else if (key == "first_k_dense_replace")
        c.first_k_dense_replace = i64();
      else if (key == "moe_layer_freq")
        c.moe_layer_freq = i64();
      else if (key == "num_attention_heads")
        c.num_attention_heads = i64();
      else if (key == "n_routed_experts")
        c.n_routed_experts = i64();
      else if (key == "n_shared_experts")
        c.n_shared_experts = i64();
      else if (key == "num_experts_per_tok")
        c.num_experts_per_tok = i64();
      else if (key == "n_group")
        c.n_group = value.is_null() ? 1 : i64();
      else if (key == "topk_group")
        c.topk_group = value.is_null() ? 1 : i64();
      else if (key == "q_lora_rank")
        c.q_lora_rank = i64();
      else if (key == "kv_lora_rank")
        c.kv_lora_rank = i64();
      else if (key == "qk_nope_head_dim")
        c.qk_nope_head_dim = i64();
      else if (key == "qk_rope_head_dim")
        c.qk_rope_head_dim = i64();
      else if (key == "v_head_dim")
        c.v_head_dim = i64();
      else if (key == "max_position_embeddings")
        c.max_position_embeddings = i64();
      else if (key == "num_nextn_predict_layers")
        c.num_nextn_predict_layers = i64();
      else if (key == "bos_token_id")
        c.bos_token_id = i64();
      else if (key == "eos_token_id")
        c.eos_token_id = i64();
      else if (key == "rope_theta")
        c.rope_theta = value.get<double>();
      else if (key == "rms_norm_eps")
        c.rms_norm_eps = value.get<double>();
      else if (key == "routed_scaling_factor")
        c.routed_scaling_factor = value.get<double>();
      else if (key == "norm_topk_prob")
        c.norm_topk_prob = value.get<bool>();
      else if (key == "tie_word_embeddings")
        c.tie_word_embeddings = value.get<bool>();
      else if (key == "rope_scaling" || key == "rope_parameters")
        parse_rope(c, value, source);
      else if (key == "scoring_func") {
        const std::string s = value.get<std::string>();
        if (s == "sigmoid")
          c.scoring_func = ScoringFunc::Sigmoid;
        else if (s == "softmax")
          c.scoring_func = ScoringFunc::Softmax;
        else
          fail("{}: scoring_func '{}' is not supported (sigmoid, softmax)", source, s);
        has_scoring = true;
      } else if (key == "topk_method") {
        const std::string s = value.get<std::string>();
        if (s == "noaux_tc")
          c.topk_method = TopkMethod::NoauxTc;
        else if (s == "greedy")
          c.topk_method = TopkMethod::Greedy;
        else if (s == "group_limited_greedy")
          c.topk_method = TopkMethod::GroupLimitedGreedy;
        else
          fail("{}: topk_method '{}' is not supported (noaux_tc, greedy, group_limited_greedy)", source, s);
      } else if (kIgnoredKeys.count(key)) {
        if (key == "hidden_act" && value != "silu") fail("{}: hidden_act must be silu", source);
        if (key == "rope_interleave" && value != true) fail("{}: only rope_interleave true is supported", source);
        if (key == "attention_bias" && value != false) fail("{}: attention_bias is not supported", source);
      } else {
        fail("{}: unknown config key '{}'", source, key);
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail("{}: bad value in config: {}", source, json_error(e));
  }
  // Older configs omit scoring_func; it follows the routing method.
  if (!has_scoring) c.scoring_func = c.topk_method == TopkMethod::NoauxTc ? ScoringFunc::Sigmoid : ScoringFunc::Softmax;
  c.validate(source);
  return c;
}

nlohmann::json config_to_json(const ModelConfig& c) {
  nlohmann::json j;
  j["architectures"] = {"DeepseekV3ForCausalLM"};
  j["model_type"] = "deepseek_v3";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["first_k_dense_replace"] = c.first_k_dense_replace;
  j["moe_layer_freq"] = c.moe_layer_freq;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_attention_heads;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["n_group"] = c.n_group;
  j["topk_group"] = c.topk_group;
  j["topk_method"] = topk_method_name(c.topk_method);
  j["scoring_func"] = c.scoring_func == ScoringFunc::Sigmoid ? "sigmoid" : "softmax";
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["routed_scaling_factor"] = c.routed_scaling_factor;
  j["q_lora_rank"] = c.q_lora_rank > 0 ? nlohmann::json(c.q_lora_rank) : nlohmann::json(nullptr);
  j["kv_lora_rank"] = c.kv_lora_rank;
  j["qk_nope_head_dim"] = c.qk_nope_head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["v_head_dim"] = c.v_head_dim;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.yarn) {
    nlohmann::json r = {{"type", "yarn"},
                        {"factor", c.rope_scaling.factor},
                        {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings},
                        {"beta_fast", c.rope_scaling.beta_fast},
                        {"beta_slow", c.rope_scaling.beta_slow}};
    if (c.rope_scaling.mscale != 0.0) r["mscale"] = c.rope_scaling.mscale;
    if (c.rope_scaling.mscale_all_dim != 0.0) r["mscale_all_dim"] = c.rope_scaling.mscale_all_dim;
    j["rope_scaling"] = r;
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["hidden_act"] = "silu";
  j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["attention_bias"] = false;
  j["torch_dtype"] = "float32";
  return j;
}

ModelConfig load_config(const std::string& path, int bytes_per_param) {
  const std::string text = read_regular_file(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path, json_error(e));
  }
  const ModelConfig config = config_from_json(j, path);
  if (bytes_per_param > 0) check_model_memory(config, bytes_per_param, path);
  return config;
}

const char* const* preset_names() {
  static const char* const names[] = {"tiny", "demo", "small", "tiny-dense", "demo-dense", nullptr};
  return names;
}

bool is_preset(const std::string& name) {
  for (auto* n = preset_names(); *n; ++n)
    if (name == *n) return true;
  return false;
}

ModelConfig resolve_model_config(const std::string& name_or_path) {
  if (is_preset(name_or_path)) {
    ModelConfig c = preset(name_or_path);
    c.validate(name_or_path);
    check_model_memory(c, kTrainingBytesPerParam, name_or_path);
    return c;
  }
  if (name_or_path.find('/') == std::string::npos && name_or_path.find(".json") == std::string::npos)
    preset(name_or_path);  // unknown preset name: throws with the list of names
  return load_config(name_or_path, kTrainingBytesPerParam);
}

ParamCount count_params(const ModelConfig& c) {
  const Counts<int64_t> n = count<int64_t>(c);
  return {n.total, n.active, n.mtp};
}

void check_model_memory(const ModelConfig& c, int bytes_per_param, const std::string& source) {
  const ParamCount p = count_params(c);
  // Besides the parameters: the RoPE tables, a cos and a sin (double) per position and rotated pair.
  const double rope = double(c.max_position_embeddings) * double(c.qk_rope_head_dim) * double(sizeof(double));
  require_memory(double(p.total + p.mtp) * bytes_per_param + rope,
                 fmt::format("{}: the model ({} parameters at {} B, RoPE tables for {} positions)", source,
                             p.total + p.mtp, bytes_per_param, c.max_position_embeddings));
}

}  // namespace ds
