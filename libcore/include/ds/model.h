#pragma once
// Model: the DeepSeek-V3 transformer (MLA, dense and DeepSeekMoE layers, MTP modules) with an explicit forward that
// keeps what the backward needs, and a backward that accumulates parameter gradients, as in llm.c.
// T is float for training and inference, double for gradient checks.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ds/config.h"
#include "ds/ops.h"
#include "ds/tensor.h"

namespace ds {

// The model's RoPE table, YaRN's attention factor included: one table for training, inference and the CUDA backend.
ops::RopeTable model_rope_table(const ModelConfig& c);

namespace dist {
class Comm;
}

enum class ParamKind {
  Matrix,      // linear weights and embeddings: trained, weight-decayed
  Vector,      // norm weights: trained, not decayed
  RouterBias,  // e_score_correction_bias: moved by the aux-loss-free balancing rule, not by gradients
};

struct ParamInfo {
  std::string name;  // Hugging Face checkpoint name, e.g. model.layers.0.self_attn.kv_b_proj.weight
  Shape shape;
  int64_t offset = 0;  // into Model::params()
  ParamKind kind = ParamKind::Matrix;
};

struct LossOptions {
  double mtp_weight = 0.3;     // lambda: L = L_main + lambda/D * sum_k L_mtp_k; 0 skips the MTP modules
  double balance_alpha = 0.0;  // sequence-wise balance loss weight
  // The main head's logits are divided by this before the softmax: its loss, target_logprobs() and entropies() are
  // those of the distribution sampled at this temperature (RL scores its samples so, as TRL and verl do).
  double temperature = 1.0;
};

struct ForwardStats {
  double loss = 0;                                // what backward differentiates: main + MTP + balance terms
  double main_loss = 0;                           // mean cross-entropy of the next-token prediction
  double mtp_loss = 0;                            // mean over MTP depths of their cross-entropy (0 without MTP)
  double balance_loss = 0;                        // alpha-weighted sequence-wise balance loss
  int64_t tokens = 0;                             // positions with a target
  std::vector<std::vector<int64_t>> expert_load;  // per MoE layer (MTP included): tokens routed to each expert
};

// Called by Model::backward when the gradients of the flat range [begin, end) are final: nothing later in that
// backward adds to them. Every parameter is in exactly one range per backward; the ranges are a layer each (the MTP
// modules, the final norm with the head, each block, the embeddings) and come from the end of the array to its
// start, the order the backward reaches them. Data-parallel training starts reducing them while the backward goes on.
using GradReady = std::function<void(int64_t begin, int64_t end)>;

template <typename T>
class Model {
 public:
  explicit Model(const ModelConfig& config);
  ~Model();
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;

  const ModelConfig& config() const;
  const std::vector<ParamInfo>& param_infos() const;
  std::vector<T>& params();
  const std::vector<T>& params() const;
  std::vector<T>& grads();
  const ParamInfo* find_param(const std::string& name) const;

  // Normal(0, 0.02) matrices (output projections scaled by 1/sqrt(2 * layers)), unit norms, zero router bias.
  void init_random(uint64_t seed);
  // Loads every parameter through get(name), which returns the tensor or an undefined Tensor when absent.
  // Extra tensors a checkpoint may hold (MTP copies of the embedding and head) are not asked for.
  void load(const std::function<Tensor(const std::string&)>& get, const std::string& source);
  // The checkpoint tensors (F32), named as Hugging Face and DeepSeek do, MTP copies of embed/head included.
  // In a float model they are views of the parameters, not copies: valid while the model lives, and they change
  // with params(); other models convert into new tensors.
  std::vector<std::pair<std::string, Tensor>> export_tensors() const;

  // Forward over B sequences of Tn tokens (inputs [B*Tn]). With targets ([B*Tn], -1 = no loss) it computes the
  // losses and keeps activations for backward(); without, only logits(), which backward(dlogits) can follow.
  // The main loss is the mean cross-entropy over targets, or with target_weights ([B*Tn]) the weighted sum
  // sum_t w_t * CE_t (a policy-gradient loss is such a sum with per-token weights).
  // Positions are 0..Tn-1 in each sequence unless given ([B*Tn]): packed documents restart at 0, each row starts
  // at 0 and every other position is 0 or one more than the one before. A token attends only to its own document,
  // and MTP targets that lie in a later document carry no loss.
  ForwardStats forward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                       const LossOptions& options = {}, const T* target_weights = nullptr,
                       const int32_t* positions = nullptr);
  // After a forward with targets: log p(target) at each position (0 where there is no target), and the entropy of
  // each position's next-token distribution.
  std::vector<double> target_logprobs() const;
  std::vector<double> entropies() const;
  // Gradients of the last forward's loss, added into grads(); ready, when set, hears of each range as it is final.
  void backward(const GradReady& ready = {});
  // After a forward without targets: backpropagates dlogits ([B*Tn, vocab], the gradient of a loss the caller
  // computed from logits(), such as a distillation loss), adding into grads().
  void backward(const T* dlogits, const GradReady& ready = {});
  // Logits [B*Tn, vocab] of the last forward (probabilities after a forward with targets).
  const T* logits() const;

  // Aux-loss-free balancing: bias -= gamma where an expert got more than the mean load, += gamma where less.
  void update_router_bias(const std::vector<std::vector<int64_t>>& expert_load, double gamma);

  void zero_grads();
  // Emulate DeepSeek-V3's FP8 training GEMMs (e4m3, 1x128 activation and 128x128 weight tiles) in the linear layers
  // it runs in FP8; embeddings, attention, norms, the router and the head stay in full precision. Float models only.
  void set_fp8(bool on);
  // Expert parallel: rank r of comm (null: none) runs routed experts [r E/R, (r+1) E/R) for the tokens of every
  // rank in comm, which are dispatched to it and combined back with all-to-all exchanges in forward and backward.
  // The other experts' gradients stay zero here; their owners' gradients reach every rank in the data-parallel
  // reduction, which keeps the full parameter array identical across ranks.
  void set_expert_parallel(dist::Comm* comm);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

extern template class Model<float>;
extern template class Model<double>;

}  // namespace ds
