// The Engine on a CUDA device: the CPU backend's forward (engine.cpp) with the kernels of cuda_ops.h and
// cuBLASLt BF16 GEMMs with FP32 accumulation. Activations stay F32 and are rounded to BF16 as GEMM inputs; the
// weights live on the device as BF16; each layer's latent cache is one BF16 array [slots, capacity, r + dr] that
// grows (slots as sequences open, capacity doubling up to the context) and is addressed by sequence handle.
// Everything is queued on one stream, so scratch buffers return to the caching allocator as soon as they are queued.
#include <cuda_bf16.h>

#include <algorithm>
#include <type_traits>

#include "../infer/engine_backend.h"
#include "cuda_gemm.h"
#include "cuda_memory.h"
#include "cuda_ops.h"
#include "cuda_stream.h"
#include "ds/bf16.h"

namespace ds {

namespace {

using Bf16 = __nv_bfloat16;
using cuda::DeviceBuffer;

constexpr int64_t kMinCacheCapacity = 256;

struct DeviceMlp {
  DeviceBuffer<Bf16> gate, up, down;
  int64_t hidden = 0;
};

struct DeviceLayer {
  DeviceBuffer<float> input_norm, post_norm, q_norm, kv_norm, bias;
  DeviceBuffer<Bf16> q_a, q_b, q_proj, kv_a, kv_b, o_proj, router;
  DeviceMlp mlp, shared;
  std::vector<DeviceMlp> experts;
  std::vector<const Bf16*> expert_gate, expert_up, expert_down;  // device pointers, for the grouped GEMMs
  DeviceBuffer<Bf16> cache;                                      // [slots, capacity, kv_lora_rank + qk_rope_head_dim]
};

class CudaBackend final : public EngineBackend {
 public:
  explicit CudaBackend(const InferenceWeights& weights)
      : c(weights.config()), host(forward_weights(weights)), layers(host.layers.size()) {
    reload_weights();
    rope = cuda::upload_rope_table(model_rope_table(c), stream);
    stream.synchronize();
  }

  int64_t cache_value_bytes() const override { return int64_t(sizeof(Bf16)); }

  // Copies every weight to the device, allocating the buffers the first time.
  void reload_weights() override {
    upload(embed, host.embed);
    upload(head, host.head);
    upload(final_norm, host.final_norm, c.hidden_size);
    for (size_t l = 0; l < layers.size(); ++l) {
      const LayerWeights& L = host.layers[l];
      DeviceLayer& D = layers[l];
      upload(D.input_norm, L.input_norm, c.hidden_size);
      upload(D.post_norm, L.post_norm, c.hidden_size);
      if (c.q_lora_rank > 0) {
        upload(D.q_a, L.q_a);
        upload(D.q_norm, L.q_norm, c.q_lora_rank);
        upload(D.q_b, L.q_b);
      } else {
        upload(D.q_proj, L.q_proj);
      }
      upload(D.kv_a, L.kv_a);
      upload(D.kv_norm, L.kv_norm, c.kv_lora_rank);
      upload(D.kv_b, L.kv_b);
      upload(D.o_proj, L.o_proj);
      if (L.moe) {
        upload(D.router, L.router);
        if (L.bias) upload(D.bias, L.bias, c.n_routed_experts);
        D.experts.resize(L.experts.size());
        D.expert_gate.clear(), D.expert_up.clear(), D.expert_down.clear();
        for (size_t e = 0; e < L.experts.size(); ++e) {
          upload(D.experts[e], L.experts[e]);
          D.expert_gate.push_back(D.experts[e].gate.data());
          D.expert_up.push_back(D.experts[e].up.data());
          D.expert_down.push_back(D.experts[e].down.data());
        }
        upload(D.shared, L.shared);
      } else {
        upload(D.mlp, L.mlp);
      }
    }
    stream.synchronize();  // the host values may change as soon as this returns
  }

  // Positions past a sequence's length are written again before they are read, so forgetting them is free.
  void truncate(int64_t, int64_t) override {}

  std::vector<float> extend(const std::vector<int64_t>& seq_of, const std::vector<int32_t>& pos,
                            const std::vector<uint32_t>& tokens, const std::vector<int64_t>& logit_rows) override {
    const int64_t R = int64_t(tokens.size()), d = c.hidden_size, n = int64_t(logit_rows.size());
    reserve(seq_of, pos);
    std::vector<int32_t> lengths(pos.size());
    for (size_t i = 0; i < pos.size(); ++i) lengths[i] = pos[i] + 1;
    const Rows rows{cuda::to_device(std::vector<int32_t>(seq_of.begin(), seq_of.end()), stream),
                    cuda::to_device(pos, stream), cuda::to_device(lengths, stream), R};
    DeviceBuffer<float> h(size_t(R * d)), x(h.size()), rstd(static_cast<size_t>(R));
    const DeviceBuffer<int32_t> ids = cuda::to_device(std::vector<int32_t>(tokens.begin(), tokens.end()), stream);
    cuda::moe_gather(h.data(), embed.data(), ids.data(), R, d, stream);
    for (size_t l = 0; l < layers.size(); ++l) {
      DeviceLayer& L = layers[l];
      cuda::rmsnorm(x.data(), rstd.data(), h.data(), L.input_norm.data(), R, d, float(c.rms_norm_eps), d, stream);
      attention(h.data(), x.data(), L, rows);
      cuda::rmsnorm(x.data(), rstd.data(), h.data(), L.post_norm.data(), R, d, float(c.rms_norm_eps), d, stream);
      if (host.layers[l].moe)
        moe(h.data(), x.data(), R, L);
      else
        mlp(h.data(), x.data(), R, L.mlp);
    }
    const DeviceBuffer<int32_t> picked =
        cuda::to_device(std::vector<int32_t>(logit_rows.begin(), logit_rows.end()), stream);
    DeviceBuffer<float> last(size_t(n * d)), logits(size_t(n * c.vocab_size));
    cuda::moe_gather(last.data(), h.data(), picked.data(), n, d, stream);
    cuda::rmsnorm(last.data(), rstd.data(), last.data(), final_norm.data(), n, d, float(c.rms_norm_eps), d, stream);
    linear(logits.data(), last.data(), head, n, c.vocab_size, d, false);
    return cuda::to_host(logits, stream);
  }

 private:
  struct Rows {  // the pass's rows on the device: sequence (cache slot), position, and length with the new token
    DeviceBuffer<int32_t> slots, pos, lengths;
    int64_t count;
  };

  // A host matrix as T on the device, a few MiB at a time (an FP8 one dequantized on the way).
  template <typename T>
  void upload(DeviceBuffer<T>& out, const WeightMatrix& w) {
    if (out.size() != size_t(w.rows * w.cols)) out = DeviceBuffer<T>(size_t(w.rows * w.cols));
    const int64_t step = std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(1, w.cols));
    std::vector<float> buffer;
    std::vector<T> values;
    for (int64_t first = 0; first < w.rows; first += step) {
      const int64_t n = std::min(step, w.rows - first);
      const float* rows = w.rows_f32(first, n, buffer);
      values.resize(size_t(n * w.cols));
      for (size_t i = 0; i < values.size(); ++i) {
        if constexpr (std::is_same_v<T, Bf16>)
          values[i] = Bf16(__nv_bfloat16_raw{float_to_bf16(rows[i])});
        else
          values[i] = rows[i];
      }
      cuda::copy_to_device(out.data() + first * w.cols, values.data(), values.size(), stream);
      stream.synchronize();  // `values` is refilled next
    }
  }
  void upload(DeviceBuffer<float>& out, const float* v, int64_t n) {
    if (out.size() != size_t(n)) out = DeviceBuffer<float>(static_cast<size_t>(n));
    cuda::copy_to_device(out.data(), v, size_t(n), stream);
  }
  void upload(DeviceMlp& out, const MlpWeights& w) {
    out.hidden = w.hidden;
    if (w.hidden == 0) return;  // no shared experts
    upload(out.gate, w.gate);
    upload(out.up, w.up);
    upload(out.down, w.down);
  }

  // Room in every layer's cache for the sequences and positions of a pass; the cached rows move to the new array.
  void reserve(const std::vector<int64_t>& seq_of, const std::vector<int32_t>& pos) {
    int64_t slots = slot_count, needed = capacity;
    for (size_t i = 0; i < pos.size(); ++i) {
      slots = std::max(slots, seq_of[i] + 1);
      needed = std::max(needed, int64_t(pos[i]) + 1);
    }
    if (slots == slot_count && needed == capacity) return;
    int64_t grown = std::max(capacity, std::min(kMinCacheCapacity, c.max_position_embeddings));
    while (grown < needed) grown = std::min(2 * grown, c.max_position_embeddings);
    const int64_t width = c.kv_lora_rank + c.qk_rope_head_dim;
    for (DeviceLayer& L : layers) {
      DeviceBuffer<Bf16> cache(size_t(slots * grown * width));
      if (slot_count > 0)
        DS_CUDA_CHECK(cudaMemcpy2DAsync(
            cache.data(), size_t(grown * width) * sizeof(Bf16), L.cache.data(), size_t(capacity * width) * sizeof(Bf16),
            size_t(capacity * width) * sizeof(Bf16), size_t(slot_count), cudaMemcpyDeviceToDevice, stream));
      L.cache = std::move(cache);
    }
    slot_count = slots, capacity = grown;
  }

  DeviceBuffer<Bf16> bf16(const float* x, int64_t n) {
    DeviceBuffer<Bf16> out(static_cast<size_t>(n));
    cuda::cast_f32_to_bf16(out.data(), x, n, stream);
    return out;
  }

  // y [R, N] = x [R, K] W^T with W [N, K]; added to y when accumulate (the residual stream).
  void linear(float* y, const float* x, const DeviceBuffer<Bf16>& w, int64_t R, int64_t N, int64_t K, bool accumulate) {
    const DeviceBuffer<Bf16> xb = bf16(x, R * K);
    cuda::gemm_bf16(false, true, R, N, K, 1.0f, xb.data(), K, w.data(), K, accumulate ? 1.0f : 0.0f, y,
                    cuda::OutType::F32, N, stream);
  }

  // y += down(silu(gate x) * up x)
  void mlp(float* y, const float* x, int64_t R, const DeviceMlp& w) {
    const int64_t d = c.hidden_size;
    DeviceBuffer<float> g(size_t(R * w.hidden)), u(g.size());
    linear(g.data(), x, w.gate, R, w.hidden, d, false);
    linear(u.data(), x, w.up, R, w.hidden, d, false);
    cuda::swiglu(g.data(), g.data(), u.data(), int64_t(g.size()), stream);
    linear(y, g.data(), w.down, R, d, w.hidden, true);
  }

  // h += the absorbed MLA of x over the latent caches, after the pass's rows join them.
  void attention(float* h, const float* x, DeviceLayer& L, const Rows& rows) {
    const int64_t R = rows.count, d = c.hidden_size, H = c.num_attention_heads, dn = c.qk_nope_head_dim,
                  dr = c.qk_rope_head_dim, dq = c.qk_head_dim(), dv = c.v_head_dim, r = c.kv_lora_rank, width = r + dr;
    DeviceBuffer<float> q(size_t(R * H * dq)), rstd(static_cast<size_t>(R));
    if (c.q_lora_rank > 0) {
      DeviceBuffer<float> cq(size_t(R * c.q_lora_rank));
      linear(cq.data(), x, L.q_a, R, c.q_lora_rank, d, false);
      cuda::rmsnorm(cq.data(), rstd.data(), cq.data(), L.q_norm.data(), R, c.q_lora_rank, float(c.rms_norm_eps),
                    c.q_lora_rank, stream);
      linear(q.data(), cq.data(), L.q_b, R, H * dq, c.q_lora_rank, false);
    } else {
      linear(q.data(), x, L.q_proj, R, H * dq, d, false);
    }
    cuda::rope(q.data() + dn, rows.pos.data(), R, H, H * dq, dq, rope, false, stream);

    DeviceBuffer<float> kva(size_t(R * width)), latent_kv(size_t(R * r));
    linear(kva.data(), x, L.kv_a, R, width, d, false);
    cuda::rmsnorm(latent_kv.data(), rstd.data(), kva.data(), L.kv_norm.data(), R, r, float(c.rms_norm_eps), width,
                  stream);
    cuda::rope(kva.data() + r, rows.pos.data(), R, 1, width, dr, rope, false, stream);
    cuda::mla_cache_write(L.cache.data(), capacity, latent_kv.data(), kva.data() + r, width, rows.slots.data(),
                          rows.pos.data(), R, r, dr, stream);

    // Per head, the query in the latent space: [q~ = q_nope W_UK[h] | q_pe], W_UK[h] the rows h*(dn+dv) .. +dn of
    // kv_b, each of length r.
    DeviceBuffer<float> qt(size_t(R * H * width)), latent(size_t(R * H * r)), o(size_t(R * H * dv));
    const DeviceBuffer<Bf16> qb = bf16(q.data(), R * H * dq);
    for (int64_t head = 0; head < H; ++head)
      cuda::gemm_bf16(false, false, R, r, dn, 1.0f, qb.data() + head * dq, H * dq, L.kv_b.data() + head * (dn + dv) * r,
                      r, 0.0f, qt.data() + head * width, cuda::OutType::F32, H * width, stream);
    DS_CUDA_CHECK(cudaMemcpy2DAsync(qt.data() + r, size_t(width) * sizeof(float), q.data() + dn,
                                    size_t(dq) * sizeof(float), size_t(dr) * sizeof(float), size_t(R * H),
                                    cudaMemcpyDeviceToDevice, stream));
    cuda::mla_decode(latent.data(), qt.data(), L.cache.data(), rows.slots.data(), rows.lengths.data(), R, H, capacity,
                     r, dr, float(c.softmax_scale()), stream);
    // o_h = W_UV[h] (P c), W_UV[h] the rows h*(dn+dv)+dn .. +dv of kv_b.
    const DeviceBuffer<Bf16> lb = bf16(latent.data(), R * H * r);
    for (int64_t head = 0; head < H; ++head)
      cuda::gemm_bf16(false, true, R, dv, r, 1.0f, lb.data() + head * r, H * r,
                      L.kv_b.data() + (head * (dn + dv) + dn) * r, r, 0.0f, o.data() + head * dv, cuda::OutType::F32,
                      H * dv, stream);
    linear(h, o.data(), L.o_proj, R, d, H * dv, true);
  }

  // h += the routed experts' weighted outputs and the shared experts' output.
  void moe(float* h, const float* x, int64_t R, DeviceLayer& L) {
    const int64_t d = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok,
                  hidden = c.moe_intermediate_size;
    DeviceBuffer<float> logits(size_t(R * E)), scores(logits.size()), weights(size_t(R * K));
    DeviceBuffer<int32_t> chosen(size_t(R * K)), offsets(size_t(E + 1)), source(size_t(R * K)), row_of(size_t(R * K));
    linear(logits.data(), x, L.router, R, E, d, false);
    cuda::route(chosen.data(), weights.data(), scores.data(), logits.data(), L.bias.size() ? L.bias.data() : nullptr, R,
                c, stream);
    cuda::moe_plan(offsets.data(), source.data(), row_of.data(), chosen.data(), R, K, E, stream);
    const std::vector<int32_t> rows_of_expert = cuda::to_host(offsets, stream);  // the grouped GEMMs' host offsets
    DeviceBuffer<float> xe(size_t(R * K * d)), g(size_t(R * K * hidden)), u(g.size()), ye(xe.size());
    cuda::moe_gather(xe.data(), x, source.data(), R * K, d, stream);
    const DeviceBuffer<Bf16> xb = bf16(xe.data(), R * K * d);
    cuda::grouped_linear_bf16(g.data(), cuda::OutType::F32, xb.data(), L.expert_gate.data(), rows_of_expert.data(), E,
                              hidden, d, stream);
    cuda::grouped_linear_bf16(u.data(), cuda::OutType::F32, xb.data(), L.expert_up.data(), rows_of_expert.data(), E,
                              hidden, d, stream);
    cuda::swiglu(g.data(), g.data(), u.data(), int64_t(g.size()), stream);
    const DeviceBuffer<Bf16> gb = bf16(g.data(), int64_t(g.size()));
    cuda::grouped_linear_bf16(ye.data(), cuda::OutType::F32, gb.data(), L.expert_down.data(), rows_of_expert.data(), E,
                              d, hidden, stream);
    cuda::moe_combine(h, ye.data(), row_of.data(), weights.data(), R, K, d, stream);
    if (L.shared.hidden > 0) mlp(h, x, R, L.shared);
  }

  const ModelConfig c;
  const ForwardWeights host;  // what reload_weights() copies: views of the caller's weights
  cuda::Stream stream;
  DeviceBuffer<float> embed, final_norm;
  DeviceBuffer<Bf16> head;
  std::vector<DeviceLayer> layers;
  cuda::RopeTable rope;
  int64_t slot_count = 0, capacity = 0;
};

}  // namespace

std::unique_ptr<EngineBackend> make_cuda_backend(const InferenceWeights& weights) {
  return std::make_unique<CudaBackend>(weights);
}

}  // namespace ds
