#include "ds/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../model/routing.h"
#include "ds/error.h"
#include "ds/ops.h"

namespace ds {

namespace {

struct MlpWeights {
  const float *gate = nullptr, *up = nullptr, *down = nullptr;
  int64_t hidden = 0;
};

struct LayerWeights {
  const float *input_norm, *post_norm;
  const float *q_a = nullptr, *q_norm = nullptr, *q_b = nullptr, *q_proj = nullptr;
  const float *kv_a, *kv_norm, *kv_b, *o_proj;
  bool moe = false;
  MlpWeights mlp, shared;  // dense MLP, or the shared experts of a MoE layer
  const float *router = nullptr, *bias = nullptr;
  std::vector<MlpWeights> experts;
};

// y[rows, d] = down(silu(gate x) * up x)
void mlp(float* y, const float* x, int64_t rows, int64_t d, const MlpWeights& w) {
  std::vector<float> g(size_t(rows * w.hidden)), u(g.size());
  ops::linear(g.data(), x, w.gate, rows, w.hidden, d);
  ops::linear(u.data(), x, w.up, rows, w.hidden, d);
  ops::swiglu(g.data(), g.data(), u.data(), int64_t(g.size()));
  ops::linear(y, g.data(), w.down, rows, d, w.hidden);
}

}  // namespace

struct Engine::Impl {
  const Model<float>& model;
  const Tokenizer& tokenizer;
  const ModelConfig& c;
  const float *embed, *final_norm, *head;
  std::vector<LayerWeights> layers;
  ops::RopeTable rope;
  struct Sequence {
    bool open = false;
    int64_t length = 0;
    std::vector<uint32_t> tokens;
    std::vector<std::vector<float>> cache;  // per layer: length x (kv_lora_rank + qk_rope_head_dim)
  };
  std::vector<Sequence> seqs;

  Impl(const Model<float>& m, const Tokenizer& t) : model(m), tokenizer(t), c(m.config()) {
    auto w = [&](const std::string& name) -> const float* {
      const ParamInfo* p = model.find_param(name);
      if (!p) fail("model has no tensor '{}'", name);
      return model.params().data() + p->offset;
    };
    auto mlp_weights = [&](const std::string& prefix, int64_t hidden) {
      return MlpWeights{w(prefix + "gate_proj.weight"), w(prefix + "up_proj.weight"), w(prefix + "down_proj.weight"),
                        hidden};
    };
    embed = w("model.embed_tokens.weight");
    final_norm = w("model.norm.weight");
    head = c.tie_word_embeddings ? embed : w("lm_head.weight");
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = fmt::format("model.layers.{}.", l);
      LayerWeights L;
      L.input_norm = w(p + "input_layernorm.weight");
      L.post_norm = w(p + "post_attention_layernorm.weight");
      if (c.q_lora_rank > 0) {
        L.q_a = w(p + "self_attn.q_a_proj.weight");
        L.q_norm = w(p + "self_attn.q_a_layernorm.weight");
        L.q_b = w(p + "self_attn.q_b_proj.weight");
      } else {
        L.q_proj = w(p + "self_attn.q_proj.weight");
      }
      L.kv_a = w(p + "self_attn.kv_a_proj_with_mqa.weight");
      L.kv_norm = w(p + "self_attn.kv_a_layernorm.weight");
      L.kv_b = w(p + "self_attn.kv_b_proj.weight");
      L.o_proj = w(p + "self_attn.o_proj.weight");
      L.moe = c.is_moe_layer(l);
      if (L.moe) {
        L.router = w(p + "mlp.gate.weight");
        if (c.topk_method == TopkMethod::NoauxTc) L.bias = w(p + "mlp.gate.e_score_correction_bias");
        for (int64_t e = 0; e < c.n_routed_experts; ++e)
          L.experts.push_back(mlp_weights(fmt::format("{}mlp.experts.{}.", p, e), c.moe_intermediate_size));
        if (c.n_shared_experts > 0)
          L.shared = mlp_weights(p + "mlp.shared_experts.", c.moe_intermediate_size * c.n_shared_experts);
      } else {
        L.mlp = mlp_weights(p + "mlp.", c.intermediate_size);
      }
      layers.push_back(std::move(L));
    }
    const RopeScaling& r = c.rope_scaling;
    double attention_factor = 1.0;
    if (r.yarn && r.factor > 1.0) {
      auto m = [&](double mscale) { return 0.1 * mscale * std::log(r.factor) + 1.0; };
      attention_factor = r.mscale != 0.0 && r.mscale_all_dim != 0.0 ? m(r.mscale) / m(r.mscale_all_dim) : m(1.0);
    }
    rope = ops::rope_table(c.qk_rope_head_dim, c.max_position_embeddings, c.rope_theta, r.yarn, r.factor,
                           r.original_max_position_embeddings, r.beta_fast, r.beta_slow, attention_factor);
  }

  // Absorbed MLA over the latent cache for R rows; rows of one sequence are consecutive with rising positions.
  void attention(float* out, const float* x, const LayerWeights& L, int64_t layer, const std::vector<int64_t>& seq_of,
                 const std::vector<int32_t>& pos) {
    const int64_t R = int64_t(pos.size()), d = c.hidden_size, H = c.num_attention_heads, dn = c.qk_nope_head_dim,
                  dr = c.qk_rope_head_dim, dq = c.qk_head_dim(), dv = c.v_head_dim, r = c.kv_lora_rank,
                  width = r + dr;
    std::vector<float> q(size_t(R * H * dq));
    if (L.q_a) {
      std::vector<float> cq(size_t(R * c.q_lora_rank)), rstd(static_cast<size_t>(R));
      ops::linear(cq.data(), x, L.q_a, R, c.q_lora_rank, d);
      ops::rmsnorm(cq.data(), rstd.data(), cq.data(), L.q_norm, R, c.q_lora_rank, c.rms_norm_eps);
      ops::linear(q.data(), cq.data(), L.q_b, R, H * dq, c.q_lora_rank);
    } else {
      ops::linear(q.data(), x, L.q_proj, R, H * dq, d);
    }
    ops::rope(q.data() + dn, pos.data(), R, H, H * dq, dq, rope, false);

    // The new tokens' latents join the cache before attending, so each row sees itself and the rows before it.
    std::vector<float> kva(size_t(R * width)), latent_kv(size_t(R * r)), rstd(static_cast<size_t>(R));
    ops::linear(kva.data(), x, L.kv_a, R, width, d);
    ops::rmsnorm(latent_kv.data(), rstd.data(), kva.data(), L.kv_norm, R, r, c.rms_norm_eps, width);
    ops::rope(kva.data() + r, pos.data(), R, 1, width, dr, rope, false);
    for (int64_t i = 0; i < R; ++i) {
      std::vector<float>& cache = seqs[size_t(seq_of[size_t(i)])].cache[size_t(layer)];
      cache.resize(size_t((pos[size_t(i)] + 1) * width));
      float* row = &cache[size_t(pos[size_t(i)] * width)];
      std::copy_n(&latent_kv[size_t(i * r)], r, row);
      std::copy_n(&kva[size_t(i * width + r)], dr, row + r);
    }

    // q~_h = W_UK[h]^T q_nope_h, with W_UK[h] the rows h*(dn+dv) .. +dn of kv_b, each of length r.
    std::vector<float> qt(size_t(R * H * r)), latent(size_t(R * H * r)), o(size_t(R * H * dv));
    for (int64_t h = 0; h < H; ++h)
      ops::gemm<float>(false, false, R, r, dn, 1.0f, q.data() + h * dq, H * dq, L.kv_b + h * (dn + dv) * r, r, 0.0f,
                       qt.data() + h * r, H * r);
    const float scale = float(c.softmax_scale());
#pragma omp parallel
    {
      std::vector<float> p;
#pragma omp for collapse(2) schedule(static)
      for (int64_t i = 0; i < R; ++i)
        for (int64_t h = 0; h < H; ++h) {
          const float* cache = seqs[size_t(seq_of[size_t(i)])].cache[size_t(layer)].data();
          const int64_t n = pos[size_t(i)] + 1;
          const float* qn = &qt[size_t((i * H + h) * r)];
          const float* qp = &q[size_t(i * H * dq + h * dq + dn)];
          p.resize(size_t(n));
          float mx = -INFINITY;
          for (int64_t j = 0; j < n; ++j) {
            const float* kj = cache + j * width;
            // simd: lets the sum reassociate into vector lanes; a serial chain of adds would bound decode.
            float s = 0;
#pragma omp simd reduction(+ : s)
            for (int64_t e = 0; e < r; ++e) s += qn[e] * kj[e];
#pragma omp simd reduction(+ : s)
            for (int64_t e = 0; e < dr; ++e) s += qp[e] * kj[r + e];
            p[size_t(j)] = s * scale;
            mx = std::max(mx, p[size_t(j)]);
          }
          float sum = 0;
          for (float& v : p) sum += (v = std::exp(v - mx));
          float* lat = &latent[size_t((i * H + h) * r)];
          std::fill(lat, lat + r, 0.0f);
          for (int64_t j = 0; j < n; ++j) {
            const float pj = p[size_t(j)] / sum;
            const float* kj = cache + j * width;
            for (int64_t e = 0; e < r; ++e) lat[e] += pj * kj[e];
          }
        }
    }
    // o_h = W_UV[h] (P c), with W_UV[h] the rows h*(dn+dv)+dn .. +dv of kv_b.
    for (int64_t h = 0; h < H; ++h)
      ops::gemm<float>(false, true, R, dv, r, 1.0f, latent.data() + h * r, H * r, L.kv_b + (h * (dn + dv) + dn) * r,
                       r, 0.0f, o.data() + h * dv, H * dv);
    ops::linear(out, o.data(), L.o_proj, R, d, H * dv);
  }

  void moe(float* y, const float* x, int64_t R, const LayerWeights& L) {
    const int64_t d = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
    std::vector<float> scores(size_t(R * E)), weights(size_t(R * K));
    std::vector<int32_t> chosen(size_t(R * K));
    ops::linear(scores.data(), x, L.router, R, E, d);
    if (c.scoring_func == ScoringFunc::Sigmoid)
      for (float& s : scores) s = 1.0f / (1.0f + std::exp(-s));
    else
      ops::softmax_rows(scores.data(), R, E);
    for (int64_t i = 0; i < R; ++i)
      route_token(c, &scores[size_t(i * E)], L.bias, &chosen[size_t(i * K)], &weights[size_t(i * K)]);
    if (L.shared.hidden > 0)
      mlp(y, x, R, d, L.shared);
    else
      std::fill(y, y + R * d, 0.0f);
    for (int64_t e = 0; e < E; ++e) {
      std::vector<int64_t> rows;
      for (int64_t i = 0; i < R * K; ++i)
        if (chosen[size_t(i)] == e) rows.push_back(i);
      if (rows.empty()) continue;
      const int64_t n = int64_t(rows.size());
      std::vector<float> xe(size_t(n * d)), ye(size_t(n * d));
      for (int64_t k = 0; k < n; ++k) std::copy_n(x + (rows[size_t(k)] / K) * d, d, &xe[size_t(k * d)]);
      mlp(ye.data(), xe.data(), n, d, L.experts[size_t(e)]);
      for (int64_t k = 0; k < n; ++k) {
        float* dst = y + (rows[size_t(k)] / K) * d;
        const float w = weights[size_t(rows[size_t(k)])];
        for (int64_t j = 0; j < d; ++j) dst[j] += w * ye[size_t(k * d + j)];
      }
    }
  }
};

Engine::Engine(const Model<float>& model, const Tokenizer& tokenizer)
    : impl_(std::make_unique<Impl>(model, tokenizer)) {}
Engine::~Engine() = default;

const ModelConfig& Engine::config() const { return impl_->c; }

int64_t Engine::cache_bytes_per_token() const {
  const ModelConfig& c = impl_->c;
  return c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * int64_t(sizeof(float));
}

int64_t Engine::naive_cache_bytes_per_token() const {
  const ModelConfig& c = impl_->c;
  return c.num_hidden_layers * c.num_attention_heads * (c.qk_head_dim() + c.v_head_dim) * int64_t(sizeof(float));
}

int64_t Engine::open() {
  auto& seqs = impl_->seqs;
  auto it = std::find_if(seqs.begin(), seqs.end(), [](const Impl::Sequence& s) { return !s.open; });
  if (it == seqs.end()) it = seqs.emplace(seqs.end());
  it->open = true;
  it->length = 0;
  it->tokens.clear();
  it->cache.assign(size_t(impl_->c.num_hidden_layers), {});
  return int64_t(it - seqs.begin());
}

void Engine::close(int64_t seq) {
  auto& s = impl_->seqs.at(size_t(seq));
  s.open = false;
  s.cache.clear();
}

int64_t Engine::length(int64_t seq) const { return impl_->seqs.at(size_t(seq)).length; }

void Engine::truncate(int64_t seq, int64_t length) {
  auto& s = impl_->seqs.at(size_t(seq));
  if (length < 0 || length > s.length) fail("cannot truncate sequence {} of {} tokens to {}", seq, s.length, length);
  const int64_t width = impl_->c.kv_lora_rank + impl_->c.qk_rope_head_dim;
  for (auto& layer : s.cache) layer.resize(size_t(length * width));
  s.tokens.resize(size_t(length));
  s.length = length;
}

const std::vector<uint32_t>& Engine::tokens(int64_t seq) const { return impl_->seqs.at(size_t(seq)).tokens; }

std::vector<float> Engine::append(const std::vector<std::pair<int64_t, std::vector<uint32_t>>>& batch) {
  Impl& m = *impl_;
  const ModelConfig& c = m.c;
  const int64_t d = c.hidden_size, V = c.vocab_size;
  std::vector<int64_t> seq_of;
  std::vector<int32_t> pos;
  std::vector<uint32_t> tokens;
  std::vector<int64_t> last_row;
  for (const auto& [seq, ids] : batch) {
    if (seq < 0 || size_t(seq) >= m.seqs.size() || !m.seqs[size_t(seq)].open) fail("sequence {} is not open", seq);
    if (ids.empty()) fail("nothing to append to sequence {}", seq);
    const int64_t start = m.seqs[size_t(seq)].length;
    if (start + int64_t(ids.size()) > c.max_position_embeddings)
      fail("{} tokens exceed the model's context of {}", start + int64_t(ids.size()), c.max_position_embeddings);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] >= uint32_t(V)) fail("token id {} is outside the vocabulary of {}", ids[i], V);
      seq_of.push_back(seq), pos.push_back(int32_t(start + int64_t(i))), tokens.push_back(ids[i]);
    }
    last_row.push_back(int64_t(tokens.size()) - 1);
  }
  const int64_t R = int64_t(tokens.size());
  std::vector<float> h(size_t(R * d)), x(h.size()), y(h.size()), rstd(static_cast<size_t>(R));
  for (int64_t i = 0; i < R; ++i) std::copy_n(m.embed + int64_t(tokens[size_t(i)]) * d, d, &h[size_t(i * d)]);
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const LayerWeights& L = m.layers[l];
    ops::rmsnorm(x.data(), rstd.data(), h.data(), L.input_norm, R, d, c.rms_norm_eps);
    m.attention(y.data(), x.data(), L, int64_t(l), seq_of, pos);
    for (size_t i = 0; i < h.size(); ++i) h[i] += y[i];
    ops::rmsnorm(x.data(), rstd.data(), h.data(), L.post_norm, R, d, c.rms_norm_eps);
    if (L.moe)
      m.moe(y.data(), x.data(), R, L);
    else
      mlp(y.data(), x.data(), R, d, L.mlp);
    for (size_t i = 0; i < h.size(); ++i) h[i] += y[i];
  }
  for (const auto& [seq, ids] : batch) {
    m.seqs[size_t(seq)].length += int64_t(ids.size());
    m.seqs[size_t(seq)].tokens.insert(m.seqs[size_t(seq)].tokens.end(), ids.begin(), ids.end());
  }

  const int64_t n = int64_t(last_row.size());
  std::vector<float> last(size_t(n * d)), logits(size_t(n * V));
  for (int64_t i = 0; i < n; ++i) std::copy_n(&h[size_t(last_row[size_t(i)] * d)], d, &last[size_t(i * d)]);
  ops::rmsnorm(last.data(), rstd.data(), last.data(), m.final_norm, n, d, c.rms_norm_eps);
  ops::linear(logits.data(), last.data(), m.head, n, V, d);
  return logits;
}

std::vector<Completion> Engine::generate(const std::vector<std::vector<uint32_t>>& prompts,
                                         const SamplingOptions& options, uint64_t seed,
                                         const std::function<bool(size_t, uint32_t)>& on_token) {
  std::vector<int64_t> seqs;
  std::vector<Sampler> samplers;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) fail("prompt {} is empty", i);
    seqs.push_back(open());
    samplers.emplace_back(seed + i);
  }
  std::vector<Completion> out = run(seqs, prompts, options, samplers, on_token);
  for (int64_t s : seqs) close(s);
  return out;
}

Completion Engine::continue_sequence(int64_t seq, const std::vector<uint32_t>& tokens, const SamplingOptions& options,
                                     Sampler& sampler, const std::function<bool(uint32_t)>& on_token) {
  if (tokens.empty()) fail("nothing to continue sequence {} with", seq);
  std::vector<Sampler> samplers = {sampler};
  Completion out = run({seq}, {tokens}, options, samplers,
                       on_token ? [&](size_t, uint32_t t) { return on_token(t); }
                                : std::function<bool(size_t, uint32_t)>())[0];
  sampler = samplers[0];
  // The last token joins the cache too, so the conversation can continue after it.
  if (length(seq) < impl_->c.max_position_embeddings) append({{seq, {out.tokens.back()}}});
  return out;
}

std::vector<Completion> Engine::run(const std::vector<int64_t>& seqs, const std::vector<std::vector<uint32_t>>& feeds,
                                    const SamplingOptions& options, std::vector<Sampler>& samplers,
                                    const std::function<bool(size_t, uint32_t)>& on_token) {
  const int64_t V = impl_->c.vocab_size, limit = std::min<int64_t>(V, int64_t(impl_->tokenizer.vocab_size()));
  const uint32_t eos = impl_->tokenizer.eos_id();
  const size_t n = seqs.size();
  std::vector<Completion> out(n);
  std::vector<std::pair<int64_t, std::vector<uint32_t>>> batch;
  std::vector<size_t> active;
  for (size_t i = 0; i < n; ++i) {
    out[i].prompt_tokens = length(seqs[i]) + int64_t(feeds[i].size());
    batch.emplace_back(seqs[i], feeds[i]);
    active.push_back(i);
  }
  std::vector<float> logits = append(batch);
  while (!active.empty()) {
    std::vector<size_t> still;
    batch.clear();
    for (size_t a = 0; a < active.size(); ++a) {
      const size_t i = active[a];
      Completion& comp = out[i];
      std::span<float> row(&logits[a * size_t(V)], size_t(limit));  // never the padding rows past the tokenizer
      const uint32_t token = samplers[i].sample(row, options, tokens(seqs[i]));
      comp.tokens.push_back(token);
      if (on_token && !on_token(i, token)) comp.finish_reason = "cancelled";
      else if (token == eos) comp.finish_reason = "eos";
      else if (!options.stop.empty()) {
        comp.text = impl_->tokenizer.decode(comp.tokens, true);
        for (const std::string& s : options.stop)
          if (size_t at = comp.text.find(s); at != std::string::npos) {
            comp.text.resize(at);
            comp.finish_reason = "stop";
          }
      }
      if (comp.finish_reason.empty() && (int64_t(comp.tokens.size()) >= options.max_new_tokens ||
                                         length(seqs[i]) + 1 > impl_->c.max_position_embeddings))
        comp.finish_reason = "length";
      if (comp.finish_reason.empty()) {
        still.push_back(i);
        batch.emplace_back(seqs[i], std::vector<uint32_t>{token});
      } else if (comp.finish_reason != "stop") {
        comp.text = impl_->tokenizer.decode(comp.tokens, true);
      }
    }
    active.swap(still);
    if (!active.empty()) logits = append(batch);
  }
  return out;
}

}  // namespace ds
