#pragma once
// The computation under an Engine (ds/engine.h), on one device: the model's weights, the latent caches of the
// sequences, and the batched forward over them. The engine keeps each sequence's tokens and length; a backend keeps
// its cache and is told which cached positions to forget.
#include <cstdint>
#include <memory>
#include <vector>

#include "ds/inference_model.h"
#include "ds/ops.h"

namespace ds {

// The weights one forward reads, by checkpoint name (shapes checked), shared by the backends.
struct MlpWeights {
  WeightMatrix gate, up, down;
  int64_t hidden = 0;
};
struct LayerWeights {
  const float *input_norm, *post_norm;
  WeightMatrix q_a, q_b, q_proj;  // q_a and q_b with q_lora_rank, else q_proj
  const float* q_norm = nullptr;
  WeightMatrix kv_a, kv_b, o_proj;
  const float* kv_norm;
  bool moe = false;
  MlpWeights mlp, shared;  // dense MLP, or the shared experts of a MoE layer (hidden 0: none)
  WeightMatrix router;
  const float* bias = nullptr;
  std::vector<MlpWeights> experts;
};
struct ForwardWeights {
  WeightMatrix embed, head;  // head is embed when tied
  const float* final_norm;
  std::vector<LayerWeights> layers;
};
ForwardWeights forward_weights(const InferenceWeights& weights);

class EngineBackend {
 public:
  virtual ~EngineBackend() = default;
  // One batched pass: row i appends token tokens[i] to sequence seq[i] at position pos[i] (rows of a sequence are
  // consecutive with rising positions, continuing its cache). Returns the logits [logit_rows.size(), vocab_size] of
  // the rows listed, in that order.
  virtual std::vector<float> extend(const std::vector<int64_t>& seq, const std::vector<int32_t>& pos,
                                    const std::vector<uint32_t>& tokens, const std::vector<int64_t>& logit_rows) = 0;
  // Keeps the first `length` cached positions of sequence seq; 0 frees what it holds.
  virtual void truncate(int64_t seq, int64_t length) = 0;
  virtual int64_t cache_value_bytes() const = 0;  // of one cached value
  // The weights changed in place (an optimizer step): a backend holding a copy of them copies them again.
  virtual void reload_weights() = 0;
};

#ifdef DS_CUDA
// On the current CUDA device: the weights copied there as BF16 (FP8 ones dequantized first), the caches as BF16.
std::unique_ptr<EngineBackend> make_cuda_backend(const InferenceWeights& weights);
#endif

}  // namespace ds
