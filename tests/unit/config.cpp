#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <fstream>

#include "address_limit.h"
#include "ds/config.h"
#include "ds/error.h"
#include "temp_dir.h"

using namespace ds;

namespace {
// DeepSeek-V3 / R1 671B, as its released config.json states it (docs/architecture.md#config-fields).
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
  j = v3_671b();
  j["n_routed_experts"] = -4;  // was a std::vector length error
  refuses(j, "n_routed_experts must be >= 0, got -4");
  j = v3_671b();
  j["vocab_size"] = 1000000000000;
  refuses(j, "vocab_size 1000000000000 exceeds the limit of 2147483647");
  j = v3_671b();
  j["max_position_embeddings"] = 4000000000000;
  refuses(j, "max_position_embeddings 4000000000000 exceeds the limit");
  j = v3_671b();
  j["num_hidden_layers"] = 1000000000000000000;  // counted without visiting each layer, so refused at once
  j["hidden_size"] = 1000000000000;
  refuses(j, "too many to count");
  j = v3_671b();
  j["moe_intermediate_size"] = -1;
  refuses(j, "moe_intermediate_size must be >= 0");
  j = v3_671b();
  j["rope_theta"] = 1;
  refuses(j, "rope_theta must exceed 1");
  j = v3_671b();
  j["routed_scaling_factor"] = 0;
  refuses(j, "routed_scaling_factor must be a positive number");
  j = v3_671b();
  j["rope_scaling"]["beta_slow"] = -1;
  refuses(j, "rope_scaling.beta_slow must be a positive number");
  CHECK_THROWS_AS(resolve_model_config("huge"), Error);
}

TEST_CASE("a model that cannot fit in memory is refused with the file, the size needed and the size available") {
  const TempDir dir;
  auto refused = [&](nlohmann::json j, int bytes_per_param) {
    const std::string path = dir / "config.json";
    std::ofstream(path) << j.dump();
    try {
      load_config(path, bytes_per_param);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const nlohmann::json tiny = config_to_json(resolve_model_config("tiny"));
  // Each was std::bad_alloc when the model was built; all are far beyond any machine's memory.
  for (const auto& [key, value] : {std::pair<const char*, int64_t>{"num_hidden_layers", 100000000},
                                   {"q_lora_rank", 1000000000000},
                                   {"num_nextn_predict_layers", 1000000},
                                   {"n_routed_experts", 100000000}}) {
    nlohmann::json j = tiny;
    j[key] = value;
    const std::string msg = refused(j, kTrainingBytesPerParam);
    CHECK_MESSAGE(msg.starts_with(dir / "config.json: the model ("), key << ": " << msg);
    CHECK_MESSAGE(msg.find(" parameters at 16 B, RoPE tables for 256 positions) needs ") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find(" GiB of memory, more than the ") != std::string::npos, msg);
  }
  // Under a 1 GiB limit `small` (0.6B parameters) fits for FP8 inference, not for training; tiny fits both.
  const nlohmann::json small = config_to_json(resolve_model_config("small"));
  const AddressSpaceLimit limit(uint64_t(1) << 30);
  CHECK(refused(small, kFp8BytesPerParam).empty());
  CHECK(refused(small, kTrainingBytesPerParam).find("at 16 B") != std::string::npos);
  CHECK(refused(tiny, kTrainingBytesPerParam).empty());
  CHECK_THROWS_WITH_AS(check_model_memory(resolve_model_config("tiny"), 1 << 20, "tiny"),
                       doctest::Contains("tiny: the model ("), Error);
}

TEST_CASE("parameter counts follow first_k_dense_replace and moe_layer_freq") {
  ModelConfig c = resolve_model_config("tiny");
  const ParamCount every = count_params(c);
  c.moe_layer_freq = 2;  // layer 1 of 2 is odd: dense now, as layer 0
  const ParamCount dense = count_params(c);
  const int64_t d = c.hidden_size, expert = 3 * d * c.moe_intermediate_size;
  const int64_t moe_layer = c.n_routed_experts * (d + 1) + (c.n_routed_experts + c.n_shared_experts) * expert;
  CHECK(every.total - dense.total == moe_layer - 3 * d * c.intermediate_size);
  c.moe_layer_freq = 1, c.first_k_dense_replace = 5;  // beyond the layers: all dense
  CHECK(count_params(c).total == dense.total);
  // Experts no layer has count nothing, and their size (4e18 x 1536 parameters) overflows nothing.
  c.num_nextn_predict_layers = 0, c.n_routed_experts = 4000000000000000000;
  CHECK_NOTHROW(c.validate("cfg.json"));
  CHECK(count_params(c).total == dense.total);
  CHECK(count_params(c).mtp == 0);
}
