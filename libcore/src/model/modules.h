#pragma once
// The modules of the transformer. Each keeps pointers to its inputs and buffers of its intermediates from forward(),
// which must stay valid until its backward(); backward() adds into dx and into the parameter gradients.
#include <cstdint>
#include <string>
#include <vector>

#include "ds/config.h"
#include "ds/ops.h"
#include "params.h"

namespace ds {

template <typename T>
struct RmsNorm {
  ParamStore<T>* store = nullptr;
  int64_t weight = -1, dim = 0;
  double eps = 1e-6;
  const T* x = nullptr;
  int64_t rows = 0, x_stride = 0;
  std::vector<T> rstd;

  RmsNorm() = default;
  RmsNorm(ParamStore<T>& s, const std::string& name, int64_t dim, double eps);
  void forward(T* y, const T* x, int64_t rows, int64_t x_stride = 0);
  void backward(T* dx, const T* dy);
};

// A linear layer without bias: y = x W^T, W [out, in]. Under store->fp8 its three GEMMs (forward, data gradient, weight
// gradient) see FP8-rounded operands, tiled as docs/architecture.md#fp8-training describes, unless it is one of the
// layers DeepSeek-V3 keeps in high precision (the router gate, MTP's eh_proj).
template <typename T>
struct Linear {
  ParamStore<T>* store = nullptr;
  int64_t weight = -1, in = 0, out = 0;
  bool fp8_eligible = true;
  const T* x = nullptr;
  int64_t rows = 0;

  Linear() = default;
  Linear(ParamStore<T>& s, const std::string& name, int64_t in, int64_t out, bool fp8_eligible = true);
  void forward(T* y, const T* x, int64_t rows);
  void backward(T* dx, const T* dy);  // dx may be null
};

// SwiGLU feed-forward: down(silu(gate(x)) * up(x)). Dense layers, shared experts and routed experts.
template <typename T>
struct Mlp {
  Linear<T> gate, up, down;
  std::vector<T> g, u, a;

  Mlp() = default;
  Mlp(ParamStore<T>& s, const std::string& prefix, int64_t dim, int64_t hidden);
  void forward(T* y, const T* x, int64_t rows);
  void backward(T* dx, const T* dy);
};

// Multi-head Latent Attention (docs/architecture.md#multi-head-latent-attention), the naive training path with per-head
// keys and values.
template <typename T>
struct Mla {
  const ModelConfig* config = nullptr;
  bool q_lora = false;
  Linear<T> q_a, q_b, q_proj, kv_a, kv_b, o_proj;
  RmsNorm<T> q_norm, kv_norm;
  int64_t B = 0, Tn = 0;
  const int32_t* pos = nullptr;
  const ops::RopeTable* rope = nullptr;
  std::vector<T> cq, cqn, q, kva, ckvn, kv, k, v, p, o;

  Mla() = default;
  Mla(ParamStore<T>& s, const ModelConfig& c, const std::string& prefix);
  void forward(T* y, const T* x, int64_t B, int64_t Tn, const int32_t* pos, const ops::RopeTable& rope);
  void backward(T* dx, const T* dy);
};

// DeepSeekMoE (docs/architecture.md#deepseekmoe-routing): router, routed experts, shared experts, optional
// sequence-wise balance loss.
template <typename T>
struct Moe {
  const ModelConfig* config = nullptr;
  ParamStore<T>* store = nullptr;
  Linear<T> gate;
  int64_t bias = -1;
  std::vector<Mlp<T>> experts;
  Mlp<T> shared;
  bool has_shared = false;
  // Forward state.
  const T* x = nullptr;
  int64_t B = 0, Tn = 0, N = 0;
  double balance_alpha = 0;
  std::vector<T> logits, scores, weights;     // [N, E], [N, E], [N, K]
  std::vector<int32_t> chosen;                // [N, K]
  std::vector<std::vector<int32_t>> rows_of;  // per expert: indices n*K+k routed to it
  // Routed rows travel in dispatch order (expert by expert, rows_of order within one) to the experts' owners: this
  // rank alone, or under expert parallelism (store->ep) the rank holding each expert.
  std::vector<int64_t> recv_rows;      // [ranks * local experts]: rows each rank sent to each local expert
  std::vector<std::vector<T>> xe, ye;  // per local expert: its input rows from every rank, and its outputs
  std::vector<T> routed_y;             // [N*K, d] expert outputs back in dispatch order
  std::vector<T> balance_f;            // [B, E] f_i per sequence (constant in the gradient)
  std::vector<int64_t> load;           // [E]

  Moe() = default;
  Moe(ParamStore<T>& s, const ModelConfig& c, const std::string& prefix);
  // Returns the balance loss (alpha-weighted, averaged over sequences); 0 when alpha is 0.
  double forward(T* y, const T* x, int64_t B, int64_t Tn, double balance_alpha);
  void backward(T* dx, const T* dy);

 private:
  int ranks() const;
  int64_t first_local_expert() const;
  void exchange_counts(std::vector<int64_t>& sent, std::vector<int64_t>& received) const;
  // Rows in dispatch order [N*K, d] to per-local-expert rows (dispatch), and back (combine).
  void dispatch(const std::vector<T>& rows, std::vector<std::vector<T>>& per_expert);
  void combine(const std::vector<std::vector<T>>& per_expert, std::vector<T>& rows);
};

// A decoder block: h + Attn(norm(h)), then + FFN(norm(.)), FFN dense or MoE.
template <typename T>
struct Block {
  RmsNorm<T> input_norm, post_norm;
  Mla<T> attn;
  Mlp<T> mlp;
  Moe<T> moe;
  bool is_moe = false;
  int64_t N = 0, dim = 0;
  std::vector<T> x1, attn_out, h_mid, x2, ffn_out;
  double balance_loss = 0;

  Block() = default;
  Block(ParamStore<T>& s, const ModelConfig& c, int64_t layer);
  void forward(T* h_out, const T* h_in, int64_t B, int64_t Tn, const int32_t* pos, const ops::RopeTable& rope,
               double balance_alpha);
  void backward(T* dh_in, const T* dh_out);
};

}  // namespace ds
