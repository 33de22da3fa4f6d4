#pragma once
// CPU ops of the model, templated on the scalar type: float for training and inference, double for gradient checks.
// Conventions (as in llm.c): row-major; a linear weight is [out, in]; every backward ADDS into its gradient outputs,
// so callers zero them once and residual branches accumulate for free. Ops parallelise with OpenMP over rows with a
// static schedule, so results are identical run to run for a given thread count.
#include <cstdint>
#include <vector>

#include "ds/threads.h"

namespace ds {

struct WeightMatrix;  // ds/fp8_matrix.h

namespace ops {

// C[M,N] = alpha * op(A) op(B) + beta * C, op(X) = X or X^T; leading dimensions as in BLAS (row-major).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc);

// y[M,N] = x[M,K] w[N,K]^T (y += ... when accumulate).
template <typename T>
void linear(T* y, const T* x, const T* w, int64_t M, int64_t N, int64_t K, bool accumulate = false);
// y[M, w.rows] = x[M, w.cols] w^T for inference. An FP8 w is dequantized inside the product: one token streams its
// codes (a byte per weight, a quarter of F32's traffic); more tokens multiply panels of its rows dequantized into a
// per-thread buffer, each with a single-threaded sgemm, so no dequantized copy of w is ever whole.
void linear(float* y, const float* x, const WeightMatrix& w, int64_t M);
// dx[M,K] += dy w and dw[N,K] += dy^T x; either output may be null to skip it.
template <typename T>
void linear_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, int64_t M, int64_t N, int64_t K);

// y = w * x / sqrt(mean(x^2) + eps) over rows of C; saves 1/rms per row in rstd.
template <typename T>
void rmsnorm(T* y, T* rstd, const T* x, const T* w, int64_t N, int64_t C, double eps, int64_t x_stride = 0);
template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, int64_t N, int64_t C,
                      int64_t x_stride = 0);

// Rotary embedding tables for dim rope dims: cos/sin [max_pos, dim/2], YaRN frequencies and attention factor
// included (docs/architecture.md#yarn-rope).
struct RopeTable {
  int64_t half = 0;
  std::vector<double> cos, sin;
};
RopeTable rope_table(int64_t dim, int64_t max_pos, double theta, bool yarn, double factor, int64_t original_max_pos,
                     double beta_fast, double beta_slow, double attention_factor);
// Rotates interleaved pairs (x[2i], x[2i+1]) of `heads` vectors per row in place: row n sits at x + n*row_stride,
// head h at + h*head_stride; the position of row n is pos[n]. inverse rotates back (the backward pass).
template <typename T>
void rope(T* x, const int32_t* pos, int64_t N, int64_t heads, int64_t row_stride, int64_t head_stride,
          const RopeTable& table, bool inverse);

// Causal multi-head attention over B sequences of T tokens. q, k: [B*T, H, dk] (row stride H*dk), v: [B*T, H, dv];
// out o: [B*T, H, dv]; p: the probabilities [B, H, T, T] kept for backward (0 where masked, which is all the backward
// needs to respect the mask). With pos ([B*T], optional), a sequence holds packed documents: each starts where its
// position is 0, and a query attends only to keys of its own document.
template <typename T>
void attention(T* o, T* p, const T* q, const T* k, const T* v, int64_t B, int64_t Tn, int64_t H, int64_t dk, int64_t dv,
               double scale, const int32_t* pos = nullptr);
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* p, int64_t B,
                        int64_t Tn, int64_t H, int64_t dkd, int64_t dvd, double scale);

// SwiGLU: a = silu(g) * u, elementwise over n values.
template <typename T>
void swiglu(T* a, const T* g, const T* u, int64_t n);
template <typename T>
void swiglu_backward(T* dg, T* du, const T* da, const T* g, const T* u, int64_t n);

// Softmax cross-entropy over rows of V logits. Rows with target < 0 carry no loss. Returns the summed loss and
// overwrites logits with probabilities (kept for the backward). Exact for V up to the whole vocabulary.
template <typename T>
double cross_entropy(T* logits_to_probs, const int32_t* targets, int64_t N, int64_t V);
// dlogits = (probs - onehot(target)) * scale for rows with a target, 0 otherwise; row_scale (optional) multiplies
// each row's scale, for weighted losses such as GRPO's.
template <typename T>
void cross_entropy_backward(T* dlogits, const T* probs, const int32_t* targets, int64_t N, int64_t V, double scale,
                            const T* row_scale = nullptr);

template <typename T>
void softmax_rows(T* x, int64_t N, int64_t C);  // in place

// FP8 emulation (the DeepSeek-V3 training recipe on a CPU): each value of in [rows, cols] is scaled, rounded to
// e4m3 and scaled back, with one scale (amax / 448) per tile: 1x128 along a row (activations and activation
// gradients in a GEMM whose K runs along the row), 128x1 down a column (the same tensors in the weight-gradient GEMM,
// whose K runs over tokens), or 128x128 (weights). Activation scales have DeepSeek's 1e-4 amax floor.
enum class Fp8Tiles { Rows, Columns, Blocks };
void fp8_round_trip(float* out, const float* in, int64_t rows, int64_t cols, Fp8Tiles tiles);

}  // namespace ops
}  // namespace ds
