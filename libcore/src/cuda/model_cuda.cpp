// TrainModel and DeviceAdamW (cuda_model.h): the CPU model's forward and backward (model.cpp, block.cpp, mla.cpp,
// moe.cpp) module by module on one CUDA stream, with the same parameters at the same flat offsets. Each module's
// forward keeps in its layer what its backward reads; every backward adds into the gradients and into dx, as on the
// CPU. Scratch buffers come from the caching allocator and go back to it as soon as their work is queued, which is
// safe because everything runs on the one stream.
#include "cuda_model.h"

#include <cuda_bf16.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "../model/batch.h"
#include "cuda_gemm.h"
#include "cuda_memory.h"
#include "cuda_ops.h"
#include "cuda_stream.h"
#include "ds/error.h"
#include "fp8_layout.h"

namespace ds::cuda {

namespace {

using Bf16 = __nv_bfloat16;

// A linear layer without bias, y = x W^T, W [out, in] at offset w of the flat arrays.
struct Lin {
  std::string name;
  int64_t w = -1, in = 0, out = 0;
  bool fp8_eligible = true;  // Linear::fp8_eligible: false for the router gate and MTP's eh_proj
};
struct Norm {
  int64_t w = -1, dim = 0;
};
struct MlpParams {
  Lin gate, up, down;
  int64_t hidden = 0;  // 0: none (a MoE layer without shared experts)
};
// The SwiGLU intermediates an MLP's backward reads: g = gate x, u = up x, a = silu(g) u.
struct MlpActs {
  DeviceBuffer<float> g, u, a;
};

// A decoder block's parameters and what its last forward kept.
struct Layer {
  Norm input_norm, post_norm, q_norm, kv_norm;
  Lin q_a, q_b, q_proj, kv_a, kv_b, o_proj;
  bool moe = false;
  MlpParams mlp, shared;
  Lin router;
  int64_t bias = -1;  // e_score_correction_bias, or -1
  std::vector<MlpParams> experts;

  const float* h_in = nullptr;  // the block's input, owned by the caller
  DeviceBuffer<float> x1, rstd1, h_mid, x2, rstd2;
  // MLA: q after RoPE, [c_KV | k_pe] with k_pe rotated, the normalised latent, per-head k and v, o and lse.
  DeviceBuffer<float> cq, cqn, rstd_q, q, kva, ckvn, rstd_kv, kv, k, v, o, lse;
  MlpActs mlp_acts, shared_acts;
  // MoE: routing, the expert-major plan (offsets also on the host), the experts' inputs, intermediates and outputs.
  DeviceBuffer<float> scores, weights, xe, ye;
  DeviceBuffer<int32_t> chosen, offsets, source, row_of;
  std::vector<int32_t> host_offsets;
  MlpActs expert_acts;  // all experts' rows, expert-major
  double balance_alpha = 0;
  DeviceBuffer<float> balance_f;  // [B, E] the balance loss's f_i per sequence (constant in the gradient)
};

// A batch's rows grouped by token, as cuda::embedding_backward takes them: distinct tokens in increasing order, each
// with its rows in increasing order.
struct TokenRows {
  DeviceBuffer<int32_t> unique_tokens, offsets, rows;
  int64_t unique = 0;
};
TokenRows rows_by_token(const std::vector<int32_t>& tokens, cudaStream_t stream) {
  std::vector<int32_t> rows(tokens.size()), unique, offsets;
  std::iota(rows.begin(), rows.end(), 0);
  std::stable_sort(rows.begin(), rows.end(),
                   [&](int32_t a, int32_t b) { return tokens[size_t(a)] < tokens[size_t(b)]; });
  for (size_t i = 0; i < rows.size(); ++i)
    if (i == 0 || tokens[size_t(rows[i])] != tokens[size_t(rows[i - 1])]) {
      unique.push_back(tokens[size_t(rows[i])]);
      offsets.push_back(int32_t(i));
    }
  offsets.push_back(int32_t(rows.size()));
  return {to_device(unique, stream), to_device(offsets, stream), to_device(rows, stream), int64_t(unique.size())};
}

// MTP module k (model.cpp's MtpModule).
struct Mtp {
  Norm enorm, hnorm, head_norm;
  Lin eh_proj;
  Layer block;
  const float* prev = nullptr;  // the hidden state it read: the main model's last, or module k-1's output
  DeviceBuffer<int32_t> tokens, targets;
  TokenRows token_rows;  // tokens grouped for the embedding's backward
  DeviceBuffer<float> emb, rstd_e, rstd_h, cat, h_in, h_out, xf, rstd_f, dlogits;
  int64_t count = 0;
};

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

}  // namespace

struct TrainModel::Impl {
  ModelConfig c;
  std::vector<ParamInfo> infos;
  int64_t size = 0;
  Stream stream;
  DeviceBuffer<float> params, grads;
  DeviceBuffer<Bf16> params_bf16;  // what the BF16 GEMMs read
  RopeTable rope;
  int64_t embed = -1;
  Lin head;
  Norm final_norm;
  std::vector<Layer> layers;
  std::vector<Mtp> mtp;
  bool fp8 = false;

  // Forward state.
  bool with_loss = false, with_logits = false;  // the last forward had targets / had none, and is complete
  int64_t B = 0, Tn = 0, N = 0, count = 0;
  LossOptions options;
  size_t mtp_depths = 0;
  DeviceBuffer<int32_t> inputs, targets, pos;
  TokenRows input_rows;                     // inputs grouped for the embedding's backward
  std::vector<DeviceBuffer<float>> hidden;  // hidden[l] is the input of block l; hidden[L] the last block's output
  // The main head's input, and its logits: a forward with targets turns them into their gradient.
  DeviceBuffer<float> xf, rstd_f, dlogits;
  std::vector<double> logprobs, entropies;  // of the last forward with targets, per position

  explicit Impl(const Model<float>& model)
      : c(model.config()), infos(model.param_infos()), size(int64_t(model.params().size())) {
    params = to_device(model.params(), stream);
    grads = DeviceBuffer<float>(size_t(size));
    params_bf16 = DeviceBuffer<Bf16>(size_t(size));
    DS_CUDA_CHECK(cudaMemsetAsync(grads.data(), 0, grads.bytes(), stream));
    refresh_bf16();
    rope = upload_rope_table(model_rope_table(c), stream);
    const int64_t d = c.hidden_size;
    embed = param("model.embed_tokens.weight").offset;
    final_norm = norm("model.norm.weight");
    head = c.tie_word_embeddings ? Lin{"model.embed_tokens.weight", embed, d, c.vocab_size, false}
                                 : linear("lm_head.weight", false);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) layers.push_back(make_layer(l));
    for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
      const int64_t l = c.num_hidden_layers + k;
      Mtp m;
      m.enorm = norm(fmt::format("model.layers.{}.enorm.weight", l));
      m.hnorm = norm(fmt::format("model.layers.{}.hnorm.weight", l));
      m.head_norm = norm(fmt::format("model.layers.{}.shared_head.norm.weight", l));
      m.eh_proj = linear(fmt::format("model.layers.{}.eh_proj.weight", l), false);
      m.block = make_layer(l);
      mtp.push_back(std::move(m));
    }
    stream.synchronize();
  }

  // ---- Parameters by name ----
  const ParamInfo& param(const std::string& name) const {
    for (const ParamInfo& p : infos)
      if (p.name == name) return p;
    fail("the model has no parameter '{}'", name);
  }
  Lin linear(const std::string& name, bool fp8_eligible = true) const {
    const ParamInfo& p = param(name);
    return {name, p.offset, p.shape[1], p.shape[0], fp8_eligible};
  }
  Norm norm(const std::string& name) const {
    const ParamInfo& p = param(name);
    return {p.offset, p.shape[0]};
  }
  MlpParams mlp_params(const std::string& prefix) const {
    MlpParams m{linear(prefix + "gate_proj.weight"), linear(prefix + "up_proj.weight"),
                linear(prefix + "down_proj.weight"), 0};
    m.hidden = m.gate.out;
    return m;
  }
  Layer make_layer(int64_t layer) const {
    const std::string p = fmt::format("model.layers.{}.", layer), a = p + "self_attn.";
    Layer L;
    L.input_norm = norm(p + "input_layernorm.weight");
    L.post_norm = norm(p + "post_attention_layernorm.weight");
    if (c.q_lora_rank > 0) {
      L.q_a = linear(a + "q_a_proj.weight");
      L.q_norm = norm(a + "q_a_layernorm.weight");
      L.q_b = linear(a + "q_b_proj.weight");
    } else {
      L.q_proj = linear(a + "q_proj.weight");
    }
    L.kv_a = linear(a + "kv_a_proj_with_mqa.weight");
    L.kv_norm = norm(a + "kv_a_layernorm.weight");
    L.kv_b = linear(a + "kv_b_proj.weight");
    L.o_proj = linear(a + "o_proj.weight");
    L.moe = c.is_moe_layer(layer);
    if (!L.moe) {
      L.mlp = mlp_params(p + "mlp.");
      return L;
    }
    L.router = linear(p + "mlp.gate.weight", false);
    for (const ParamInfo& info : infos)
      if (info.name == p + "mlp.gate.e_score_correction_bias") L.bias = info.offset;
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      L.experts.push_back(mlp_params(fmt::format("{}mlp.experts.{}.", p, e)));
    if (c.n_shared_experts > 0) L.shared = mlp_params(p + "mlp.shared_experts.");
    return L;
  }

  float* w(int64_t offset) { return params.data() + offset; }
  float* g(int64_t offset) { return grads.data() + offset; }
  void refresh_bf16() { cast_f32_to_bf16(params_bf16.data(), params.data(), size, stream); }

  // ---- Buffers ----
  DeviceBuffer<float> buffer(int64_t n) { return DeviceBuffer<float>(size_t(n)); }
  DeviceBuffer<float> zeros(int64_t n) {
    DeviceBuffer<float> b(static_cast<size_t>(n));
    DS_CUDA_CHECK(cudaMemsetAsync(b.data(), 0, b.bytes(), stream));
    return b;
  }
  DeviceBuffer<float> copy(const float* src, int64_t n) {
    DeviceBuffer<float> b(static_cast<size_t>(n));
    DS_CUDA_CHECK(cudaMemcpyAsync(b.data(), src, b.bytes(), cudaMemcpyDeviceToDevice, stream));
    return b;
  }
  DeviceBuffer<Bf16> bf16(const float* x, int64_t n) {
    DeviceBuffer<Bf16> b(static_cast<size_t>(n));
    cast_f32_to_bf16(b.data(), x, n, stream);
    return b;
  }
  // width values of each of rows rows, from src (rows src_stride apart) to dst (dst_stride apart).
  void copy_columns(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t width, int64_t rows) {
    if (rows == 0) return;
    DS_CUDA_CHECK(cudaMemcpy2DAsync(dst, size_t(dst_stride) * sizeof(float), src, size_t(src_stride) * sizeof(float),
                                    size_t(width) * sizeof(float), size_t(rows), cudaMemcpyDeviceToDevice, stream));
  }

  // ---- Norms ----
  void norm_forward(float* y, float* rstd, const float* x, const Norm& n, int64_t rows, int64_t x_stride = 0) {
    rmsnorm(y, rstd, x, w(n.w), rows, n.dim, float(c.rms_norm_eps), x_stride, stream);
  }
  void norm_backward(float* dx, const float* dy, const float* x, const float* rstd, const Norm& n, int64_t rows,
                     int64_t x_stride = 0) {
    rmsnorm_backward(dx, g(n.w), dy, x, w(n.w), rstd, rows, n.dim, x_stride, stream);
  }

  // ---- Linear layers: BF16 operands, FP32 accumulation; FP8 for the eligible ones under set_fp8 ----
  bool in_fp8(const Lin& l) const { return fp8 && l.fp8_eligible; }

  void linear_forward(float* y, const float* x, const Lin& l, int64_t M) {
    if (M == 0) return;
    if (in_fp8(l)) return fp8_forward(y, x, l, M);
    const DeviceBuffer<Bf16> xb = bf16(x, M * l.in);
    gemm_bf16(false, true, M, l.out, l.in, 1.0f, xb.data(), l.in, params_bf16.data() + l.w, l.in, 0.0f, y, OutType::F32,
              l.out, stream);
  }
  // dx [M, in] += dy W and dW += dy^T x.
  void linear_backward(float* dx, const float* dy, const float* x, const Lin& l, int64_t M) {
    if (M == 0) return;
    if (in_fp8(l)) return fp8_backward(dx, dy, x, l, M);
    const DeviceBuffer<Bf16> dyb = bf16(dy, M * l.out), xb = bf16(x, M * l.in);
    gemm_bf16(false, false, M, l.in, l.out, 1.0f, dyb.data(), l.out, params_bf16.data() + l.w, l.in, 1.0f, dx,
              OutType::F32, l.in, stream);
    gemm_bf16(true, false, l.out, l.in, M, 1.0f, dyb.data(), l.out, xb.data(), l.in, 1.0f, g(l.w), OutType::F32, l.in,
              stream);
  }

  // FP8: every GEMM's K is padded with zeros to whole 128-wide scale tiles (the tokens of the weight gradient, the
  // features of the others), whatever the batch, an expert's share of it, or the layer's sizes. Padding changes no
  // value and no scale: zeros add nothing to a tile's amax, and a zero row of 1x128 tiles is a group of its own.
  void check_fp8(const Lin& l) const {
    if (l.in % 8 != 0 || l.out % 8 != 0)
      fail(
          "FP8 training GEMMs of {} [{}, {}]: both sizes must be multiples of 8 (cuBLASLt's FP8 alignment); "
          "train this config without FP8",
          l.name, l.out, l.in);
  }
  // x [rows, cols] inside a zero [rows_p, cols_p]: x itself when nothing is added, else a copy held by keep.
  const float* padded(const float* x, int64_t rows, int64_t cols, int64_t rows_p, int64_t cols_p,
                      DeviceBuffer<float>& keep) {
    if (rows_p == rows && cols_p == cols) return x;
    keep = zeros(rows_p * cols_p);
    copy_columns(keep.data(), cols_p, x, cols, cols, rows);
    return keep.data();
  }
  struct Fp8Buffers {
    DeviceBuffer<uint8_t> codes;
    DeviceBuffer<float> scales;
    Fp8Operand operand(Fp8Scaling s) const { return {codes.data(), scales.data(), s}; }
  };
  static Fp8Buffers fp8_buffers(Fp8Scaling s, int64_t rows, int64_t K) {
    return {DeviceBuffer<uint8_t>(size_t(rows * K)), DeviceBuffer<float>(size_t(fp8_scale_count(s, rows, K)))};
  }

  // y [M, out] = x W^T: x in 1x128 groups, W in 128x128 blocks, K = in.
  void fp8_forward(float* y, const float* x, const Lin& l, int64_t M) {
    check_fp8(l);
    const int64_t Mp = round_up(M, kFp8Tile), K = round_up(l.in, kFp8Tile);
    DeviceBuffer<float> xpad, wpad;
    const float* xp = padded(x, M, l.in, Mp, K, xpad);
    const float* wp = padded(w(l.w), l.out, l.in, l.out, K, wpad);
    Fp8Buffers xq = fp8_buffers(Fp8Scaling::Groups, Mp, K), wq = fp8_buffers(Fp8Scaling::Blocks, l.out, K);
    quantize_groups(xq.codes.data(), xq.scales.data(), xp, Mp, K, stream);
    quantize_blocks(wq.codes.data(), wq.scales.data(), wp, l.out, K, stream);
    DeviceBuffer<float> yp = buffer(Mp * l.out);  // gemm_fp8 needs a 16-byte aligned output
    gemm_fp8(xq.operand(Fp8Scaling::Groups), wq.operand(Fp8Scaling::Blocks), Mp, l.out, K, 0.0f, yp.data(),
             OutType::F32, stream);
    DS_CUDA_CHECK(cudaMemcpyAsync(y, yp.data(), size_t(M * l.out) * sizeof(float), cudaMemcpyDeviceToDevice, stream));
  }

  // Data gradient dx += dy W: dy in 1x128 groups along out, W^T in 128x128 blocks, K = out. Weight gradient
  // dW += dy^T x: dy^T and x^T in groups of 128 tokens (128x1 tiles of dy and x), K = tokens. As Linear::backward
  // rounds them on the CPU.
  void fp8_backward(float* dx, const float* dy, const float* x, const Lin& l, int64_t M) {
    check_fp8(l);
    const int64_t Mp = round_up(M, kFp8Tile), K = round_up(l.out, kFp8Tile);
    DeviceBuffer<float> dypad, wpad;
    const float* dyp = padded(dy, M, l.out, Mp, K, dypad);
    const float* wp = padded(w(l.w), l.out, l.in, K, l.in, wpad);
    Fp8Buffers dyq = fp8_buffers(Fp8Scaling::Groups, Mp, K), wtq = fp8_buffers(Fp8Scaling::Blocks, l.in, K);
    quantize_groups(dyq.codes.data(), dyq.scales.data(), dyp, Mp, K, stream);
    quantize_blocks_transposed(wtq.codes.data(), wtq.scales.data(), wp, K, l.in, stream);
    DeviceBuffer<float> product = buffer(Mp * l.in);
    gemm_fp8(dyq.operand(Fp8Scaling::Groups), wtq.operand(Fp8Scaling::Blocks), Mp, l.in, K, 0.0f, product.data(),
             OutType::F32, stream);
    add(dx, dx, product.data(), M * l.in, stream);

    DeviceBuffer<float> dy_rows, x_rows;
    const float* dyt = padded(dy, M, l.out, Mp, l.out, dy_rows);
    const float* xt = padded(x, M, l.in, Mp, l.in, x_rows);
    Fp8Buffers dytq = fp8_buffers(Fp8Scaling::Groups, l.out, Mp), xtq = fp8_buffers(Fp8Scaling::Groups, l.in, Mp);
    quantize_groups_transposed(dytq.codes.data(), dytq.scales.data(), dyt, Mp, l.out, stream);
    quantize_groups_transposed(xtq.codes.data(), xtq.scales.data(), xt, Mp, l.in, stream);
    float* dw = g(l.w);
    if (reinterpret_cast<uintptr_t>(dw) % 16 == 0) {
      gemm_fp8(dytq.operand(Fp8Scaling::Groups), xtq.operand(Fp8Scaling::Groups), l.out, l.in, Mp, 1.0f, dw,
               OutType::F32, stream);
    } else {  // the flat array places this weight off a 16-byte boundary
      DeviceBuffer<float> dw_product = buffer(l.out * l.in);
      gemm_fp8(dytq.operand(Fp8Scaling::Groups), xtq.operand(Fp8Scaling::Groups), l.out, l.in, Mp, 0.0f,
               dw_product.data(), OutType::F32, stream);
      add(dw, dw, dw_product.data(), l.out * l.in, stream);
    }
  }

  // ---- SwiGLU MLP (dense layers, shared and routed experts) over rows of x; g, u, a hold rows * hidden ----
  void mlp_forward(float* y, float* gv, float* u, float* a, const float* x, const MlpParams& m, int64_t rows) {
    linear_forward(gv, x, m.gate, rows);
    linear_forward(u, x, m.up, rows);
    swiglu(a, gv, u, rows * m.hidden, stream);
    linear_forward(y, a, m.down, rows);
  }
  void mlp_backward(float* dx, const float* dy, const float* x, const float* gv, const float* u, const float* a,
                    const MlpParams& m, int64_t rows) {
    const int64_t n = rows * m.hidden;
    DeviceBuffer<float> da = zeros(n), dg = zeros(n), du = zeros(n);
    linear_backward(da.data(), dy, a, m.down, rows);
    swiglu_backward(dg.data(), du.data(), da.data(), gv, u, n, stream);
    linear_backward(dx, dg.data(), x, m.gate, rows);
    linear_backward(dx, du.data(), x, m.up, rows);
  }
  void mlp_forward(float* y, MlpActs& acts, const float* x, const MlpParams& m, int64_t rows) {
    acts.g = buffer(rows * m.hidden), acts.u = buffer(rows * m.hidden), acts.a = buffer(rows * m.hidden);
    mlp_forward(y, acts.g.data(), acts.u.data(), acts.a.data(), x, m, rows);
  }
  void mlp_backward(float* dx, const float* dy, const float* x, const MlpActs& acts, const MlpParams& m, int64_t rows) {
    mlp_backward(dx, dy, x, acts.g.data(), acts.u.data(), acts.a.data(), m, rows);
  }

  // ---- Multi-head Latent Attention, the naive training path (mla.cpp) ----
  void attention_forward(Layer& L, float* y, const float* x) {
    const int64_t H = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dq = c.qk_head_dim(),
                  dv = c.v_head_dim, r = c.kv_lora_rank, qr = c.q_lora_rank;
    L.q = buffer(N * H * dq);
    if (qr > 0) {
      L.cq = buffer(N * qr), L.cqn = buffer(N * qr), L.rstd_q = buffer(N);
      linear_forward(L.cq.data(), x, L.q_a, N);
      norm_forward(L.cqn.data(), L.rstd_q.data(), L.cq.data(), L.q_norm, N);
      linear_forward(L.q.data(), L.cqn.data(), L.q_b, N);
    } else {
      linear_forward(L.q.data(), x, L.q_proj, N);
    }
    cuda::rope(L.q.data() + dn, pos.data(), N, H, H * dq, dq, rope, false, stream);

    L.kva = buffer(N * (r + dr)), L.ckvn = buffer(N * r), L.rstd_kv = buffer(N);
    linear_forward(L.kva.data(), x, L.kv_a, N);
    norm_forward(L.ckvn.data(), L.rstd_kv.data(), L.kva.data(), L.kv_norm, N, r + dr);
    cuda::rope(L.kva.data() + r, pos.data(), N, 1, r + dr, dr, rope, false, stream);
    L.kv = buffer(N * H * (dn + dv));
    linear_forward(L.kv.data(), L.ckvn.data(), L.kv_b, N);

    // Per head: k = [k_nope | k_pe], k_pe the same for every head, and v.
    L.k = buffer(N * H * dq), L.v = buffer(N * H * dv);
    copy_columns(L.k.data(), dq, L.kv.data(), dn + dv, dn, N * H);
    for (int64_t h = 0; h < H; ++h) copy_columns(L.k.data() + h * dq + dn, H * dq, L.kva.data() + r, r + dr, dr, N);
    copy_columns(L.v.data(), dv, L.kv.data() + dn, dn + dv, dv, N * H);
    L.o = buffer(N * H * dv), L.lse = buffer(B * H * Tn);
    cuda::attention(L.o.data(), L.lse.data(), L.q.data(), L.k.data(), L.v.data(), pos.data(), B, Tn, H, dq, dv,
                    float(c.softmax_scale()), stream);
    linear_forward(y, L.o.data(), L.o_proj, N);
  }

  void attention_backward(Layer& L, float* dx, const float* dy, const float* x) {
    const int64_t H = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dq = c.qk_head_dim(),
                  dv = c.v_head_dim, r = c.kv_lora_rank, qr = c.q_lora_rank;
    DeviceBuffer<float> d_o = zeros(N * H * dv), d_q = zeros(N * H * dq), d_k = zeros(N * H * dq),
                        d_v = zeros(N * H * dv);
    linear_backward(d_o.data(), dy, L.o.data(), L.o_proj, N);
    cuda::attention_backward(d_q.data(), d_k.data(), d_v.data(), d_o.data(), L.q.data(), L.k.data(), L.v.data(),
                             L.o.data(), L.lse.data(), pos.data(), B, Tn, H, dq, dv, float(c.softmax_scale()), stream);

    // Back to kv_b's output [k_nope | v] per head, and to [c_KV | k_pe] with k_pe's gradient summed over the heads.
    DeviceBuffer<float> d_kv = buffer(N * H * (dn + dv)), d_kva = zeros(N * (r + dr)), d_ckvn = zeros(N * r);
    copy_columns(d_kv.data(), dn + dv, d_k.data(), dq, dn, N * H);
    copy_columns(d_kv.data() + dn, dn + dv, d_v.data(), dv, dv, N * H);
    sum_heads(d_kva.data() + r, r + dr, d_k.data(), N, H, dq, dn, dr, stream);
    cuda::rope(d_kva.data() + r, pos.data(), N, 1, r + dr, dr, rope, true, stream);
    linear_backward(d_ckvn.data(), d_kv.data(), L.ckvn.data(), L.kv_b, N);
    norm_backward(d_kva.data(), d_ckvn.data(), L.kva.data(), L.rstd_kv.data(), L.kv_norm, N, r + dr);
    linear_backward(dx, d_kva.data(), x, L.kv_a, N);

    cuda::rope(d_q.data() + dn, pos.data(), N, H, H * dq, dq, rope, true, stream);
    if (qr > 0) {
      DeviceBuffer<float> d_cqn = zeros(N * qr), d_cq = zeros(N * qr);
      linear_backward(d_cqn.data(), d_q.data(), L.cqn.data(), L.q_b, N);
      norm_backward(d_cq.data(), d_cqn.data(), L.cq.data(), L.rstd_q.data(), L.q_norm, N);
      linear_backward(dx, d_cq.data(), x, L.q_a, N);
    } else {
      linear_backward(dx, d_q.data(), x, L.q_proj, N);
    }
  }

  // ---- DeepSeekMoE (moe.cpp): router, routed experts over expert-major rows, shared experts ----
  // Returns the sequence-wise balance loss (alpha-weighted, averaged over sequences); 0 when alpha is 0.
  double moe_forward(Layer& L, float* y, const float* x, std::vector<int64_t>& load, double balance_alpha) {
    const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, d = c.hidden_size, hid = c.moe_intermediate_size;
    DeviceBuffer<float> logits = buffer(N * E);
    L.scores = buffer(N * E), L.weights = buffer(N * K);
    L.chosen = DeviceBuffer<int32_t>(size_t(N * K)), L.offsets = DeviceBuffer<int32_t>(size_t(E + 1));
    L.source = DeviceBuffer<int32_t>(size_t(N * K)), L.row_of = DeviceBuffer<int32_t>(size_t(N * K));
    linear_forward(logits.data(), x, L.router, N);
    route(L.chosen.data(), L.weights.data(), L.scores.data(), logits.data(), L.bias >= 0 ? w(L.bias) : nullptr, N, c,
          stream);
    moe_plan(L.offsets.data(), L.source.data(), L.row_of.data(), L.chosen.data(), N, K, E, stream);
    L.host_offsets = to_host(L.offsets, stream);  // the experts' GEMMs are sized on the host
    load.assign(size_t(E), 0);
    for (int64_t e = 0; e < E; ++e) load[size_t(e)] = L.host_offsets[size_t(e + 1)] - L.host_offsets[size_t(e)];

    L.xe = buffer(N * K * d), L.ye = buffer(N * K * d);
    L.expert_acts.g = buffer(N * K * hid), L.expert_acts.u = buffer(N * K * hid), L.expert_acts.a = buffer(N * K * hid);
    moe_gather(L.xe.data(), x, L.source.data(), N * K, d, stream);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t first = L.host_offsets[size_t(e)], rows = load[size_t(e)];
      if (rows == 0) continue;
      mlp_forward(L.ye.data() + first * d, L.expert_acts.g.data() + first * hid, L.expert_acts.u.data() + first * hid,
                  L.expert_acts.a.data() + first * hid, L.xe.data() + first * d, L.experts[size_t(e)], rows);
    }
    if (L.shared.hidden > 0)
      mlp_forward(y, L.shared_acts, x, L.shared, N);
    else
      DS_CUDA_CHECK(cudaMemsetAsync(y, 0, size_t(N * d) * sizeof(float), stream));
    moe_combine(y, L.ye.data(), L.row_of.data(), L.weights.data(), N, K, d, stream);

    L.balance_alpha = balance_alpha;
    if (balance_alpha == 0) return 0;
    // L = alpha * sum_i f_i P_i per sequence, f_i = E/(K T) * (tokens choosing i), P_i = mean_t s_i / sum_j s_j: on
    // the host, in the CPU's order, from the routing it already waited for.
    const std::vector<int32_t> chosen = to_host(L.chosen, stream);
    const std::vector<float> scores = to_host(L.scores, stream);
    std::vector<float> f(size_t(B * E), 0.0f);
    double loss = 0;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> P(size_t(E), 0.0);
      for (int64_t t = 0; t < Tn; ++t) {
        const int64_t n = b * Tn + t;
        for (int64_t k = 0; k < K; ++k)
          f[size_t(b * E + chosen[size_t(n * K + k)])] += float(double(E) / double(K * Tn));
        const float* s = &scores[size_t(n * E)];
        double total = 0;
        for (int64_t e = 0; e < E; ++e) total += s[e];
        for (int64_t e = 0; e < E; ++e) P[size_t(e)] += double(s[e]) / total / double(Tn);
      }
      for (int64_t e = 0; e < E; ++e) loss += balance_alpha * double(f[size_t(b * E + e)]) * P[size_t(e)] / double(B);
    }
    L.balance_f = to_device(f, stream);
    return loss;
  }

  void moe_backward(Layer& L, float* dx, const float* dy, const float* x) {
    const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, d = c.hidden_size, hid = c.moe_intermediate_size;
    if (L.shared.hidden > 0) mlp_backward(dx, dy, x, L.shared_acts, L.shared, N);
    DeviceBuffer<float> dye = buffer(N * K * d), dweights = buffer(N * K), dxe = zeros(N * K * d);
    moe_combine_backward(dye.data(), dweights.data(), dy, L.ye.data(), L.row_of.data(), L.weights.data(), N, K, d,
                         stream);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t first = L.host_offsets[size_t(e)], rows = L.host_offsets[size_t(e + 1)] - first;
      if (rows == 0) continue;
      mlp_backward(dxe.data() + first * d, dye.data() + first * d, L.xe.data() + first * d,
                   L.expert_acts.g.data() + first * hid, L.expert_acts.u.data() + first * hid,
                   L.expert_acts.a.data() + first * hid, L.experts[size_t(e)], rows);
    }
    moe_combine(dx, dxe.data(), L.row_of.data(), nullptr, N, K, d, stream);  // the gather's backward
    DeviceBuffer<float> dlogits = buffer(N * E);
    route_backward(dlogits.data(), dweights.data(), L.scores.data(), L.chosen.data(), N, c,
                   L.balance_alpha != 0 ? L.balance_f.data() : nullptr, float(L.balance_alpha / double(B * Tn)), Tn,
                   stream);
    linear_backward(dx, dlogits.data(), x, L.router, N);
  }

  // ---- Decoder block (block.cpp): h + Attn(norm(h)), then + FFN(norm(.)) ----
  void block_forward(Layer& L, float* h_out, const float* h_in, ForwardStats& stats) {
    const int64_t d = c.hidden_size;
    L.h_in = h_in;
    L.x1 = buffer(N * d), L.rstd1 = buffer(N), L.h_mid = buffer(N * d), L.x2 = buffer(N * d), L.rstd2 = buffer(N);
    DeviceBuffer<float> out = buffer(N * d);
    norm_forward(L.x1.data(), L.rstd1.data(), h_in, L.input_norm, N);
    attention_forward(L, out.data(), L.x1.data());
    add(L.h_mid.data(), h_in, out.data(), N * d, stream);
    norm_forward(L.x2.data(), L.rstd2.data(), L.h_mid.data(), L.post_norm, N);
    if (L.moe) {
      stats.balance_loss +=
          moe_forward(L, out.data(), L.x2.data(), stats.expert_load.emplace_back(), options.balance_alpha);
    } else {
      mlp_forward(out.data(), L.mlp_acts, L.x2.data(), L.mlp, N);
    }
    add(h_out, L.h_mid.data(), out.data(), N * d, stream);
  }

  // dh_in += the gradient through the block of dh_out.
  void block_backward(Layer& L, float* dh_in, const float* dh_out) {
    const int64_t d = c.hidden_size;
    DeviceBuffer<float> dx = zeros(N * d), dh_mid = copy(dh_out, N * d);
    if (L.moe)
      moe_backward(L, dx.data(), dh_out, L.x2.data());
    else
      mlp_backward(dx.data(), dh_out, L.x2.data(), L.mlp_acts, L.mlp, N);
    norm_backward(dh_mid.data(), dx.data(), L.h_mid.data(), L.rstd2.data(), L.post_norm, N);
    DS_CUDA_CHECK(cudaMemsetAsync(dx.data(), 0, dx.bytes(), stream));
    attention_backward(L, dx.data(), dh_mid.data(), L.x1.data());
    norm_backward(dh_in, dx.data(), L.h_in, L.rstd1.data(), L.input_norm, N);
    add(dh_in, dh_in, dh_mid.data(), N * d, stream);
  }

  // Softmax cross-entropy of logits [N, V] against targets at temperature 1; the logits become the gradient of
  // scale * the summed loss, which this returns.
  double cross_entropy_sum(float* logits, const int32_t* device_targets, double scale) {
    DeviceBuffer<float> losses = buffer(N);
    cross_entropy(losses.data(), nullptr, logits, logits, device_targets, N, c.vocab_size, 1.0f, float(scale), nullptr,
                  stream);
    double sum = 0;
    for (float l : to_host(losses, stream)) sum += double(l);
    return sum;
  }

  ForwardStats forward(const int32_t* in, const int32_t* tg, int64_t B_, int64_t Tn_, const LossOptions& opts,
                       const float* target_weights, const int32_t* positions) {
    const int64_t d = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
    if (!in) fail("the device model's forward needs inputs");
    if (tg && !(opts.temperature > 0)) fail("loss temperature {} is not positive", opts.temperature);
    if (Tn_ > c.max_position_embeddings)
      fail("sequence length {} exceeds max_position_embeddings {}", Tn_, c.max_position_embeddings);
    B = B_, Tn = Tn_, N = B * Tn, options = opts;
    if (!tg) options.mtp_weight = 0, options.balance_alpha = 0;  // as Model: without targets, the logits only
    with_loss = with_logits = false;                             // until this forward is complete
    count = 0;
    std::vector<int32_t> position(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) {
      if (in[n] < 0 || in[n] >= V) fail("token id {} is outside the vocabulary of {}", in[n], V);
      if (tg && tg[n] >= V) fail("target token id {} is outside the vocabulary of {}", tg[n], V);
      count += tg && tg[n] >= 0;
      const int32_t p = positions ? positions[n] : int32_t(n % Tn);
      if (p != 0 && (n % Tn == 0 || p != position[size_t(n - 1)] + 1))
        fail(
            "position {} at token {} of sequence {}: a sequence starts at 0 and each position is 0 (a new document) "
            "or the previous one + 1",
            p, n % Tn, n / Tn);
      position[size_t(n)] = p;
    }
    const std::vector<int32_t> input_tokens(in, in + N);
    inputs = to_device(input_tokens, stream);
    input_rows = rows_by_token(input_tokens, stream);
    pos = to_device(position, stream);

    ForwardStats stats;
    stats.tokens = count;
    hidden.clear();
    hidden.push_back(buffer(N * d));
    moe_gather(hidden[0].data(), w(embed), inputs.data(), N, d, stream);  // the embedding is a gather of its rows
    for (int64_t l = 0; l < L; ++l) {
      hidden.push_back(buffer(N * d));
      block_forward(layers[size_t(l)], hidden[size_t(l + 1)].data(), hidden[size_t(l)].data(), stats);
    }
    xf = buffer(N * d), rstd_f = buffer(N), dlogits = buffer(N * V);
    norm_forward(xf.data(), rstd_f.data(), hidden[size_t(L)].data(), final_norm, N);
    linear_forward(dlogits.data(), xf.data(), head, N);
    if (!tg) {
      mtp_depths = 0;
      with_logits = true;
      return stats;
    }
    targets = to_device(std::vector<int32_t>(tg, tg + N), stream);

    // The main loss: mean cross-entropy, or with weights sum_t w_t CE_t, at the temperature.
    {
      DeviceBuffer<float> losses = buffer(N), entropy = buffer(N), weights;
      const double scale = target_weights ? 1.0 : 1.0 / double(std::max<int64_t>(count, 1));
      if (target_weights) weights = to_device(std::vector<float>(target_weights, target_weights + N), stream);
      cross_entropy(losses.data(), entropy.data(), dlogits.data(), dlogits.data(), targets.data(), N, V,
                    float(1.0 / options.temperature), float(scale), target_weights ? weights.data() : nullptr, stream);
      const std::vector<float> host_losses = to_host(losses, stream), host_entropies = to_host(entropy, stream);
      logprobs.assign(size_t(N), 0.0), entropies.assign(host_entropies.begin(), host_entropies.end());
      for (int64_t n = 0; n < N; ++n) {
        if (tg[n] < 0) continue;
        logprobs[size_t(n)] = -double(host_losses[size_t(n)]);
        stats.main_loss += double(host_losses[size_t(n)]) * (target_weights ? double(target_weights[n]) : scale);
      }
    }

    // MTP depth k at position i sees token t_{i+k} and predicts t_{i+k+1}: the inputs and targets shifted by k. A
    // target in a later document carries no loss.
    mtp_depths = options.mtp_weight != 0 ? mtp.size() : 0;
    const float* prev = hidden[size_t(L)].data();
    for (size_t k = 0; k < mtp_depths; ++k) {
      Mtp& m = mtp[k];
      const MtpBatch shifted = mtp_batch(in, tg, position, B, Tn, int64_t(k) + 1);
      m.count = 0;
      for (int32_t t : shifted.targets) m.count += t >= 0;
      m.tokens = to_device(shifted.tokens, stream), m.targets = to_device(shifted.targets, stream);
      m.token_rows = rows_by_token(shifted.tokens, stream);
      m.prev = prev;
      m.emb = buffer(N * d), m.rstd_e = buffer(N), m.rstd_h = buffer(N), m.cat = buffer(N * 2 * d);
      m.h_in = buffer(N * d), m.h_out = buffer(N * d), m.xf = buffer(N * d), m.rstd_f = buffer(N);
      m.dlogits = buffer(N * V);
      moe_gather(m.emb.data(), w(embed), m.tokens.data(), N, d, stream);
      DeviceBuffer<float> en = buffer(N * d), hn = buffer(N * d);
      norm_forward(en.data(), m.rstd_e.data(), m.emb.data(), m.enorm, N);
      norm_forward(hn.data(), m.rstd_h.data(), prev, m.hnorm, N);
      copy_columns(m.cat.data(), 2 * d, en.data(), d, d, N);
      copy_columns(m.cat.data() + d, 2 * d, hn.data(), d, d, N);
      linear_forward(m.h_in.data(), m.cat.data(), m.eh_proj, N);
      block_forward(m.block, m.h_out.data(), m.h_in.data(), stats);
      norm_forward(m.xf.data(), m.rstd_f.data(), m.h_out.data(), m.head_norm, N);
      linear_forward(m.dlogits.data(), m.xf.data(), head, N);
      const double mtp_denominator = double(std::max<int64_t>(m.count, 1));
      const double scale = options.mtp_weight / double(mtp_depths) / mtp_denominator;
      stats.mtp_loss += cross_entropy_sum(m.dlogits.data(), m.targets.data(), scale) / mtp_denominator;
      prev = m.h_out.data();
    }
    if (mtp_depths > 0) stats.mtp_loss /= double(mtp_depths);
    stats.loss = stats.main_loss + options.mtp_weight * stats.mtp_loss + stats.balance_loss;
    with_loss = true;
    return stats;
  }

  void backward() {
    if (!with_loss) fail("backward() needs a complete forward with targets");
    const int64_t d = c.hidden_size;
    // MTP modules, last first: each passes a gradient to the hidden state it read.
    DeviceBuffer<float> dprev = zeros(N * d);
    for (size_t k = mtp_depths; k-- > 0;) {
      Mtp& m = mtp[k];
      DeviceBuffer<float> dx = zeros(N * d), dh_in = zeros(N * d), dcat = zeros(N * 2 * d);
      linear_backward(dx.data(), m.dlogits.data(), m.xf.data(), head, N);
      DeviceBuffer<float> dh_out = std::move(dprev);
      norm_backward(dh_out.data(), dx.data(), m.h_out.data(), m.rstd_f.data(), m.head_norm, N);
      block_backward(m.block, dh_in.data(), dh_out.data());
      linear_backward(dcat.data(), dh_in.data(), m.cat.data(), m.eh_proj, N);
      DeviceBuffer<float> den = buffer(N * d), dhn = buffer(N * d), demb = zeros(N * d);
      copy_columns(den.data(), d, dcat.data(), 2 * d, d, N);
      copy_columns(dhn.data(), d, dcat.data() + d, 2 * d, d, N);
      norm_backward(demb.data(), den.data(), m.emb.data(), m.rstd_e.data(), m.enorm, N);
      embedding_backward(demb.data(), m.token_rows);
      dprev = zeros(N * d);
      norm_backward(dprev.data(), dhn.data(), m.prev, m.rstd_h.data(), m.hnorm, N);
    }
    backward_main(std::move(dprev));
  }

  // After a forward without targets: the gradient of a loss of the logits, dlogits [N, V] on the host.
  void backward(const float* host_dlogits) {
    if (!with_logits) fail("backward(dlogits) needs a complete forward without targets");
    copy_to_device(dlogits.data(), host_dlogits, size_t(N * c.vocab_size), stream);
    backward_main(zeros(N * c.hidden_size));
    stream.synchronize();  // the caller's dlogits may change once this returns
  }

  // From the main head's logits gradient (in dlogits) and the gradient dh that the MTP modules sent to the last
  // hidden state, down to the embedding.
  void backward_main(DeviceBuffer<float> dh) {
    const int64_t d = c.hidden_size, L = c.num_hidden_layers;
    DeviceBuffer<float> dx = zeros(N * d);
    linear_backward(dx.data(), dlogits.data(), xf.data(), head, N);
    norm_backward(dh.data(), dx.data(), hidden[size_t(L)].data(), rstd_f.data(), final_norm, N);
    for (int64_t l = L; l-- > 0;) {
      DeviceBuffer<float> dh_in = zeros(N * d);
      block_backward(layers[size_t(l)], dh_in.data(), dh.data());
      dh = std::move(dh_in);
    }
    embedding_backward(dh.data(), input_rows);
  }

  // The embedding's gradient rows += dout's rows, grouped by token.
  void embedding_backward(const float* dout, const TokenRows& t) {
    cuda::embedding_backward(g(embed), dout, t.unique_tokens.data(), t.offsets.data(), t.rows.data(), t.unique,
                             c.hidden_size, stream);
  }

  void update_router_bias(const std::vector<std::vector<int64_t>>& expert_load, double gamma) {
    std::vector<Layer*> moes;
    for (Layer& L : layers)
      if (L.moe) moes.push_back(&L);
    if (expert_load.size() > moes.size())  // the forward ran the MTP modules too
      for (Mtp& m : mtp)
        if (m.block.moe) moes.push_back(&m.block);
    if (expert_load.size() != moes.size())
      fail("expert load has {} layers, the model {}", expert_load.size(), moes.size());
    for (size_t i = 0; i < moes.size(); ++i) {
      if (moes[i]->bias < 0) continue;
      const std::vector<int64_t>& load = expert_load[i];
      double mean = 0;
      for (int64_t x : load) mean += double(x) / double(load.size());
      // A few values per layer: the CPU's rule on a host copy. The GEMMs never read the bias, so its BF16 copy may
      // stay stale.
      std::vector<float> bias = to_host(w(moes[i]->bias), load.size(), stream);
      for (size_t e = 0; e < load.size(); ++e) {
        if (double(load[e]) > mean)
          bias[e] -= float(gamma);
        else if (double(load[e]) < mean)
          bias[e] += float(gamma);
      }
      copy_to_device(w(moes[i]->bias), bias.data(), bias.size(), stream);
      stream.synchronize();  // `bias` goes out of scope
    }
  }
};

TrainModel::TrainModel(const Model<float>& model) : impl_(std::make_unique<Impl>(model)) {}
TrainModel::~TrainModel() = default;

const ModelConfig& TrainModel::config() const { return impl_->c; }
const std::vector<ParamInfo>& TrainModel::param_infos() const { return impl_->infos; }
int64_t TrainModel::size() const { return impl_->size; }

ForwardStats TrainModel::forward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                                 const LossOptions& options, const float* target_weights, const int32_t* positions) {
  return impl_->forward(inputs, targets, B, Tn, options, target_weights, positions);
}
std::vector<double> TrainModel::target_logprobs() const {
  if (!impl_->with_loss) fail("target_logprobs() needs a forward with targets");
  return impl_->logprobs;
}
std::vector<double> TrainModel::entropies() const {
  if (!impl_->with_loss) fail("entropies() needs a forward with targets");
  return impl_->entropies;
}
std::vector<float> TrainModel::logits() const {
  if (!impl_->with_logits) fail("logits() needs a forward without targets");
  return to_host(impl_->dlogits, impl_->stream);
}
void TrainModel::backward() { impl_->backward(); }
void TrainModel::backward(const float* dlogits) { impl_->backward(dlogits); }
void TrainModel::zero_grads() {
  DS_CUDA_CHECK(cudaMemsetAsync(impl_->grads.data(), 0, impl_->grads.bytes(), impl_->stream));
}
void TrainModel::set_fp8(bool on) { impl_->fp8 = on; }
void TrainModel::update_router_bias(const std::vector<std::vector<int64_t>>& expert_load, double gamma) {
  impl_->update_router_bias(expert_load, gamma);
}

std::vector<float> TrainModel::params() const { return to_host(impl_->params, impl_->stream); }
std::vector<float> TrainModel::grads() const { return to_host(impl_->grads, impl_->stream); }

namespace {
void upload_all(DeviceBuffer<float>& dst, std::span<const float> values, cudaStream_t stream) {
  if (values.size() != dst.size()) fail("{} values for a flat array of {}", values.size(), dst.size());
  copy_to_device(dst.data(), values.data(), values.size(), stream);
  DS_CUDA_CHECK(cudaStreamSynchronize(stream));  // the caller's values may change once this returns
}
}  // namespace

void TrainModel::set_params(std::span<const float> values) {
  upload_all(impl_->params, values, impl_->stream);
  impl_->refresh_bf16();
}
void TrainModel::set_grads(std::span<const float> values) { upload_all(impl_->grads, values, impl_->stream); }

float* TrainModel::device_params() { return impl_->params.data(); }
float* TrainModel::device_grads() { return impl_->grads.data(); }
cudaStream_t TrainModel::stream() const { return impl_->stream.get(); }
void TrainModel::params_changed() { impl_->refresh_bf16(); }
void TrainModel::synchronize() const { impl_->stream.synchronize(); }

// ---- DeviceAdamW ----

struct DeviceAdamW::Impl {
  TrainModel& model;
  AdamWOptions options;
  int64_t begin, end;
  struct Range {
    int64_t begin, end;
    bool decay;
  };
  std::vector<Range> ranges;  // the trained parameters in [begin, end), adjacent ones of the same kind merged
  DeviceBuffer<float> m, v;   // of [begin, end)
  DeviceBuffer<double> sum;

  Impl(TrainModel& model_, AdamWOptions options_, int64_t begin_, int64_t end_)
      : model(model_),
        options(options_),
        begin(begin_),
        end(checked_end(model_.size(), begin_, end_)),
        m(size_t(end - begin)),
        v(size_t(end - begin)),
        sum(1) {
    for (const ParamInfo& p : model.param_infos()) {
      if (p.kind == ParamKind::RouterBias) continue;
      const Range r{std::max(begin, p.offset), std::min(end, p.offset + shape_numel(p.shape)),
                    p.kind == ParamKind::Matrix};
      if (r.begin >= r.end) continue;
      if (!ranges.empty() && ranges.back().end == r.begin && ranges.back().decay == r.decay)
        ranges.back().end = r.end;
      else
        ranges.push_back(r);
    }
    zero();
  }
  // end, or the whole array's when negative, checked before anything is allocated for [begin, end).
  static int64_t checked_end(int64_t size, int64_t begin, int64_t end) {
    if (end < 0) end = size;
    if (begin < 0 || begin > end || end > size)
      fail("AdamW range [{}, {}) is outside the {} parameters", begin, end, size);
    return end;
  }
  void zero() {
    DS_CUDA_CHECK(cudaMemsetAsync(m.data(), 0, m.bytes(), model.stream()));
    DS_CUDA_CHECK(cudaMemsetAsync(v.data(), 0, v.bytes(), model.stream()));
  }
};

DeviceAdamW::DeviceAdamW(TrainModel& model, AdamWOptions options, int64_t begin, int64_t end)
    : impl_(std::make_unique<Impl>(model, options, begin, end)) {}
DeviceAdamW::~DeviceAdamW() = default;

double DeviceAdamW::reduce_grads(double max_norm, dist::Comm* comm) {
  TrainModel& model = impl_->model;
  const int64_t n = impl_->end - impl_->begin;
  float* grads = model.device_grads() + impl_->begin;
  sum_squares(impl_->sum.data(), grads, n, model.stream());
  std::vector<double> sum = {to_host(impl_->sum, model.stream())[0]};
  if (comm) comm->all_reduce_host(sum);
  const double norm = std::sqrt(sum[0]);
  if (max_norm > 0 && norm > max_norm)  // clip_grad_norm's rule and scale
    scale(grads, float(max_norm / (norm + 1e-6)), n, model.stream());
  return norm;
}

void DeviceAdamW::step(double lr) {
  ++t_;
  const AdamWOptions& o = impl_->options;
  AdamWStep s;
  s.lr = float(lr), s.beta1 = float(o.beta1), s.beta2 = float(o.beta2), s.eps = float(o.eps);
  s.bc1 = float(1.0 - std::pow(o.beta1, double(t_))), s.bc2 = float(1.0 - std::pow(o.beta2, double(t_)));
  TrainModel& model = impl_->model;
  for (const Impl::Range& r : impl_->ranges) {
    s.decay = r.decay ? float(lr * o.weight_decay) : 0.0f;
    const int64_t at = r.begin - impl_->begin;  // in the moments
    adamw(model.device_params() + r.begin, model.device_grads() + r.begin, impl_->m.data() + at, impl_->v.data() + at,
          r.end - r.begin, s, model.stream());
  }
  if (impl_->begin == 0 && impl_->end == model.size()) model.params_changed();
}

std::vector<float> DeviceAdamW::m() const { return to_host(impl_->m, impl_->model.stream()); }
std::vector<float> DeviceAdamW::v() const { return to_host(impl_->v, impl_->model.stream()); }

void DeviceAdamW::load_state(std::span<const float> m, std::span<const float> v) {
  upload_all(impl_->m, m, impl_->model.stream());
  upload_all(impl_->v, v, impl_->model.stream());
}

void DeviceAdamW::reset() {
  impl_->zero();
  t_ = 0;
}

}  // namespace ds::cuda
