// Multi-head Latent Attention, training path (docs/architecture.md#multi-head-latent-attention): queries through the
// optional low-rank q_a/q_b, keys and values decompressed from the normalised latent c_KV, one RoPE key k_pe shared by
// all heads.
#include <algorithm>

#include "modules.h"

namespace ds {

template <typename T>
Mla<T>::Mla(ParamStore<T>& s, const ModelConfig& c, const std::string& prefix) : config(&c), q_lora(c.q_lora_rank > 0) {
  const int64_t d = c.hidden_size, H = c.num_attention_heads;
  if (q_lora) {
    q_a = Linear<T>(s, prefix + "q_a_proj.weight", d, c.q_lora_rank);
    q_norm = RmsNorm<T>(s, prefix + "q_a_layernorm.weight", c.q_lora_rank, c.rms_norm_eps);
    q_b = Linear<T>(s, prefix + "q_b_proj.weight", c.q_lora_rank, H * c.qk_head_dim());
  } else {
    q_proj = Linear<T>(s, prefix + "q_proj.weight", d, H * c.qk_head_dim());
  }
  kv_a = Linear<T>(s, prefix + "kv_a_proj_with_mqa.weight", d, c.kv_lora_rank + c.qk_rope_head_dim);
  kv_norm = RmsNorm<T>(s, prefix + "kv_a_layernorm.weight", c.kv_lora_rank, c.rms_norm_eps);
  kv_b = Linear<T>(s, prefix + "kv_b_proj.weight", c.kv_lora_rank, H * (c.qk_nope_head_dim + c.v_head_dim));
  o_proj = Linear<T>(s, prefix + "o_proj.weight", H * c.v_head_dim, d);
}

template <typename T>
void Mla<T>::forward(T* y, const T* x, int64_t B_, int64_t Tn_, const int32_t* pos_, const ops::RopeTable& rope_) {
  B = B_, Tn = Tn_, pos = pos_, rope = &rope_;
  const ModelConfig& c = *config;
  const int64_t N = B * Tn, H = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim,
                dq = c.qk_head_dim(), dv = c.v_head_dim, r = c.kv_lora_rank;
  q.resize(size_t(N * H * dq));
  if (q_lora) {
    cq.resize(size_t(N * c.q_lora_rank)), cqn.resize(cq.size());
    q_a.forward(cq.data(), x, N);
    q_norm.forward(cqn.data(), cq.data(), N);
    q_b.forward(q.data(), cqn.data(), N);
  } else {
    q_proj.forward(q.data(), x, N);
  }
  ops::rope(q.data() + dn, pos, N, H, H * dq, dq, *rope, false);

  kva.resize(size_t(N * (r + dr))), ckvn.resize(size_t(N * r));
  kv_a.forward(kva.data(), x, N);
  kv_norm.forward(ckvn.data(), kva.data(), N, r + dr);
  ops::rope(kva.data() + r, pos, N, 1, r + dr, dr, *rope, false);
  kv.resize(size_t(N * H * (dn + dv)));
  kv_b.forward(kv.data(), ckvn.data(), N);

  k.resize(size_t(N * H * dq)), v.resize(size_t(N * H * dv));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      const T* src = &kv[size_t((n * H + h) * (dn + dv))];
      T* kd = &k[size_t((n * H + h) * dq)];
      std::copy(src, src + dn, kd);
      std::copy(&kva[size_t(n * (r + dr) + r)], &kva[size_t(n * (r + dr) + r + dr)], kd + dn);
      std::copy(src + dn, src + dn + dv, &v[size_t((n * H + h) * dv)]);
    }
  p.resize(size_t(B * H * Tn * Tn)), o.resize(size_t(N * H * dv));
  ops::attention(o.data(), p.data(), q.data(), k.data(), v.data(), B, Tn, H, dq, dv, c.softmax_scale(), pos);
  o_proj.forward(y, o.data(), N);
}

template <typename T>
void Mla<T>::backward(T* dx, const T* dy) {
  const ModelConfig& c = *config;
  const int64_t N = B * Tn, H = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim,
                dq = c.qk_head_dim(), dv = c.v_head_dim, r = c.kv_lora_rank;
  std::vector<T> d_o(o.size(), T(0)), d_q(q.size(), T(0)), d_k(k.size(), T(0)), d_v(v.size(), T(0));
  o_proj.backward(d_o.data(), dy);
  ops::attention_backward(d_q.data(), d_k.data(), d_v.data(), d_o.data(), q.data(), k.data(), v.data(), p.data(), B, Tn,
                          H, dq, dv, c.softmax_scale());

  std::vector<T> d_kv(kv.size()), d_kva(kva.size(), T(0)), d_ckvn(ckvn.size(), T(0));
  for (int64_t n = 0; n < N; ++n) {
    T* dpe = &d_kva[size_t(n * (r + dr) + r)];
    for (int64_t h = 0; h < H; ++h) {
      const T* dk = &d_k[size_t((n * H + h) * dq)];
      T* dst = &d_kv[size_t((n * H + h) * (dn + dv))];
      std::copy(dk, dk + dn, dst);
      std::copy(&d_v[size_t((n * H + h) * dv)], &d_v[size_t((n * H + h + 1) * dv)], dst + dn);
      for (int64_t i = 0; i < dr; ++i) dpe[i] += dk[dn + i];
    }
  }
  ops::rope(d_kva.data() + r, pos, N, 1, r + dr, dr, *rope, true);
  kv_b.backward(d_ckvn.data(), d_kv.data());
  kv_norm.backward(d_kva.data(), d_ckvn.data());
  kv_a.backward(dx, d_kva.data());

  ops::rope(d_q.data() + dn, pos, N, H, H * dq, dq, *rope, true);
  if (q_lora) {
    std::vector<T> d_cqn(cqn.size(), T(0)), d_cq(cq.size(), T(0));
    q_b.backward(d_cqn.data(), d_q.data());
    q_norm.backward(d_cq.data(), d_cqn.data());
    q_a.backward(dx, d_cq.data());
  } else {
    q_proj.backward(dx, d_q.data());
  }
}

template struct Mla<float>;
template struct Mla<double>;

}  // namespace ds
