#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "ds/config.h"
#include "ds/error.h"

using namespace ds;

namespace {
// DeepSeek-V3 / R1 671B, as its released config.json states it (reference section 1).
nlohmann::json v3_671b() {
  return nlohmann::json::parse(R"({
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 129280,
    "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
    "first_k_dense_replace": 3, "moe_layer_freq": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
    "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
    "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}, "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-06, "hidden_act": "silu", "num_nextn_predict_layers": 1, "tie_word_embeddings": false,
    "bos_token_id": 0, "eos_token_id": 1, "attention_bias": false, "attention_dropout": 0.0,
    "initializer_range": 0.02, "ep_size": 1, "torch_dtype": "bfloat16", "use_cache": true,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]}})");
}
}  // namespace

TEST_CASE("the 671B config gives the published parameter counts and softmax scale") {
  const ModelConfig c = config_from_json(v3_671b(), "config.json");
  const ParamCount p = count_params(c);
  CHECK(p.total == 671026419200);
  CHECK(p.active == 37552297472);
  CHECK(p.mtp > 11500000000);
  CHECK(p.mtp < 11700000000);
  CHECK(c.softmax_scale() == doctest::Approx(0.135234).epsilon(1e-5));
}

TEST_CASE("V2-Lite's mscale gives its softmax scale; older configs default their scoring function") {
  nlohmann::json j = v3_671b();
  j["rope_scaling"]["mscale"] = 0.707;
  j["rope_scaling"]["mscale_all_dim"] = 0.707;
  j["topk_method"] = "greedy";
  j.erase("scoring_func");
  j["n_group"] = 1;
  j["topk_group"] = 1;
  const ModelConfig c = config_from_json(j, "v2lite.json");
  CHECK(c.softmax_scale() == doctest::Approx(0.114721).epsilon(1e-5));
  CHECK(c.scoring_func == ScoringFunc::Softmax);
}

TEST_CASE("config.json round trip and presets") {
  for (auto* name = preset_names(); *name; ++name) {
    const ModelConfig c = resolve_model_config(*name);
    const ModelConfig back = config_from_json(config_to_json(c), "roundtrip");
    CHECK(config_to_json(back) == config_to_json(c));
  }
  CHECK(count_params(resolve_model_config("tiny")).total < 1000000);
  const ParamCount demo = count_params(resolve_model_config("demo"));
  CHECK(demo.total > 1000000);
  CHECK(demo.total < 10000000);
  const ParamCount small = count_params(resolve_model_config("small"));
  CHECK(small.total > 100000000);
  CHECK(small.total < 1000000000);
}

TEST_CASE("bad configs are refused with the file name and the problem") {
  auto refuses = [](nlohmann::json j, const char* needle) {
    try {
      config_from_json(j, "cfg.json");
      FAIL("accepted: " << j.dump());
    } catch (const Error& e) {
      const std::string msg = e.what();
      CHECK_MESSAGE(msg.find("cfg.json") != std::string::npos, msg);
      CHECK_MESSAGE(msg.find(needle) != std::string::npos, msg);
    }
  };
  nlohmann::json j = v3_671b();
  j["hidden_sise"] = 7168;
  refuses(j, "unknown config key 'hidden_sise'");
  j = v3_671b();
  j["n_group"] = 3;
  refuses(j, "not divisible");
  j = v3_671b();
  j["qk_rope_head_dim"] = 63;
  refuses(j, "even");
  j = v3_671b();
  j["hidden_size"] = "big";
  refuses(j, "'hidden_size' must be an integer");
  j = v3_671b();
  j["routed_scaling_factor"] = "big";
  refuses(j, "bad value");
  j = v3_671b();
  j["hidden_size"] = 1.1e27;  // found by fuzzing: converting it to an integer was undefined behaviour
  refuses(j, "'hidden_size' must be an integer");
  j = v3_671b();
  j["topk_method"] = "magic";
  refuses(j, "magic");
  j = v3_671b();
  j["num_experts_per_tok"] = 200;
  refuses(j, "num_experts_per_tok");
  CHECK_THROWS_AS(resolve_model_config("huge"), Error);
}
