#include "ds/flops.h"

namespace ds {

namespace {

// Multiply-adds per token of one MLA: projections (libcore/src/model/mla.cpp), then q.k over the dq dims and
// P.v over the dv dims of every head for each key the token attends to.
double attention_macs(const ModelConfig& c, int64_t seq_len) {
  const double d = double(c.hidden_size), H = double(c.num_attention_heads), rq = double(c.q_lora_rank),
               r = double(c.kv_lora_rank), dn = double(c.qk_nope_head_dim), dr = double(c.qk_rope_head_dim),
               dq = double(c.qk_head_dim()), dv = double(c.v_head_dim);
  const double q = c.q_lora_rank > 0 ? d * rq + rq * H * dq : d * H * dq;  // q_a + q_b, or q_proj
  const double kv = d * (r + dr) + r * H * (dn + dv);                      // kv_a_proj_with_mqa + kv_b_proj
  const double out = H * dv * d;                                           // o_proj
  const double keys = double(seq_len + 1) / 2.0;
  return q + kv + out + keys * H * (dq + dv);
}

// Multiply-adds per token of layer's feed-forward: the dense SwiGLU MLP, or the router, the experts the token is
// routed to and the shared experts (three matrices each).
double ffn_macs(const ModelConfig& c, int64_t layer) {
  const double d = double(c.hidden_size);
  if (!c.is_moe_layer(layer)) return 3 * d * double(c.intermediate_size);
  const double experts = double(c.num_experts_per_tok + c.n_shared_experts);
  return d * double(c.n_routed_experts) + experts * 3 * d * double(c.moe_intermediate_size);
}

}  // namespace

FlopCount model_flops(const ModelConfig& c, int64_t seq_len, bool include_mtp) {
  const double d = double(c.hidden_size), head = d * double(c.vocab_size);
  double macs = head;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) macs += attention_macs(c, seq_len) + ffn_macs(c, l);
  if (include_mtp)
    for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k)  // eh_proj [d, 2d], one block, the shared head
      macs += 2 * d * d + attention_macs(c, seq_len) + ffn_macs(c, c.num_hidden_layers + k) + head;
  FlopCount f;
  f.forward_per_token = 2 * macs;
  // The usual convention (Kaplan et al., PaLM's MFU): the backward costs twice the forward, one GEMM for the input
  // gradient and one for the weight gradient per forward GEMM.
  f.training_per_token = 3 * f.forward_per_token;
  return f;
}

}  // namespace ds
