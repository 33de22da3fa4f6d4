// model_flops against hand-computed counts for the tiny preset, and against the parameter count.
#include <doctest/doctest.h>

#include "ds/config.h"
#include "ds/flops.h"

using namespace ds;

// tiny: vocab 320, hidden 32, dense MLP 64, experts 16 wide, 2 layers (layer 0 dense, layer 1 MoE), 2 heads,
// 4 routed experts (2 per token) + 1 shared, q_lora 16, kv_lora 16, nope 8, rope 4, v 8, one MTP module (MoE).
TEST_CASE("model_flops of the tiny preset, by hand") {
  const ModelConfig c = resolve_model_config("tiny");
  // Multiply-adds per token of one attention's projections:
  //   q_a 32*16 = 512, q_b 16*(2*12) = 384, kv_a 32*(16+4) = 640, kv_b 16*(2*(8+8)) = 512, o_proj (2*8)*32 = 512.
  const double projections = 512 + 384 + 640 + 512 + 512;  // 2560
  // seq_len 7: a query sees (7+1)/2 = 4 keys on average; per key 2 heads * (12 for q.k + 8 for p.v) = 40.
  const double attention = 4 * 40;                    // 160
  const double dense = 3 * 32 * 64;                   // gate, up, down: 6144
  const double moe = 32 * 4 + (2 + 1) * 3 * 32 * 16;  // router 128 + 3 experts of 1536: 4736
  const double head = 32 * 320;                       // 10240
  const double eh_proj = 64 * 32;                     // 2048
  // Layer 0 dense, layer 1 MoE, lm_head: 26560. The MTP module: 19744.
  const double main = (projections + attention + dense) + (projections + attention + moe) + head;
  const double mtp = eh_proj + (projections + attention + moe) + head;
  const double forward = 2 * (main + mtp);  // 92608 FLOPs

  const FlopCount with_mtp = model_flops(c, 7);
  CHECK(with_mtp.forward_per_token == doctest::Approx(forward));
  CHECK(with_mtp.training_per_token == doctest::Approx(3 * forward));
  CHECK(model_flops(c, 7, false).forward_per_token == doctest::Approx(2 * main));
}

TEST_CASE("doubling seq_len changes only the attention products") {
  const ModelConfig c = resolve_model_config("tiny");
  // seq_len 8 -> 16: (16+1)/2 - (8+1)/2 = 4 more keys per query, 40 multiply-adds each, in 3 blocks (2 + MTP).
  const double added = 2 * 3 * (4 * 40);
  CHECK(model_flops(c, 16).forward_per_token - model_flops(c, 8).forward_per_token == doctest::Approx(added));
  CHECK(model_flops(c, 16, false).forward_per_token - model_flops(c, 8, false).forward_per_token ==
        doctest::Approx(2 * 2 * (4 * 40)));
}

TEST_CASE("linear-layer FLOPs agree with the active parameter count") {
  // Without MTP and attention products, forward FLOPs are 2 per active matrix weight, less the embedding (a lookup)
  // and the vectors: final norm, per layer two block norms, q_a_layernorm and kv_a_layernorm, router bias in MoE.
  for (const char* name : {"tiny", "demo", "small"}) {
    const ModelConfig c = resolve_model_config(name);
    const int64_t d = c.hidden_size, L = c.num_hidden_layers, moe_layers = L - c.first_k_dense_replace;
    const int64_t vectors = d + L * (2 * d + c.q_lora_rank + c.kv_lora_rank) + moe_layers * c.n_routed_experts;
    const double linear = double(count_params(c).active - c.vocab_size * d - vectors);
    // With seq_len 1 every query sees exactly 1 key.
    const double products = double(L * c.num_attention_heads * (c.qk_head_dim() + c.v_head_dim));
    CHECK(model_flops(c, 1, false).forward_per_token == doctest::Approx(2 * (linear + products)));
  }
}
