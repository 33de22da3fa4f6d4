#pragma once
// Matmul FLOPs per token of the model as libcore computes it: the numerator of throughput and MFU figures.
// Counted, at 2 FLOPs per multiply-add: every linear layer a token passes through (attention projections, router,
// the experts it is routed to, shared experts or the dense MLP, lm_head, MTP modules) and the causal attention
// products. Not counted: norms, RoPE, softmax, SwiGLU, top-k routing, the embedding lookup and the loss, all O(d)
// per token and a rounding error next to the GEMMs.
#include <cstdint>

#include "ds/config.h"

namespace ds {

struct FlopCount {
  double forward_per_token = 0;
  double training_per_token = 0;  // forward + backward
};

// Attention is counted as a causal sequence of seq_len tokens: on average a query sees (seq_len + 1) / 2 keys
// (the useful work; the CPU kernel computes the full square and masks it). include_mtp adds the MTP modules, which
// run in training and not in generation.
FlopCount model_flops(const ModelConfig& config, int64_t seq_len, bool include_mtp = true);

}  // namespace ds
