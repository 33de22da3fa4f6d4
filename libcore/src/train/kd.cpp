// Distillation losses: divergences between coarsened (or full) teacher and student distributions, in log space.
#include "ds/kd.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "ds/error.h"

namespace ds::kd {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

double log_add_exp(double a, double b) {
  if (a == kNegInf) return b;
  if (b == kNegInf) return a;
  const double m = std::max(a, b);
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}

// log softmax(z / tau) in place over x (already z / tau).
void log_softmax(std::vector<double>& x) {
  const double mx = *std::max_element(x.begin(), x.end());
  double sum = 0;
  for (double v : x) sum += std::exp(v - mx);
  const double lse = mx + std::log(sum);
  for (double& v : x) v -= lse;
}

// log of the summed probability of each outcome, from per-token log-probabilities.
std::vector<double> outcome_logs(const std::vector<double>& logp, const std::vector<int64_t>& bucket, int64_t K) {
  std::vector<double> mx(static_cast<size_t>(K), kNegInf), sum(static_cast<size_t>(K), 0.0);
  std::vector<double> out(static_cast<size_t>(K));
  for (size_t j = 0; j < logp.size(); ++j) mx[size_t(bucket[j])] = std::max(mx[size_t(bucket[j])], logp[j]);
  for (size_t j = 0; j < logp.size(); ++j) sum[size_t(bucket[j])] += std::exp(logp[j] - mx[size_t(bucket[j])]);
  for (int64_t o = 0; o < K; ++o) out[size_t(o)] = mx[size_t(o)] + std::log(sum[size_t(o)]);
  return out;
}

}  // namespace

Divergence parse_divergence(std::string_view name) {
  if (name == "forward-kl") return Divergence::forward_kl;
  if (name == "reverse-kl") return Divergence::reverse_kl;
  if (name == "jsd") return Divergence::jsd;
  fail("unknown divergence '{}' (forward-kl, reverse-kl, jsd)", name);
}

void validate(const Options& o) {
  if (!(o.temperature > 0)) fail("the distillation temperature must be positive, got {}", o.temperature);
  if (o.divergence == Divergence::jsd && !(o.beta > 0 && o.beta < 1))
    fail("the JSD beta must lie in (0, 1), got {} (use forward-kl or reverse-kl for the limits)", o.beta);
  if (o.top_k < 0) fail("top-k must not be negative, got {}", o.top_k);
}

template <typename T>
double divergence(const T* student, const T* teacher, int64_t V, const Options& o, T* grad, double scale) {
  const double tau = o.temperature;
  std::vector<double> ls(static_cast<size_t>(V)), lt(static_cast<size_t>(V));
  for (int64_t j = 0; j < V; ++j) ls[size_t(j)] = double(student[j]) / tau, lt[size_t(j)] = double(teacher[j]) / tau;
  log_softmax(ls);
  log_softmax(lt);

  // Outcomes: every token, or the teacher's top k and one bucket for the rest (outcome k).
  int64_t K = V;
  std::vector<int64_t> bucket(static_cast<size_t>(V));
  std::iota(bucket.begin(), bucket.end(), int64_t(0));
  if (o.top_k > 0 && o.top_k < V) {
    std::vector<int64_t> order = bucket;
    std::partial_sort(order.begin(), order.begin() + o.top_k, order.end(), [&](int64_t a, int64_t b) {
      return lt[size_t(a)] > lt[size_t(b)] || (lt[size_t(a)] == lt[size_t(b)] && a < b);
    });
    std::fill(bucket.begin(), bucket.end(), o.top_k);
    for (int64_t r = 0; r < o.top_k; ++r) bucket[size_t(order[size_t(r)])] = r;
    K = o.top_k + 1;
  }
  const std::vector<double> lP = K == V ? lt : outcome_logs(lt, bucket, K);
  const std::vector<double> lQ = K == V ? ls : outcome_logs(ls, bucket, K);

  // The loss, and G_o = dL/dQ_o through q_j * G_o(j) (qG) and sum_o Q_o G_o (S); then
  // dL/dz_j = (q_j G_o(j) - q_j S) / tau, the chain rule through Q_o = sum_{j in o} softmax(z / tau)_j.
  double loss = 0, S = 0;
  std::vector<double> G(static_cast<size_t>(K));
  const double log_beta = std::log(o.beta), log_1mbeta = std::log1p(-o.beta);
  for (int64_t k = 0; k < K; ++k) {
    const double p = std::exp(lP[size_t(k)]), q = std::exp(lQ[size_t(k)]);
    switch (o.divergence) {
      case Divergence::forward_kl:
        if (p > 0) loss += p * (lP[size_t(k)] - lQ[size_t(k)]);
        S -= p;  // Q_o G_o = -P_o
        break;
      case Divergence::reverse_kl:
        G[size_t(k)] = lQ[size_t(k)] - lP[size_t(k)] + 1;
        if (q > 0) loss += q * (lQ[size_t(k)] - lP[size_t(k)]), S += q * G[size_t(k)];
        break;
      case Divergence::jsd: {
        const double lM = log_add_exp(log_beta + lP[size_t(k)], log_1mbeta + lQ[size_t(k)]);
        G[size_t(k)] = (1 - o.beta) * (lQ[size_t(k)] - lM);
        if (p > 0) loss += o.beta * p * (lP[size_t(k)] - lM);
        if (q > 0) loss += (1 - o.beta) * q * (lQ[size_t(k)] - lM), S += q * G[size_t(k)];
        break;
      }
    }
  }
  if (grad)
    for (int64_t j = 0; j < V; ++j) {
      const size_t o_j = size_t(bucket[size_t(j)]);
      const double q = std::exp(ls[size_t(j)]);
      // Forward KL: q_j G_o = -(q_j / Q_o) P_o, formed in log space so a tiny Q_o is never divided by.
      const double qG =
          o.divergence == Divergence::forward_kl ? -std::exp(ls[size_t(j)] - lQ[o_j] + lP[o_j]) : q * G[o_j];
      grad[j] += T(scale * (qG - q * S) / tau);
    }
  return loss;
}

template <typename T>
Loss distill_loss(const T* student, const T* teacher, const int32_t* targets, int64_t N, int64_t V,
                  const Options& options, double alpha, T* grad, double count) {
  validate(options);
  if (alpha > 0 && !teacher) fail("a distillation loss with alpha > 0 needs the teacher's logits");
  Loss L;
  for (int64_t n = 0; n < N; ++n) L.tokens += targets[n] >= 0;
  const double inv = 1.0 / (count > 0 ? count : double(std::max<int64_t>(L.tokens, 1)));
  std::vector<double> kd(static_cast<size_t>(N), 0.0), ce(static_cast<size_t>(N), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    T* g = grad + n * V;
    std::fill(g, g + V, T(0));
    if (targets[n] < 0) continue;
    const T* z = student + n * V;
    if (alpha > 0) kd[size_t(n)] = divergence(z, teacher + n * V, V, options, g, alpha * inv);
    if (alpha < 1) {
      const double mx = double(*std::max_element(z, z + V));
      double sum = 0;
      for (int64_t j = 0; j < V; ++j) sum += std::exp(double(z[j]) - mx);
      const double lse = mx + std::log(sum), w = (1 - alpha) * inv;
      ce[size_t(n)] = lse - double(z[targets[n]]);
      for (int64_t j = 0; j < V; ++j) g[j] += T(w * std::exp(double(z[j]) - lse));
      g[targets[n]] -= T(w);
    }
  }
  // Summed in order, so the reported loss does not depend on the thread count.
  for (int64_t n = 0; n < N; ++n) L.kd += kd[size_t(n)] * inv, L.ce += ce[size_t(n)] * inv;
  L.total = alpha * L.kd + (1 - alpha) * L.ce;
  return L;
}

#define DS_INSTANTIATE(T)                                                                                         \
  template double divergence<T>(const T*, const T*, int64_t, const Options&, T*, double);                         \
  template Loss distill_loss<T>(const T*, const T*, const int32_t*, int64_t, int64_t, const Options&, double, T*, \
                                double);
DS_INSTANTIATE(float)
DS_INSTANTIATE(double)

}  // namespace ds::kd
