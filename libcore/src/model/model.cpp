// The transformer: embedding, decoder blocks, final norm and head, MTP modules, losses
// (docs/architecture.md#multi-token-prediction).
#include "ds/model.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <random>
#include <type_traits>

#include "batch.h"
#include "ds/error.h"
#include "modules.h"

namespace ds {

ops::RopeTable model_rope_table(const ModelConfig& c) {
  const RopeScaling& rs = c.rope_scaling;
  double attention_factor = 1.0;
  if (rs.yarn && rs.factor > 1.0) {
    auto m = [&](double mscale) { return 0.1 * mscale * std::log(rs.factor) + 1.0; };
    attention_factor = rs.mscale != 0.0 && rs.mscale_all_dim != 0.0 ? m(rs.mscale) / m(rs.mscale_all_dim) : m(1.0);
  }
  return ops::rope_table(c.qk_rope_head_dim, c.max_position_embeddings, c.rope_theta, rs.yarn, rs.factor,
                         rs.original_max_position_embeddings, rs.beta_fast, rs.beta_slow, attention_factor);
}

// One MTP module k: h' = eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)]), h^k = block(h'), head(shared_head.norm).
template <typename T>
struct MtpModule {
  RmsNorm<T> enorm, hnorm, head_norm;
  Linear<T> eh_proj;
  Block<T> block;
  std::vector<int32_t> tokens, targets;
  std::vector<T> emb, cat, h_in, h_out, xf, logits;
  int64_t count = 0;

  MtpModule(ParamStore<T>& s, const ModelConfig& c, int64_t layer)
      : enorm(s, fmt::format("model.layers.{}.enorm.weight", layer), c.hidden_size, c.rms_norm_eps),
        hnorm(s, fmt::format("model.layers.{}.hnorm.weight", layer), c.hidden_size, c.rms_norm_eps),
        head_norm(s, fmt::format("model.layers.{}.shared_head.norm.weight", layer), c.hidden_size, c.rms_norm_eps),
        eh_proj(s, fmt::format("model.layers.{}.eh_proj.weight", layer), 2 * c.hidden_size, c.hidden_size, false),
        block(s, c, layer) {}
};

template <typename T>
struct Model<T>::Impl {
  ModelConfig config;
  ParamStore<T> store;
  int64_t embed = -1, head = -1;
  std::vector<Block<T>> blocks;
  RmsNorm<T> final_norm;
  std::vector<MtpModule<T>> mtp;
  ops::RopeTable rope;
  // Where each layer's parameters start in the flat array, in layout order: the embeddings, the blocks, the final
  // norm with the head, the MTP modules; then the array's end. Layer i holds [starts[i], starts[i + 1]).
  std::vector<int64_t> starts;

  // Forward state.
  int64_t B = 0, Tn = 0, N = 0, count = 0;
  bool with_loss = false;
  LossOptions options;
  size_t mtp_depths = 0;  // MTP modules the last forward ran: none when their loss weight is 0
  std::vector<int32_t> inputs, targets, pos;
  std::vector<T> weights;              // per-position loss weights; empty = mean over targets
  std::vector<std::vector<T>> hidden;  // hidden[l] is the input of block l; hidden[L] the last block's output
  std::vector<T> xf, logits;

  explicit Impl(const ModelConfig& c) : config(c) {
    const int64_t d = c.hidden_size, V = c.vocab_size;
    starts.push_back(store.size);
    embed = store.add("model.embed_tokens.weight", {V, d}, ParamKind::Matrix);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      starts.push_back(store.size);
      blocks.emplace_back(store, config, l);
    }
    starts.push_back(store.size);
    final_norm = RmsNorm<T>(store, "model.norm.weight", d, c.rms_norm_eps);
    head = c.tie_word_embeddings ? embed : store.add("lm_head.weight", {V, d}, ParamKind::Matrix);
    for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
      starts.push_back(store.size);
      mtp.emplace_back(store, config, c.num_hidden_layers + k);
    }
    starts.push_back(store.size);
    store.allocate();
    rope = model_rope_table(c);
  }

  void embed_tokens(T* out, const int32_t* tokens) {
    const int64_t d = config.hidden_size;
    for (int64_t n = 0; n < N; ++n) std::memcpy(out + n * d, store.w(embed) + tokens[n] * d, sizeof(T) * size_t(d));
  }
  void embed_backward(const T* dout, const int32_t* tokens) {
    const int64_t d = config.hidden_size;
    for (int64_t n = 0; n < N; ++n) {
      T* g = store.g(embed) + tokens[n] * d;
      for (int64_t i = 0; i < d; ++i) g[i] += dout[n * d + i];
    }
  }
  // Tells ready that layer i's gradients are final (see starts).
  void layer_done(const GradReady& ready, size_t i) const {
    if (ready) ready(starts[i], starts[i + 1]);
  }
  void mtp_done(const GradReady& ready, size_t k) const { layer_done(ready, blocks.size() + 2 + k); }
  // From the main head's logits down to the embeddings; dh holds what the MTP modules passed to the last hidden state.
  void backward_main(const T* dlogits, std::vector<T> dh, const GradReady& ready) {
    const int64_t d = config.hidden_size, V = config.vocab_size;
    std::vector<T> dx(size_t(N * d), T(0));
    ops::linear_backward(dx.data(), store.g(head), dlogits, xf.data(), store.w(head), N, V, d);
    final_norm.backward(dh.data(), dx.data());
    layer_done(ready, blocks.size() + 1);  // a tied head is the embeddings, which come last
    for (size_t l = blocks.size(); l-- > 0;) {
      std::fill(dx.begin(), dx.end(), T(0));
      blocks[l].backward(dx.data(), dh.data());
      dh.swap(dx);
      layer_done(ready, l + 1);
    }
    embed_backward(dh.data(), inputs.data());
    layer_done(ready, 0);
  }
};

template <typename T>
Model<T>::Model(const ModelConfig& config) : impl_(std::make_unique<Impl>(config)) {}
template <typename T>
Model<T>::~Model() = default;
template <typename T>
Model<T>::Model(Model&&) noexcept = default;
template <typename T>
Model<T>& Model<T>::operator=(Model&&) noexcept = default;

template <typename T>
const ModelConfig& Model<T>::config() const {
  return impl_->config;
}
template <typename T>
const std::vector<ParamInfo>& Model<T>::param_infos() const {
  return impl_->store.infos;
}
template <typename T>
std::vector<T>& Model<T>::params() {
  return impl_->store.values;
}
template <typename T>
const std::vector<T>& Model<T>::params() const {
  return impl_->store.values;
}
template <typename T>
std::vector<T>& Model<T>::grads() {
  return impl_->store.grads;
}
template <typename T>
const T* Model<T>::logits() const {
  return impl_->logits.data();
}
template <typename T>
void Model<T>::set_fp8(bool on) {
  if (on && !std::is_same_v<T, float>) fail("FP8 emulation runs in float models only");
  impl_->store.fp8 = on;
}
template <typename T>
void Model<T>::set_expert_parallel(dist::Comm* comm) {
  impl_->store.ep = comm;
}

template <typename T>
void Model<T>::zero_grads() {
  std::fill(impl_->store.grads.begin(), impl_->store.grads.end(), T(0));
}

template <typename T>
const ParamInfo* Model<T>::find_param(const std::string& name) const {
  for (const auto& p : impl_->store.infos)
    if (p.name == name) return &p;
  return nullptr;
}

template <typename T>
void Model<T>::init_random(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const double out_scale = 1.0 / std::sqrt(2.0 * double(impl_->config.num_hidden_layers));
  for (const auto& p : impl_->store.infos) {
    T* w = impl_->store.w(p.offset);
    const int64_t n = shape_numel(p.shape);
    const bool output_proj = p.name.ends_with("o_proj.weight") || p.name.ends_with("down_proj.weight");
    for (int64_t i = 0; i < n; ++i) {
      switch (p.kind) {
        case ParamKind::Matrix:
          w[i] = T(0.02 * (output_proj ? out_scale : 1.0) * normal(rng));
          break;
        case ParamKind::Vector:
          w[i] = T(1);
          break;
        case ParamKind::RouterBias:
          w[i] = T(0);
          break;
      }
    }
  }
}

template <typename T>
void Model<T>::load(const std::function<Tensor(const std::string&)>& get, const std::string& source) {
  for (const auto& p : impl_->store.infos) {
    Tensor t = get(p.name);
    if (!t.defined() || (t.numel() == 0 && shape_numel(p.shape) != 0))
      fail("{}: tensor '{}' is missing", source, p.name);
    if (t.shape() != p.shape)
      fail("{}: tensor '{}' has shape {}, the config needs {}", source, p.name, shape_str(t.shape()),
           shape_str(p.shape));
    const std::vector<T> values = t.to_vector<T>();
    for (size_t i = 0; i < values.size(); ++i)
      if (!std::isfinite(double(values[i]))) fail("{}: tensor '{}' holds NaN or Inf", source, p.name);
    std::copy(values.begin(), values.end(), impl_->store.w(p.offset));
  }
}

template <typename T>
std::vector<std::pair<std::string, Tensor>> Model<T>::export_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  auto as_f32 = [&](int64_t offset, const Shape& shape) {
    const T* src = impl_->store.values.data() + offset;
    if constexpr (std::is_same_v<T, float>) {
      return Tensor::view(DType::F32, shape, src, nullptr);
    } else {
      Tensor t = Tensor::empty(DType::F32, shape);
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(src[i]);
      return t;
    }
  };
  for (const auto& p : impl_->store.infos) out.emplace_back(p.name, as_f32(p.offset, p.shape));
  // The released checkpoints store the shared embedding and head again inside each MTP layer.
  const ModelConfig& c = impl_->config;
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const int64_t layer = c.num_hidden_layers + k;
    out.emplace_back(fmt::format("model.layers.{}.embed_tokens.weight", layer),
                     as_f32(impl_->embed, {c.vocab_size, c.hidden_size}));
    out.emplace_back(fmt::format("model.layers.{}.shared_head.head.weight", layer),
                     as_f32(impl_->head, {c.vocab_size, c.hidden_size}));
  }
  return out;
}

template <typename T>
ForwardStats Model<T>::forward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                               const LossOptions& options, const T* target_weights, const int32_t* positions) {
  Impl& m = *impl_;
  const ModelConfig& c = m.config;
  const int64_t d = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  if (Tn > c.max_position_embeddings)
    fail("sequence length {} exceeds max_position_embeddings {}", Tn, c.max_position_embeddings);
  m.B = B, m.Tn = Tn, m.N = B * Tn, m.with_loss = targets != nullptr, m.options = options;
  const int64_t N = m.N;
  m.inputs.assign(inputs, inputs + N);
  for (int64_t n = 0; n < N; ++n)
    if (inputs[n] < 0 || inputs[n] >= V) fail("token id {} is outside the vocabulary of {}", inputs[n], V);
  m.pos = checked_positions(positions, B, Tn);

  m.hidden.resize(size_t(L + 1));
  for (auto& h : m.hidden) h.resize(size_t(N * d));
  m.embed_tokens(m.hidden[0].data(), inputs);
  ForwardStats stats;
  for (int64_t l = 0; l < L; ++l) {
    const double alpha = m.with_loss ? options.balance_alpha : 0.0;
    m.blocks[size_t(l)].forward(m.hidden[size_t(l + 1)].data(), m.hidden[size_t(l)].data(), B, Tn, m.pos.data(), m.rope,
                                alpha);
    stats.balance_loss += m.blocks[size_t(l)].balance_loss;
    if (m.blocks[size_t(l)].is_moe) stats.expert_load.push_back(m.blocks[size_t(l)].moe.load);
  }
  m.xf.resize(size_t(N * d)), m.logits.resize(size_t(N * V));
  m.final_norm.forward(m.xf.data(), m.hidden[size_t(L)].data(), N);
  ops::linear(m.logits.data(), m.xf.data(), m.store.w(m.head), N, V, d);
  if (!m.with_loss) return stats;
  if (!(options.temperature > 0)) fail("loss temperature {} is not positive", options.temperature);
  if (options.temperature != 1.0) {
    const T inverse = T(1.0 / options.temperature);
    for (T& z : m.logits) z *= inverse;
  }

  m.targets.assign(targets, targets + N);
  m.count = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] >= V) fail("target token id {} is outside the vocabulary of {}", targets[n], V);
    m.count += targets[n] >= 0;
  }
  stats.tokens = m.count;
  if (target_weights) {
    m.weights.assign(target_weights, target_weights + N);
    ops::cross_entropy(m.logits.data(), targets, N, V);
    for (int64_t n = 0; n < N; ++n)
      if (targets[n] >= 0)
        stats.main_loss -= double(m.weights[size_t(n)]) * std::log(double(m.logits[size_t(n * V + targets[n])]));
  } else {
    m.weights.clear();
    stats.main_loss = ops::cross_entropy(m.logits.data(), targets, N, V) / double(std::max<int64_t>(m.count, 1));
  }

  // MTP depth k at position i sees token t_{i+k} and predicts t_{i+k+1}: shift the inputs and targets by k.
  const T* prev = m.hidden[size_t(L)].data();
  m.mtp_depths = options.mtp_weight != 0 ? m.mtp.size() : 0;
  for (size_t k = 0; k < m.mtp_depths; ++k) {
    MtpModule<T>& mt = m.mtp[k];
    MtpBatch shifted = mtp_batch(inputs, targets, m.pos, B, Tn, int64_t(k) + 1);
    mt.tokens = std::move(shifted.tokens), mt.targets = std::move(shifted.targets);
    mt.count = 0;
    for (int32_t t : mt.targets) mt.count += t >= 0;
    mt.emb.resize(size_t(N * d)), mt.cat.resize(size_t(N * 2 * d)), mt.h_in.resize(size_t(N * d));
    mt.h_out.resize(size_t(N * d)), mt.xf.resize(size_t(N * d)), mt.logits.resize(size_t(N * V));
    m.embed_tokens(mt.emb.data(), mt.tokens.data());
    std::vector<T> en(size_t(N * d)), hn(size_t(N * d));
    mt.enorm.forward(en.data(), mt.emb.data(), N);
    mt.hnorm.forward(hn.data(), prev, N);
    for (int64_t n = 0; n < N; ++n) {
      std::copy_n(&en[size_t(n * d)], d, &mt.cat[size_t(n * 2 * d)]);
      std::copy_n(&hn[size_t(n * d)], d, &mt.cat[size_t(n * 2 * d + d)]);
    }
    mt.eh_proj.forward(mt.h_in.data(), mt.cat.data(), N);
    mt.block.forward(mt.h_out.data(), mt.h_in.data(), B, Tn, m.pos.data(), m.rope, options.balance_alpha);
    stats.balance_loss += mt.block.balance_loss;
    if (mt.block.is_moe) stats.expert_load.push_back(mt.block.moe.load);
    mt.head_norm.forward(mt.xf.data(), mt.h_out.data(), N);
    ops::linear(mt.logits.data(), mt.xf.data(), m.store.w(m.head), N, V, d);
    stats.mtp_loss +=
        ops::cross_entropy(mt.logits.data(), mt.targets.data(), N, V) / double(std::max<int64_t>(mt.count, 1));
    prev = mt.h_out.data();
  }
  if (m.mtp_depths > 0) stats.mtp_loss /= double(m.mtp_depths);
  stats.loss = stats.main_loss + options.mtp_weight * stats.mtp_loss + stats.balance_loss;
  return stats;
}

template <typename T>
void Model<T>::backward(const GradReady& ready) {
  Impl& m = *impl_;
  if (!m.with_loss) fail("backward() needs a forward with targets");
  const ModelConfig& c = m.config;
  const int64_t d = c.hidden_size, V = c.vocab_size, N = m.N;
  std::vector<T> dlogits(size_t(N * V)), dx(size_t(N * d));

  // MTP modules, last first: each passes a gradient to the hidden state it read. Those the forward skipped get none.
  for (size_t k = m.mtp.size(); k-- > m.mtp_depths;) m.mtp_done(ready, k);
  std::vector<T> dprev(size_t(N * d), T(0));
  for (size_t k = m.mtp_depths; k-- > 0;) {
    MtpModule<T>& mt = m.mtp[k];
    const double scale = m.options.mtp_weight / double(m.mtp_depths) / double(std::max<int64_t>(mt.count, 1));
    ops::cross_entropy_backward(dlogits.data(), mt.logits.data(), mt.targets.data(), N, V, scale);
    std::fill(dx.begin(), dx.end(), T(0));
    ops::linear_backward(dx.data(), m.store.g(m.head), dlogits.data(), mt.xf.data(), m.store.w(m.head), N, V, d);
    std::vector<T> dh_out = dprev, dh_in(size_t(N * d), T(0)), dcat(size_t(N * 2 * d), T(0));
    mt.head_norm.backward(dh_out.data(), dx.data());
    mt.block.backward(dh_in.data(), dh_out.data());
    mt.eh_proj.backward(dcat.data(), dh_in.data());
    std::vector<T> den(size_t(N * d)), dhn(size_t(N * d)), demb(size_t(N * d), T(0));
    for (int64_t n = 0; n < N; ++n) {
      std::copy_n(&dcat[size_t(n * 2 * d)], d, &den[size_t(n * d)]);
      std::copy_n(&dcat[size_t(n * 2 * d + d)], d, &dhn[size_t(n * d)]);
    }
    mt.enorm.backward(demb.data(), den.data());
    m.embed_backward(demb.data(), mt.tokens.data());
    std::fill(dprev.begin(), dprev.end(), T(0));
    mt.hnorm.backward(dprev.data(), dhn.data());
    m.mtp_done(ready, k);
  }

  // The softmax read logits / temperature: the chain rule divides once more.
  const double inverse_temperature = 1.0 / m.options.temperature;
  if (m.weights.empty())
    ops::cross_entropy_backward(dlogits.data(), m.logits.data(), m.targets.data(), N, V,
                                inverse_temperature / double(std::max<int64_t>(m.count, 1)));
  else
    ops::cross_entropy_backward(dlogits.data(), m.logits.data(), m.targets.data(), N, V, inverse_temperature,
                                m.weights.data());
  m.backward_main(dlogits.data(), std::move(dprev), ready);
}

template <typename T>
void Model<T>::backward(const T* dlogits, const GradReady& ready) {
  Impl& m = *impl_;
  if (m.with_loss || m.logits.empty()) fail("backward(dlogits) needs a forward without targets");
  for (size_t k = m.mtp.size(); k-- > 0;) m.mtp_done(ready, k);  // no MTP without targets
  m.backward_main(dlogits, std::vector<T>(size_t(m.N * m.config.hidden_size), T(0)), ready);
}

template <typename T>
std::vector<double> Model<T>::target_logprobs() const {
  const Impl& m = *impl_;
  if (!m.with_loss) fail("target_logprobs() needs a forward with targets");
  const int64_t V = m.config.vocab_size;
  std::vector<double> out(size_t(m.N), 0.0);
  for (int64_t n = 0; n < m.N; ++n)
    if (m.targets[size_t(n)] >= 0) out[size_t(n)] = std::log(double(m.logits[size_t(n * V + m.targets[size_t(n)])]));
  return out;
}

template <typename T>
std::vector<double> Model<T>::entropies() const {
  const Impl& m = *impl_;
  if (!m.with_loss) fail("entropies() needs a forward with targets");
  const int64_t V = m.config.vocab_size;
  std::vector<double> out(size_t(m.N), 0.0);
  for (int64_t n = 0; n < m.N; ++n)
    for (int64_t v = 0; v < V; ++v) {
      const double p = double(m.logits[size_t(n * V + v)]);
      if (p > 0) out[size_t(n)] -= p * std::log(p);
    }
  return out;
}

template <typename T>
void Model<T>::update_router_bias(const std::vector<std::vector<int64_t>>& expert_load, double gamma) {
  Impl& m = *impl_;
  std::vector<Moe<T>*> moes;
  for (auto& b : m.blocks)
    if (b.is_moe) moes.push_back(&b.moe);
  if (expert_load.size() > moes.size())  // the forward ran the MTP modules too
    for (auto& mt : m.mtp)
      if (mt.block.is_moe) moes.push_back(&mt.block.moe);
  if (expert_load.size() != moes.size())
    fail("expert load has {} layers, the model {}", expert_load.size(), moes.size());
  for (size_t i = 0; i < moes.size(); ++i) {
    if (moes[i]->bias < 0) continue;
    const auto& load = expert_load[i];
    double mean = 0;
    for (int64_t x : load) mean += double(x) / double(load.size());
    T* bias = m.store.w(moes[i]->bias);
    for (size_t e = 0; e < load.size(); ++e) {
      if (double(load[e]) > mean)
        bias[e] -= T(gamma);
      else if (double(load[e]) < mean)
        bias[e] += T(gamma);
    }
  }
}

template class Model<float>;
template class Model<double>;

}  // namespace ds
