#pragma once
// The model's ops as CUDA kernels, each the GPU twin of a CPU op in ds/ops.h (or of the code named), with the same
// conventions: row-major, backward passes ADD into their gradient outputs. Everything is queued on `stream`;
// pointers are device memory. tests/gpu compares each with its CPU twin.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda_memory.h"
#include "ds/config.h"
#include "ds/ops.h"

namespace ds::cuda {

// ---- FP8 e4m3 quantisation (docs/architecture.md#fp8; layouts in fp8_layout.h) ----
// Codes and scales are bit-identical to the CPU's (ops::fp8_round_trip, quant::quantize_*): amax over the tile,
// scale = amax / 448 (activations floored at amax 1e-4, weights' all-zero blocks scale 1), code = e4m3(x / scale).
// T is float or __nv_bfloat16.

// x [rows, cols] as an operand [rows, K = cols] with 1x128 groups along each row (a GEMM input with K along rows).
template <typename T>
void quantize_groups(uint8_t* codes, float* scales, const T* x, int64_t rows, int64_t cols, cudaStream_t stream);
// x [rows, cols] as the operand x^T [cols, K = rows], groups of 128 rows of one column (128x1 tiles of x): the
// weight-gradient GEMM's inputs, whose K runs over tokens.
template <typename T>
void quantize_groups_transposed(uint8_t* codes, float* scales, const T* x, int64_t rows, int64_t cols,
                                cudaStream_t stream);
// A weight w [rows, cols] as an operand [rows, K = cols] with 128x128 blocks (the forward GEMM).
template <typename T>
void quantize_blocks(uint8_t* codes, float* scales, const T* w, int64_t rows, int64_t cols, cudaStream_t stream);
// w [rows, cols] as the operand w^T [cols, K = rows] with 128x128 blocks (the data-gradient GEMM).
template <typename T>
void quantize_blocks_transposed(uint8_t* codes, float* scales, const T* w, int64_t rows, int64_t cols,
                                cudaStream_t stream);

// ---- Conversions between the f32 master copies and bf16 compute copies (round to nearest even, as ds/bf16.h) ----
void cast_f32_to_bf16(__nv_bfloat16* dst, const float* src, int64_t n, cudaStream_t stream);
void cast_bf16_to_f32(float* dst, const __nv_bfloat16* src, int64_t n, cudaStream_t stream);

// ---- Norms and elementwise ops (float) ----
// ops::rmsnorm / rmsnorm_backward (x_stride 0 = C).
void rmsnorm(float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t C, float eps, int64_t x_stride,
             cudaStream_t stream);
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t N, int64_t C, int64_t x_stride, cudaStream_t stream);

// ops::RopeTable on the device, as float: cos and sin [max_pos, half].
struct RopeTable {
  int64_t half = 0, max_pos = 0;
  DeviceBuffer<float> cos, sin;
};
RopeTable upload_rope_table(const ops::RopeTable& table, cudaStream_t stream);
// ops::rope: rotates interleaved pairs of `heads` vectors per row in place; positions pos [N] must be < max_pos.
void rope(float* x, const int32_t* pos, int64_t N, int64_t heads, int64_t row_stride, int64_t head_stride,
          const RopeTable& table, bool inverse, cudaStream_t stream);

// ops::swiglu / swiglu_backward over n values.
void swiglu(float* a, const float* g, const float* u, int64_t n, cudaStream_t stream);
void swiglu_backward(float* dg, float* du, const float* da, const float* g, const float* u, int64_t n,
                     cudaStream_t stream);

// Softmax cross-entropy over rows of V logits at a temperature, x = logits * inverse_temperature, in two passes over
// each row, without a probabilities copy: losses[n] = logsumexp(x) - x[target] (0 for target < 0); when entropies is
// not null, entropies[n] = -sum softmax(x) log softmax(x); when dlogits is not null, the gradient of
// scale * row_scale[n] * losses[n] with respect to the logits, (softmax(x) - onehot(target)) * scale * row_scale[n] *
// inverse_temperature (row_scale may be null; rows without a target get 0), which may overwrite the logits in place.
// Model<float>'s loss (temperature, weights), target_logprobs() and entropies(), and its backward.
void cross_entropy(float* losses, float* entropies, float* dlogits, const float* logits, const int32_t* targets,
                   int64_t N, int64_t V, float inverse_temperature, float scale, const float* row_scale,
                   cudaStream_t stream);

// One AdamW update of n parameters (ds::AdamW::step for one range): m, v updated in place; bias corrections
// bc1 = 1 - beta1^t, bc2 = 1 - beta2^t; decay = lr * weight_decay for decayed ranges, else 0.
struct AdamWStep {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, decay = 0, bc1 = 1, bc2 = 1;
};
void adamw(float* params, const float* grads, float* m, float* v, int64_t n, const AdamWStep& step,
           cudaStream_t stream);

// ---- DeepSeekMoE routing (route_token of libcore/src/model/routing.h) ----
// From router logits [N, E]: scores [N, E] (sigmoid or softmax, as config.scoring_func), then each token's
// config.num_experts_per_tok experts (chosen [N, K], best first, ties to the lower index) and weights [N, K].
// bias [E] (the correction bias, or null) only steers the choice. E must be at most kMaxRoutedExperts.
inline constexpr int64_t kMaxRoutedExperts = 256;
void route(int32_t* chosen, float* weights, float* scores, const float* logits, const float* bias, int64_t N,
           const ModelConfig& config, cudaStream_t stream);

// ---- MoE token permutation on one device (dispatch to expert-major rows, and combine back) ----
// From chosen [N, K] (route): offsets [E + 1], expert e's rows being offsets[e] .. offsets[e + 1] - 1; source
// [N*K], the token of each row; row_of [N*K], the row of each (token, k) assignment. An expert's rows keep token
// order (as the CPU's per-expert row lists), so everything downstream is deterministic. E is at most 1024.
void moe_plan(int32_t* offsets, int32_t* source, int32_t* row_of, const int32_t* chosen, int64_t N, int64_t K,
              int64_t E, cudaStream_t stream);
// xe [rows, d] = x [source[i], d]: the experts' inputs, contiguous per expert for grouped GEMMs.
void moe_gather(float* xe, const float* x, const int32_t* source, int64_t rows, int64_t d, cudaStream_t stream);
// y [N, d] += sum_k weights[n, k] ye[row_of[n K + k]] (weights null: 1, which is the gather's backward).
void moe_combine(float* y, const float* ye, const int32_t* row_of, const float* weights, int64_t N, int64_t K,
                 int64_t d, cudaStream_t stream);

// ---- Causal attention for training and prefill (the MLA heads expanded, as ops::attention) ----
// Flash-style: each query keeps an online softmax over its keys, so no [T, T] probabilities are stored; the backward
// recomputes them from lse. On the tensor cores in bf16 with float sums (q, k, v, dout, the probabilities and dS are
// rounded to bf16), deterministic. q, k [B*T, H, dk], v [B*T, H, dv], o [B*T, H, dv]; lse [B, H, T] is each query's
// log-sum-exp of its scaled scores. dk and dv are at most kMaxAttentionHeadDim. With pos ([B*T] on the device, or
// null), a sequence holds packed documents as in ops::attention: each starts where its position is 0, and a query
// attends only to keys of its own document.
inline constexpr int64_t kMaxAttentionHeadDim = 256;
void attention(float* o, float* lse, const float* q, const float* k, const float* v, const int32_t* pos, int64_t B,
               int64_t T, int64_t H, int64_t dk, int64_t dv, float scale, cudaStream_t stream);
// ops::attention_backward from o and lse instead of the probabilities: dq, dk, dv are ADDED to.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const int32_t* pos, int64_t B, int64_t T,
                        int64_t H, int64_t dk_dim, int64_t dv_dim, float scale, cudaStream_t stream);

// ---- Training (train.cu): the backward passes and reductions a training step adds ----
// y = a + b over n values (y may be a or b): residual connections, and gradients that meet.
void add(float* y, const float* a, const float* b, int64_t n, cudaStream_t stream);
// x *= s over n values (gradient clipping).
void scale(float* x, float s, int64_t n, cudaStream_t stream);
// The embedding's backward: dtable[tokens[n]] += dout[n] for N rows of d values, given the rows grouped by token:
// the distinct tokens unique_tokens [unique], and token u's rows rows[offsets[u]] .. rows[offsets[u + 1] - 1] in
// increasing order. Each table value adds its rows in one thread in that order: no atomics, so the same bits every
// run, which a bit-exact resume needs.
void embedding_backward(float* dtable, const float* dout, const int32_t* unique_tokens, const int32_t* offsets,
                        const int32_t* rows, int64_t unique, int64_t d, cudaStream_t stream);
// dst[n, c] += sum_h src[n, h, offset + c] for c < width: the gradient of MLA's RoPE key, which every head shares.
// src rows hold H heads head_stride apart (row stride H * head_stride); dst rows are dst_stride apart.
void sum_heads(float* dst, int64_t dst_stride, const float* src, int64_t N, int64_t H, int64_t head_stride,
               int64_t offset, int64_t width, cudaStream_t stream);
// moe_combine's backward for y += sum_k weights[n, k] ye[row_of[n K + k]]: dye[row_of[n K + k]] = weights[n, k] dy[n]
// (every row of dye is written, each exactly once) and dweights[n, k] = dy[n] . ye[row_of[n K + k]].
void moe_combine_backward(float* dye, float* dweights, const float* dy, const float* ye, const int32_t* row_of,
                          const float* weights, int64_t N, int64_t K, int64_t d, cudaStream_t stream);
// route's backward: from d(weights) [N, K] through the renormalisation and routed_scaling_factor to d(scores) of the
// chosen experts, then through the score function to dlogits [N, E] (overwritten), as Moe::backward on the CPU.
// The correction bias only chose the experts, so it has no gradient. With balance_f ([B, E], the f_i of each
// sequence of T tokens; null: none) it adds the sequence-wise balance loss's gradient, balance_scale being
// alpha / (B T).
void route_backward(float* dlogits, const float* dweights, const float* scores, const int32_t* chosen, int64_t N,
                    const ModelConfig& config, const float* balance_f, float balance_scale, int64_t T,
                    cudaStream_t stream);
// *out (device memory) = sum of x[i]^2 in double, in a fixed order (the same value every run).
void sum_squares(double* out, const float* x, int64_t n, cudaStream_t stream);

// ---- MLA absorbed decode over the latent cache (docs/architecture.md#absorbed-decode) ----
// One KV head shared by all H query heads. The cache [slots, capacity, r + dr] bf16 holds [c_KV | k_pe] per token of
// each slot (a sequence). Query row b, q [B, H, r + dr] f32 holding [q~ = W_UK^T q_nope | q_pe], attends to the first
// lengths[b] (1..capacity) tokens of slot slots[b] (slots null: slot b): out [B, H, r] = softmax_j(scale q.k_j)
// c_KV_j, the latent of each head before W_UV. Decode is one row per sequence; prefill a row per new token, each
// with its own length, which makes the attention causal. r is at most kMlaMaxLatent, r + dr at most kMlaMaxWidth
// (V3: 512 + 64). The products run on the tensor cores in bf16 with float sums, as FlashMLA's: q and the softmax
// probabilities are rounded to bf16 on the way.
inline constexpr int64_t kMlaMaxLatent = 512, kMlaMaxWidth = 576;
void mla_decode(float* out, const float* q, const __nv_bfloat16* cache, const int32_t* slots, const int32_t* lengths,
                int64_t B, int64_t H, int64_t capacity, int64_t r, int64_t dr, float scale, cudaStream_t stream);
// Row i of the cache's slot slots[i] at position pos[i] becomes bf16([latent [R, r] row i | k_pe row i]), the k_pe
// rows dr values each, k_pe_stride apart.
void mla_cache_write(__nv_bfloat16* cache, int64_t capacity, const float* latent, const float* k_pe,
                     int64_t k_pe_stride, const int32_t* slots, const int32_t* pos, int64_t R, int64_t r, int64_t dr,
                     cudaStream_t stream);

}  // namespace ds::cuda
