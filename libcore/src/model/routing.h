#pragma once
// DeepSeekMoE expert choice for one token (docs/architecture.md#deepseekmoe-routing), shared by training and inference.
#include <cstdint>

#include "ds/config.h"

namespace ds {

// From the token's scores s [n_routed_experts] (sigmoid or softmax of the router logits) and the correction bias
// (null when the routing has none), writes the num_experts_per_tok chosen experts and their weights. The bias only
// affects which experts are chosen; weights come from s, renormalised when norm_topk_prob, times
// routed_scaling_factor. Ties go to the lower expert index.
template <typename T>
void route_token(const ModelConfig& config, const T* scores, const T* bias, int32_t* chosen, T* weights);

}  // namespace ds
