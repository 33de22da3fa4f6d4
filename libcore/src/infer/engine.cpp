#include "ds/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../model/batch.h"
#include "../model/routing.h"
#include "ds/cuda.h"
#include "ds/error.h"
#include "ds/ops.h"
#include "ds/parallel.h"
#include "engine_backend.h"

namespace ds {

ForwardWeights forward_weights(const InferenceWeights& weights) {
  const ModelConfig& c = weights.config();
  const int64_t d = c.hidden_size, H = c.num_attention_heads, dq = c.qk_head_dim(), r = c.kv_lora_rank;
  auto w = [&](const std::string& name, int64_t rows, int64_t cols) { return weights.matrix(name, {rows, cols}); };
  auto v = [&](const std::string& name, int64_t n) { return weights.vector(name, n); };
  auto mlp_weights = [&](const std::string& prefix, int64_t hidden) {
    return MlpWeights{w(prefix + "gate_proj.weight", hidden, d), w(prefix + "up_proj.weight", hidden, d),
                      w(prefix + "down_proj.weight", d, hidden), hidden};
  };
  ForwardWeights f;
  f.embed = w("model.embed_tokens.weight", c.vocab_size, d);
  f.final_norm = v("model.norm.weight", d);
  f.head = c.tie_word_embeddings ? f.embed : w("lm_head.weight", c.vocab_size, d);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    LayerWeights L;
    L.input_norm = v(p + "input_layernorm.weight", d);
    L.post_norm = v(p + "post_attention_layernorm.weight", d);
    if (c.q_lora_rank > 0) {
      L.q_a = w(p + "self_attn.q_a_proj.weight", c.q_lora_rank, d);
      L.q_norm = v(p + "self_attn.q_a_layernorm.weight", c.q_lora_rank);
      L.q_b = w(p + "self_attn.q_b_proj.weight", H * dq, c.q_lora_rank);
    } else {
      L.q_proj = w(p + "self_attn.q_proj.weight", H * dq, d);
    }
    L.kv_a = w(p + "self_attn.kv_a_proj_with_mqa.weight", r + c.qk_rope_head_dim, d);
    L.kv_norm = v(p + "self_attn.kv_a_layernorm.weight", r);
    L.kv_b = w(p + "self_attn.kv_b_proj.weight", H * (c.qk_nope_head_dim + c.v_head_dim), r);
    L.o_proj = w(p + "self_attn.o_proj.weight", d, H * c.v_head_dim);
    L.moe = c.is_moe_layer(l);
    if (L.moe) {
      L.router = w(p + "mlp.gate.weight", c.n_routed_experts, d);
      if (c.topk_method == TopkMethod::NoauxTc) L.bias = v(p + "mlp.gate.e_score_correction_bias", c.n_routed_experts);
      for (int64_t e = 0; e < c.n_routed_experts; ++e)
        L.experts.push_back(mlp_weights(fmt::format("{}mlp.experts.{}.", p, e), c.moe_intermediate_size));
      if (c.n_shared_experts > 0)
        L.shared = mlp_weights(p + "mlp.shared_experts.", c.moe_intermediate_size * c.n_shared_experts);
    } else {
      L.mlp = mlp_weights(p + "mlp.", c.intermediate_size);
    }
    f.layers.push_back(std::move(L));
  }
  return f;
}

namespace {

// y[rows, d] = down(silu(gate x) * up x)
void mlp(float* y, const float* x, int64_t rows, const MlpWeights& w) {
  std::vector<float> g(size_t(rows * w.hidden)), u(g.size());
  ops::linear(g.data(), x, w.gate, rows);
  ops::linear(u.data(), x, w.up, rows);
  ops::swiglu(g.data(), g.data(), u.data(), int64_t(g.size()));
  ops::linear(y, g.data(), w.down, rows);
}

// On the CPU, reading the weights in place (FP8 ones dequantized inside the GEMMs).
class CpuBackend final : public EngineBackend {
 public:
  explicit CpuBackend(const InferenceWeights& weights)
      : c(weights.config()), w(forward_weights(weights)), rope(model_rope_table(c)) {}

  std::vector<float> extend(const std::vector<int64_t>& seq_of, const std::vector<int32_t>& pos,
                            const std::vector<uint32_t>& tokens, const std::vector<int64_t>& logit_rows) override {
    const int64_t d = c.hidden_size, R = int64_t(tokens.size());
    for (int64_t s : seq_of)
      if (size_t(s) >= caches.size()) caches.resize(size_t(s) + 1, std::vector<std::vector<float>>(w.layers.size()));
    std::vector<float> h(size_t(R * d)), x(h.size()), y(h.size()), rstd(static_cast<size_t>(R)), row;
    for (int64_t i = 0; i < R; ++i) std::copy_n(w.embed.rows_f32(tokens[size_t(i)], 1, row), d, &h[size_t(i * d)]);
    for (size_t l = 0; l < w.layers.size(); ++l) {
      const LayerWeights& L = w.layers[l];
      ops::rmsnorm(x.data(), rstd.data(), h.data(), L.input_norm, R, d, c.rms_norm_eps);
      attention(y.data(), x.data(), L, l, seq_of, pos);
      for (size_t i = 0; i < h.size(); ++i) h[i] += y[i];
      ops::rmsnorm(x.data(), rstd.data(), h.data(), L.post_norm, R, d, c.rms_norm_eps);
      if (L.moe)
        moe(y.data(), x.data(), R, L);
      else
        mlp(y.data(), x.data(), R, L.mlp);
      for (size_t i = 0; i < h.size(); ++i) h[i] += y[i];
    }
    const int64_t n = int64_t(logit_rows.size());
    std::vector<float> last(size_t(n * d)), out(size_t(n * c.vocab_size));
    for (int64_t i = 0; i < n; ++i) std::copy_n(&h[size_t(logit_rows[size_t(i)] * d)], d, &last[size_t(i * d)]);
    rstd.resize(size_t(n));
    ops::rmsnorm(last.data(), rstd.data(), last.data(), w.final_norm, n, d, c.rms_norm_eps);
    ops::linear(out.data(), last.data(), w.head, n);
    return out;
  }

  int64_t cache_value_bytes() const override { return int64_t(sizeof(float)); }
  void reload_weights() override {}  // they are read in place

  void truncate(int64_t seq, int64_t length) override {
    if (size_t(seq) >= caches.size()) return;
    const int64_t width = c.kv_lora_rank + c.qk_rope_head_dim;
    for (auto& layer : caches[size_t(seq)]) {
      layer.resize(size_t(length * width));
      if (length == 0) layer.shrink_to_fit();
    }
  }

 private:
  // Absorbed MLA over the latent cache for R rows; rows of one sequence are consecutive with rising positions.
  void attention(float* out, const float* x, const LayerWeights& L, size_t layer, const std::vector<int64_t>& seq_of,
                 const std::vector<int32_t>& pos) {
    const int64_t R = int64_t(pos.size()), H = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim,
                  dq = c.qk_head_dim(), dv = c.v_head_dim, r = c.kv_lora_rank, width = r + dr;
    std::vector<float> q(size_t(R * H * dq));
    if (c.q_lora_rank > 0) {
      std::vector<float> cq(size_t(R * c.q_lora_rank)), rstd(static_cast<size_t>(R));
      ops::linear(cq.data(), x, L.q_a, R);
      ops::rmsnorm(cq.data(), rstd.data(), cq.data(), L.q_norm, R, c.q_lora_rank, c.rms_norm_eps);
      ops::linear(q.data(), cq.data(), L.q_b, R);
    } else {
      ops::linear(q.data(), x, L.q_proj, R);
    }
    ops::rope(q.data() + dn, pos.data(), R, H, H * dq, dq, rope, false);

    // The new tokens' latents join the cache before attending, so each row sees itself and the rows before it.
    std::vector<float> kva(size_t(R * width)), latent_kv(size_t(R * r)), rstd(static_cast<size_t>(R));
    ops::linear(kva.data(), x, L.kv_a, R);
    ops::rmsnorm(latent_kv.data(), rstd.data(), kva.data(), L.kv_norm, R, r, c.rms_norm_eps, width);
    ops::rope(kva.data() + r, pos.data(), R, 1, width, dr, rope, false);
    for (int64_t i = 0; i < R; ++i) {
      std::vector<float>& cache = caches[size_t(seq_of[size_t(i)])][layer];
      cache.resize(size_t((pos[size_t(i)] + 1) * width));
      float* row = &cache[size_t(pos[size_t(i)] * width)];
      std::copy_n(&latent_kv[size_t(i * r)], r, row);
      std::copy_n(&kva[size_t(i * width + r)], dr, row + r);
    }

    // q~_h = W_UK[h]^T q_nope_h, with W_UK[h] the rows h*(dn+dv) .. +dn of kv_b, each of length r. One head per
    // thread (BLAS stays on its thread inside a parallel region), which dequantizes the rows of an FP8 kv_b itself.
    std::vector<float> qt(size_t(R * H * r)), latent(size_t(R * H * r)), o(size_t(R * H * dv));
#pragma omp parallel if (parallel_worth(R * H * r * dn))
    {
      std::vector<float> rows;
#pragma omp for schedule(static)
      for (int64_t h = 0; h < H; ++h)
        ops::gemm<float>(false, false, R, r, dn, 1.0f, q.data() + h * dq, H * dq,
                         L.kv_b.rows_f32(h * (dn + dv), dn, rows), r, 0.0f, qt.data() + h * r, H * r);
    }
    const float scale = float(c.softmax_scale());
    int64_t keys = 0;  // cached rows attended to, over all the rows
    for (int64_t i = 0; i < R; ++i) keys += pos[size_t(i)] + 1;
#pragma omp parallel if (parallel_worth(keys * H * width))
    {
      std::vector<float> p;
#pragma omp for collapse(2) schedule(static)
      for (int64_t i = 0; i < R; ++i)
        for (int64_t h = 0; h < H; ++h) {
          const float* cache = caches[size_t(seq_of[size_t(i)])][layer].data();
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
#pragma omp parallel if (parallel_worth(R * H * dv * r))
    {
      std::vector<float> rows;
#pragma omp for schedule(static)
      for (int64_t h = 0; h < H; ++h)
        ops::gemm<float>(false, true, R, dv, r, 1.0f, latent.data() + h * r, H * r,
                         L.kv_b.rows_f32(h * (dn + dv) + dn, dv, rows), r, 0.0f, o.data() + h * dv, H * dv);
    }
    ops::linear(out, o.data(), L.o_proj, R);
  }

  void moe(float* y, const float* x, int64_t R, const LayerWeights& L) const {
    const int64_t d = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
    std::vector<float> scores(size_t(R * E)), weights(size_t(R * K));
    std::vector<int32_t> chosen(size_t(R * K));
    ops::linear(scores.data(), x, L.router, R);
    if (c.scoring_func == ScoringFunc::Sigmoid)
      for (float& s : scores) s = 1.0f / (1.0f + std::exp(-s));
    else
      ops::softmax_rows(scores.data(), R, E);
    for (int64_t i = 0; i < R; ++i)
      route_token(c, &scores[size_t(i * E)], L.bias, &chosen[size_t(i * K)], &weights[size_t(i * K)]);
    if (L.shared.hidden > 0)
      mlp(y, x, R, L.shared);
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
      mlp(ye.data(), xe.data(), n, L.experts[size_t(e)]);
      for (int64_t k = 0; k < n; ++k) {
        float* dst = y + (rows[size_t(k)] / K) * d;
        const float w = weights[size_t(rows[size_t(k)])];
        for (int64_t j = 0; j < d; ++j) dst[j] += w * ye[size_t(k * d + j)];
      }
    }
  }

  const ModelConfig c;
  const ForwardWeights w;
  const ops::RopeTable rope;
  std::vector<std::vector<std::vector<float>>> caches;  // [sequence][layer]: length x (kv_lora_rank + qk_rope_head_dim)
};

}  // namespace

struct Engine::Impl {
  Impl(const Tokenizer& t, const ModelConfig& config) : tokenizer(t), c(config) {}
  const Tokenizer& tokenizer;
  const ModelConfig c;
  std::unique_ptr<EngineBackend> backend;
  struct Sequence {
    bool open = false;
    int64_t length = 0;
    std::vector<uint32_t> tokens;
  };
  std::vector<Sequence> seqs;

  // Appends each listed sequence's tokens to it in one batched pass; the logits of the last appended token of each
  // (all: of every appended token), in batch order.
  std::vector<float> extend(const std::vector<std::pair<int64_t, std::vector<uint32_t>>>& batch, bool all) {
    std::vector<int64_t> seq_of, logit_rows;
    std::vector<int32_t> pos;
    std::vector<uint32_t> tokens;
    for (const auto& [seq, ids] : batch) {
      if (seq < 0 || size_t(seq) >= seqs.size() || !seqs[size_t(seq)].open) fail("sequence {} is not open", seq);
      if (ids.empty()) fail("nothing to append to sequence {}", seq);
      const int64_t start = seqs[size_t(seq)].length;
      if (start + int64_t(ids.size()) > c.max_position_embeddings)
        fail("{} tokens exceed the model's context of {}", start + int64_t(ids.size()), c.max_position_embeddings);
      for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] >= uint32_t(c.vocab_size)) fail("token id {} is outside the vocabulary of {}", ids[i], c.vocab_size);
        if (all || i + 1 == ids.size()) logit_rows.push_back(int64_t(tokens.size()));
        seq_of.push_back(seq), pos.push_back(int32_t(start + int64_t(i))), tokens.push_back(ids[i]);
      }
    }
    std::vector<float> logits = backend->extend(seq_of, pos, tokens, logit_rows);
    for (const auto& [seq, ids] : batch) {
      seqs[size_t(seq)].length += int64_t(ids.size());
      seqs[size_t(seq)].tokens.insert(seqs[size_t(seq)].tokens.end(), ids.begin(), ids.end());
    }
    return logits;
  }
};

Engine::Engine(const InferenceWeights& weights, const Tokenizer& tokenizer, const Device& device)
    : impl_(std::make_unique<Impl>(tokenizer, weights.config())) {
  if (!device.cuda) {
    impl_->backend = std::make_unique<CpuBackend>(weights);
  } else {
#ifdef DS_CUDA
    cuda::select_device(device.index);
    impl_->backend = make_cuda_backend(weights);
#else
    fail("'{}' is not available: this build runs on the CPU only", device.name());
#endif
  }
}
Engine::~Engine() = default;

const ModelConfig& Engine::config() const { return impl_->c; }

void Engine::reload_weights() { impl_->backend->reload_weights(); }

int64_t Engine::cache_bytes_per_token() const {
  const ModelConfig& c = impl_->c;
  return c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * impl_->backend->cache_value_bytes();
}

int64_t Engine::naive_cache_bytes_per_token() const {
  const ModelConfig& c = impl_->c;
  return c.num_hidden_layers * c.num_attention_heads * (c.qk_head_dim() + c.v_head_dim) *
         impl_->backend->cache_value_bytes();
}

int64_t Engine::open() {
  auto& seqs = impl_->seqs;
  auto it = std::find_if(seqs.begin(), seqs.end(), [](const Impl::Sequence& s) { return !s.open; });
  if (it == seqs.end()) it = seqs.emplace(seqs.end());
  it->open = true;
  it->length = 0;
  it->tokens.clear();
  return int64_t(it - seqs.begin());
}

void Engine::close(int64_t seq) {
  auto& s = impl_->seqs.at(size_t(seq));
  s.open = false;
  impl_->backend->truncate(seq, 0);
}

int64_t Engine::length(int64_t seq) const { return impl_->seqs.at(size_t(seq)).length; }

void Engine::truncate(int64_t seq, int64_t length) {
  auto& s = impl_->seqs.at(size_t(seq));
  if (length < 0 || length > s.length) fail("cannot truncate sequence {} of {} tokens to {}", seq, s.length, length);
  impl_->backend->truncate(seq, length);
  s.tokens.resize(size_t(length));
  s.length = length;
}

const std::vector<uint32_t>& Engine::tokens(int64_t seq) const { return impl_->seqs.at(size_t(seq)).tokens; }

std::vector<float> Engine::append(const std::vector<std::pair<int64_t, std::vector<uint32_t>>>& batch) {
  return impl_->extend(batch, false);
}

std::vector<float> Engine::forward(const int32_t* inputs, int64_t B, int64_t Tn, const int32_t* positions) {
  const int64_t V = impl_->c.vocab_size;
  // Each document is a sequence of its own, so that it attends only to itself.
  std::vector<std::pair<int64_t, std::vector<uint32_t>>> docs;
  struct Closer {  // the documents' sequences are closed however this ends
    Engine& engine;
    std::vector<std::pair<int64_t, std::vector<uint32_t>>>& docs;
    ~Closer() {
      for (const auto& doc : docs) engine.close(doc.first);
    }
  } closer{*this, docs};
  const std::vector<int32_t> pos = checked_positions(positions, B, Tn);
  for (int64_t n = 0; n < B * Tn; ++n) {
    if (inputs[n] < 0 || inputs[n] >= V) fail("token id {} is outside the vocabulary of {}", inputs[n], V);
    if (pos[size_t(n)] == 0) docs.emplace_back(open(), std::vector<uint32_t>());
    docs.back().second.push_back(uint32_t(inputs[n]));
  }
  if (docs.empty()) return {};
  return impl_->extend(docs, true);
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
  Completion out =
      run({seq}, {tokens}, options, samplers,
          on_token ? [&](size_t, uint32_t t) { return on_token(t); } : std::function<bool(size_t, uint32_t)>())[0];
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
      if (on_token && !on_token(i, token))
        comp.finish_reason = "cancelled";
      else if (token == eos)
        comp.finish_reason = "eos";
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
