#include "ds/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <type_traits>

#include "ds/fp8_matrix.h"
#include "ds/parallel.h"

namespace ds {

namespace ops {

template <>
void gemm<float>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, blasint(M), blasint(N),
              blasint(K), alpha, A, blasint(lda), B, blasint(ldb), beta, C, blasint(ldc));
}

template <>
void gemm<double>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                  const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, blasint(M), blasint(N),
              blasint(K), alpha, A, blasint(lda), B, blasint(ldb), beta, C, blasint(ldc));
}

template <typename T>
void linear(T* y, const T* x, const T* w, int64_t M, int64_t N, int64_t K, bool accumulate) {
  // One token (batch-1 decode) is a matrix-vector product, which streams W at memory speed where sgemm packs it.
  if constexpr (std::is_same_v<T, float>)
    if (M == 1 && N > 0 && K > 0)
      return cblas_sgemv(CblasRowMajor, CblasNoTrans, blasint(N), blasint(K), 1.0f, w, blasint(K), x, 1,
                         accumulate ? 1.0f : 0.0f, y, 1);
  gemm<T>(false, true, M, N, K, T(1), x, K, w, K, accumulate ? T(1) : T(0), y, N);
}

void linear(float* y, const float* x, const WeightMatrix& w, int64_t M) {
  const int64_t N = w.rows, K = w.cols;
  if (!w.fp8()) return linear<float>(y, x, w.f32, M, N, K);
  if (M == 0) return;
  if (M == 1) {
#pragma omp parallel for schedule(static) if (parallel_worth(N * K))
    for (int64_t n = 0; n < N; ++n) y[n] = w.dot_fp8(n, x);
    return;
  }
  // Panels of 128 rows, one block row of scales: few enough sgemm calls that repacking x for each stays cheap (it
  // was slower at 64), small enough to stay in the caches between being written and being read.
  const int64_t panel = 128, panels = (N + panel - 1) / panel;
#pragma omp parallel
  {
    std::vector<float> buffer;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t n0 = p * panel, n = std::min(panel, N - n0);
      gemm<float>(false, true, M, n, K, 1.0f, x, K, w.rows_f32(n0, n, buffer), K, 0.0f, y + n0, N);
    }
  }
}

template <typename T>
void linear_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, int64_t M, int64_t N, int64_t K) {
  if (dx) gemm<T>(false, false, M, K, N, T(1), dy, N, w, K, T(1), dx, K);
  if (dw) gemm<T>(true, false, N, K, M, T(1), dy, N, x, K, T(1), dw, K);
}

template <typename T>
void rmsnorm(T* y, T* rstd, const T* x, const T* w, int64_t N, int64_t C, double eps, int64_t x_stride) {
  if (x_stride == 0) x_stride = C;
#pragma omp parallel for schedule(static) if (parallel_worth(N * C))
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * x_stride;
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += double(xr[c]) * double(xr[c]);
    const T r = T(1.0 / std::sqrt(ss / double(C) + eps));
    rstd[n] = r;
    for (int64_t c = 0; c < C; ++c) y[n * C + c] = w[c] * (xr[c] * r);
  }
}

template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, int64_t N, int64_t C,
                      int64_t x_stride) {
  if (x_stride == 0) x_stride = C;
    // dx = r * (w*dy - xhat * mean(w*dy*xhat)), with xhat = x * r
#pragma omp parallel for schedule(static) if (parallel_worth(N * C))
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * x_stride;
    const T* g = dy + n * C;
    const T r = rstd[n];
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += double(w[c] * g[c]) * double(xr[c] * r);
    const T mean = T(dot / double(C));
    T* dxr = dx + n * x_stride;
    for (int64_t c = 0; c < C; ++c) dxr[c] += r * (w[c] * g[c] - xr[c] * r * mean);
  }
  // The weight gradient reduces over rows: done serially per column block so it is deterministic.
#pragma omp parallel for schedule(static) if (parallel_worth(N * C))
  for (int64_t c = 0; c < C; ++c) {
    T acc = 0;
    for (int64_t n = 0; n < N; ++n) acc += dy[n * C + c] * x[n * x_stride + c] * rstd[n];
    dw[c] += acc;
  }
}

RopeTable rope_table(int64_t dim, int64_t max_pos, double theta, bool yarn, double factor, int64_t original_max_pos,
                     double beta_fast, double beta_slow, double attention_factor) {
  RopeTable t;
  t.half = dim / 2;
  std::vector<double> freq(static_cast<size_t>(t.half));
  for (int64_t i = 0; i < t.half; ++i) freq[size_t(i)] = std::pow(theta, -2.0 * double(i) / double(dim));
  if (yarn && factor > 1.0) {
    auto correction_dim = [&](double rotations) {
      return double(dim) * std::log(double(original_max_pos) / (rotations * 2.0 * std::numbers::pi)) /
             (2.0 * std::log(theta));
    };
    const double low = std::max(std::floor(correction_dim(beta_fast)), 0.0);
    double high = std::min(std::ceil(correction_dim(beta_slow)), double(dim - 1));
    if (low == high) high += 0.001;
    for (int64_t i = 0; i < t.half; ++i) {
      const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
      freq[size_t(i)] = freq[size_t(i)] * (1.0 - ramp) + freq[size_t(i)] / factor * ramp;
    }
  }
  t.cos.resize(size_t(max_pos * t.half));
  t.sin.resize(size_t(max_pos * t.half));
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < t.half; ++i) {
      const double angle = double(p) * freq[size_t(i)];
      t.cos[size_t(p * t.half + i)] = std::cos(angle) * attention_factor;
      t.sin[size_t(p * t.half + i)] = std::sin(angle) * attention_factor;
    }
  return t;
}

template <typename T>
void rope(T* x, const int32_t* pos, int64_t N, int64_t heads, int64_t row_stride, int64_t head_stride,
          const RopeTable& table, bool inverse) {
  const int64_t half = table.half;
  // The inverse of a rotation scaled by f is its transpose scaled by f, which is what the backward pass needs.
  const double sign = inverse ? -1.0 : 1.0;
#pragma omp parallel for schedule(static) if (parallel_worth(N * heads * half))
  for (int64_t n = 0; n < N; ++n) {
    const double* c = &table.cos[size_t(pos[n]) * size_t(half)];
    const double* s = &table.sin[size_t(pos[n]) * size_t(half)];
    for (int64_t h = 0; h < heads; ++h) {
      T* v = x + n * row_stride + h * head_stride;
      for (int64_t i = 0; i < half; ++i) {
        const T a = v[2 * i], b = v[2 * i + 1];
        const T ci = T(c[i]), si = T(sign * s[i]);
        v[2 * i] = a * ci - b * si;
        v[2 * i + 1] = a * si + b * ci;
      }
    }
  }
}

// Attention runs one (sequence, head) pair per OpenMP thread; BLAS calls inside a parallel region stay on their
// thread (OpenBLAS built for OpenMP), so the small per-head GEMMs do not fight over cores.
template <typename T>
void attention(T* o, T* p, const T* q, const T* k, const T* v, int64_t B, int64_t Tn, int64_t H, int64_t dk, int64_t dv,
               double scale, const int32_t* pos) {
  const int64_t qs = H * dk, vs = H * dv;
  // first[b*Tn + i]: the first key query i may see, the start of its document.
  std::vector<int64_t> first(static_cast<size_t>(B * Tn), 0);
  if (pos)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 1; i < Tn; ++i)
        first[size_t(b * Tn + i)] = pos[b * Tn + i] == 0 ? i : first[size_t(b * Tn + i - 1)];
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      T* pb = p + (b * H + h) * Tn * Tn;
      const T* qb = q + b * Tn * qs + h * dk;
      const T* kb = k + b * Tn * qs + h * dk;
      gemm<T>(false, true, Tn, Tn, dk, T(scale), qb, qs, kb, qs, T(0), pb, Tn);
      for (int64_t i = 0; i < Tn; ++i) {
        T* pi = pb + i * Tn;
        const int64_t j0 = first[size_t(b * Tn + i)];
        const T mx = *std::max_element(pi + j0, pi + i + 1);
        T sum = 0;
        for (int64_t j = j0; j <= i; ++j) sum += (pi[j] = std::exp(pi[j] - mx));
        const T inv = T(1) / sum;
        for (int64_t j = j0; j <= i; ++j) pi[j] *= inv;
        std::fill(pi, pi + j0, T(0));
        std::fill(pi + i + 1, pi + Tn, T(0));
      }
      gemm<T>(false, false, Tn, dv, Tn, T(1), pb, Tn, v + b * Tn * vs + h * dv, vs, T(0), o + b * Tn * vs + h * dv, vs);
    }
}

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* p, int64_t B,
                        int64_t Tn, int64_t H, int64_t dkd, int64_t dvd, double scale) {
  const int64_t qs = H * dkd, vs = H * dvd;
#pragma omp parallel
  {
    std::vector<T> ds(static_cast<size_t>(Tn * Tn));
#pragma omp for schedule(static) collapse(2)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const T* pb = p + (b * H + h) * Tn * Tn;
        const T* dob = dout + b * Tn * vs + h * dvd;
        const int64_t qoff = b * Tn * qs + h * dkd, voff = b * Tn * vs + h * dvd;
        // dV += P^T dO; dP = dO V^T; dS = P * (dP - rowsum(P * dP)) * scale; dQ += dS K; dK += dS^T Q.
        gemm<T>(true, false, Tn, dvd, Tn, T(1), pb, Tn, dob, vs, T(1), dv + voff, vs);
        gemm<T>(false, true, Tn, Tn, dvd, T(1), dob, vs, v + voff, vs, T(0), ds.data(), Tn);
        for (int64_t i = 0; i < Tn; ++i) {
          const T* pi = pb + i * Tn;
          T* di = ds.data() + i * Tn;
          T dot = 0;
          for (int64_t j = 0; j <= i; ++j) dot += pi[j] * di[j];
          for (int64_t j = 0; j <= i; ++j) di[j] = pi[j] * (di[j] - dot) * T(scale);
          std::fill(di + i + 1, di + Tn, T(0));
        }
        gemm<T>(false, false, Tn, dkd, Tn, T(1), ds.data(), Tn, k + qoff, qs, T(1), dq + qoff, qs);
        gemm<T>(true, false, Tn, dkd, Tn, T(1), ds.data(), Tn, q + qoff, qs, T(1), dk + qoff, qs);
      }
  }
}

template <typename T>
void swiglu(T* a, const T* g, const T* u, int64_t n) {
#pragma omp parallel for schedule(static) if (parallel_worth(n))
  for (int64_t i = 0; i < n; ++i) a[i] = g[i] / (T(1) + std::exp(-g[i])) * u[i];
}

template <typename T>
void swiglu_backward(T* dg, T* du, const T* da, const T* g, const T* u, int64_t n) {
#pragma omp parallel for schedule(static) if (parallel_worth(n))
  for (int64_t i = 0; i < n; ++i) {
    const T sig = T(1) / (T(1) + std::exp(-g[i]));
    const T silu = g[i] * sig;
    du[i] += da[i] * silu;
    dg[i] += da[i] * u[i] * sig * (T(1) + g[i] * (T(1) - sig));
  }
}

template <typename T>
void softmax_rows(T* x, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static) if (parallel_worth(N * C))
  for (int64_t n = 0; n < N; ++n) {
    T* r = x + n * C;
    const T mx = *std::max_element(r, r + C);
    T sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += (r[c] = std::exp(r[c] - mx));
    for (int64_t c = 0; c < C; ++c) r[c] /= sum;
  }
}

template <typename T>
double cross_entropy(T* logits, const int32_t* targets, int64_t N, int64_t V) {
  double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (parallel_worth(N * V))
  for (int64_t n = 0; n < N; ++n) {
    T* r = logits + n * V;
    const T mx = *std::max_element(r, r + V);
    double sum = 0;
    for (int64_t c = 0; c < V; ++c) sum += double(std::exp(r[c] - mx));
    if (targets[n] >= 0) total += std::log(sum) - double(r[targets[n]] - mx);
    const T inv = T(1.0 / sum);
    for (int64_t c = 0; c < V; ++c) r[c] = std::exp(r[c] - mx) * inv;
  }
  return total;
}

template <typename T>
void cross_entropy_backward(T* dlogits, const T* probs, const int32_t* targets, int64_t N, int64_t V, double scale,
                            const T* row_scale) {
#pragma omp parallel for schedule(static) if (parallel_worth(N * V))
  for (int64_t n = 0; n < N; ++n) {
    T* d = dlogits + n * V;
    if (targets[n] < 0) {
      std::fill(d, d + V, T(0));
      continue;
    }
    const T s = T(scale) * (row_scale ? row_scale[n] : T(1));
    for (int64_t c = 0; c < V; ++c) d[c] = probs[n * V + c] * s;
    d[targets[n]] -= s;
  }
}

#define DS_INSTANTIATE(T)                                                                                             \
  template void linear<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, bool);                                   \
  template void linear_backward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t);                  \
  template void rmsnorm<T>(T*, T*, const T*, const T*, int64_t, int64_t, double, int64_t);                            \
  template void rmsnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int64_t, int64_t, int64_t);       \
  template void rope<T>(T*, const int32_t*, int64_t, int64_t, int64_t, int64_t, const RopeTable&, bool);              \
  template void attention<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t,       \
                             double, const int32_t*);                                                                 \
  template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t, int64_t, \
                                      int64_t, int64_t, int64_t, double);                                             \
  template void swiglu<T>(T*, const T*, const T*, int64_t);                                                           \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t);                                    \
  template void softmax_rows<T>(T*, int64_t, int64_t);                                                                \
  template double cross_entropy<T>(T*, const int32_t*, int64_t, int64_t);                                             \
  template void cross_entropy_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t, double, const T*);
DS_INSTANTIATE(float)
DS_INSTANTIATE(double)

}  // namespace ops
}  // namespace ds
