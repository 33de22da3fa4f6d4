// RmsNorm, Linear, Mlp and the decoder Block.
#include <fmt/format.h>

#include <algorithm>
#include <type_traits>

#include "modules.h"

namespace ds {

template <typename T>
RmsNorm<T>::RmsNorm(ParamStore<T>& s, const std::string& name, int64_t dim_, double eps_)
    : store(&s), weight(s.add(name, {dim_}, ParamKind::Vector)), dim(dim_), eps(eps_) {}

template <typename T>
void RmsNorm<T>::forward(T* y, const T* x_, int64_t rows_, int64_t x_stride_) {
  x = x_, rows = rows_, x_stride = x_stride_ ? x_stride_ : dim;
  rstd.resize(size_t(rows));
  ops::rmsnorm(y, rstd.data(), x, store->w(weight), rows, dim, eps, x_stride);
}

template <typename T>
void RmsNorm<T>::backward(T* dx, const T* dy) {
  ops::rmsnorm_backward(dx, store->g(weight), dy, x, store->w(weight), rstd.data(), rows, dim, x_stride);
}

template <typename T>
Linear<T>::Linear(ParamStore<T>& s, const std::string& name, int64_t in_, int64_t out_, bool fp8_eligible_)
    : store(&s), weight(s.add(name, {out_, in_}, ParamKind::Matrix)), in(in_), out(out_), fp8_eligible(fp8_eligible_) {}

template <typename T>
void Linear<T>::forward(T* y, const T* x_, int64_t rows_) {
  x = x_, rows = rows_;
  if constexpr (std::is_same_v<T, float>) {
    if (store->fp8 && fp8_eligible) {
      std::vector<float> xq(size_t(rows * in)), wq(size_t(out * in));
      ops::fp8_round_trip(xq.data(), x, rows, in, ops::Fp8Tiles::Rows);
      ops::fp8_round_trip(wq.data(), store->w(weight), out, in, ops::Fp8Tiles::Blocks);
      ops::linear(y, xq.data(), wq.data(), rows, out, in);
      return;
    }
  }
  ops::linear(y, x, store->w(weight), rows, out, in);
}

template <typename T>
void Linear<T>::backward(T* dx, const T* dy) {
  if constexpr (std::is_same_v<T, float>) {
    if (store->fp8 && fp8_eligible) {
      // Data gradient: K runs along dy's rows (1x128 tiles); weight gradient: K runs over tokens (128x1 tiles).
      std::vector<float> a(size_t(rows * out)), b(size_t(std::max(out, rows) * in));
      if (dx) {
        ops::fp8_round_trip(a.data(), dy, rows, out, ops::Fp8Tiles::Rows);
        ops::fp8_round_trip(b.data(), store->w(weight), out, in, ops::Fp8Tiles::Blocks);
        ops::linear_backward<float>(dx, nullptr, a.data(), nullptr, b.data(), rows, out, in);
      }
      ops::fp8_round_trip(a.data(), dy, rows, out, ops::Fp8Tiles::Columns);
      ops::fp8_round_trip(b.data(), x, rows, in, ops::Fp8Tiles::Columns);
      ops::linear_backward<float>(nullptr, store->g(weight), a.data(), b.data(), nullptr, rows, out, in);
      return;
    }
  }
  ops::linear_backward(dx, store->g(weight), dy, x, store->w(weight), rows, out, in);
}

template <typename T>
Mlp<T>::Mlp(ParamStore<T>& s, const std::string& prefix, int64_t dim, int64_t hidden)
    : gate(s, prefix + "gate_proj.weight", dim, hidden),
      up(s, prefix + "up_proj.weight", dim, hidden),
      down(s, prefix + "down_proj.weight", hidden, dim) {}

template <typename T>
void Mlp<T>::forward(T* y, const T* x, int64_t rows) {
  const size_t n = size_t(rows * gate.out);
  g.resize(n), u.resize(n), a.resize(n);
  gate.forward(g.data(), x, rows);
  up.forward(u.data(), x, rows);
  ops::swiglu(a.data(), g.data(), u.data(), int64_t(n));
  down.forward(y, a.data(), rows);
}

template <typename T>
void Mlp<T>::backward(T* dx, const T* dy) {
  std::vector<T> da(a.size(), T(0)), dg(a.size(), T(0)), du(a.size(), T(0));
  down.backward(da.data(), dy);
  ops::swiglu_backward(dg.data(), du.data(), da.data(), g.data(), u.data(), int64_t(a.size()));
  gate.backward(dx, dg.data());
  up.backward(dx, du.data());
}

template <typename T>
Block<T>::Block(ParamStore<T>& s, const ModelConfig& c, int64_t layer)
    : is_moe(c.is_moe_layer(layer)), dim(c.hidden_size) {
  const std::string prefix = fmt::format("model.layers.{}.", layer);
  input_norm = RmsNorm<T>(s, prefix + "input_layernorm.weight", dim, c.rms_norm_eps);
  attn = Mla<T>(s, c, prefix + "self_attn.");
  post_norm = RmsNorm<T>(s, prefix + "post_attention_layernorm.weight", dim, c.rms_norm_eps);
  if (is_moe)
    moe = Moe<T>(s, c, prefix + "mlp.");
  else
    mlp = Mlp<T>(s, prefix + "mlp.", dim, c.intermediate_size);
}

template <typename T>
void Block<T>::forward(T* h_out, const T* h_in, int64_t B, int64_t Tn, const int32_t* pos, const ops::RopeTable& rope,
                       double balance_alpha) {
  N = B * Tn;
  const size_t n = size_t(N * dim);
  x1.resize(n), attn_out.resize(n), h_mid.resize(n), x2.resize(n), ffn_out.resize(n);
  input_norm.forward(x1.data(), h_in, N);
  attn.forward(attn_out.data(), x1.data(), B, Tn, pos, rope);
  for (size_t i = 0; i < n; ++i) h_mid[i] = h_in[i] + attn_out[i];
  post_norm.forward(x2.data(), h_mid.data(), N);
  balance_loss = 0;
  if (is_moe)
    balance_loss = moe.forward(ffn_out.data(), x2.data(), B, Tn, balance_alpha);
  else
    mlp.forward(ffn_out.data(), x2.data(), N);
  for (size_t i = 0; i < n; ++i) h_out[i] = h_mid[i] + ffn_out[i];
}

template <typename T>
void Block<T>::backward(T* dh_in, const T* dh_out) {
  const size_t n = size_t(N * dim);
  std::vector<T> dh_mid(dh_out, dh_out + n), dx(n, T(0));
  if (is_moe)
    moe.backward(dx.data(), dh_out);
  else
    mlp.backward(dx.data(), dh_out);
  post_norm.backward(dh_mid.data(), dx.data());
  std::fill(dx.begin(), dx.end(), T(0));
  attn.backward(dx.data(), dh_mid.data());
  input_norm.backward(dh_in, dx.data());
  for (size_t i = 0; i < n; ++i) dh_in[i] += dh_mid[i];
}

template struct RmsNorm<float>;
template struct RmsNorm<double>;
template struct Linear<float>;
template struct Linear<double>;
template struct Mlp<float>;
template struct Mlp<double>;
template struct Block<float>;
template struct Block<double>;

}  // namespace ds
