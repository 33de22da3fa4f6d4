// DeepSeekMoE (docs/architecture.md#deepseekmoe-routing and #load-balancing): sigmoid or softmax scores, the correction
// bias used only to choose, group-limited top-k, renormalised and scaled weights, shared experts, and the sequence-wise
// balance loss.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "ds/comm.h"
#include "ds/parallel.h"
#include "modules.h"
#include "routing.h"

namespace ds {

namespace {
// Indices of the k largest values among candidates, larger first, ties to the lower index (deterministic).
template <typename T>
void top_k(std::vector<int32_t>& candidates, const T* values, int64_t k) {
  std::partial_sort(candidates.begin(), candidates.begin() + k, candidates.end(),
                    [&](int32_t a, int32_t b) { return values[a] > values[b] || (values[a] == values[b] && a < b); });
  candidates.resize(size_t(k));
}
}  // namespace

template <typename T>
Moe<T>::Moe(ParamStore<T>& s, const ModelConfig& c, const std::string& prefix)
    : config(&c), store(&s), gate(s, prefix + "gate.weight", c.hidden_size, c.n_routed_experts, false) {
  if (c.topk_method == TopkMethod::NoauxTc)
    bias = s.add(prefix + "gate.e_score_correction_bias", {c.n_routed_experts}, ParamKind::RouterBias);
  for (int64_t e = 0; e < c.n_routed_experts; ++e)
    experts.emplace_back(s, fmt::format("{}experts.{}.", prefix, e), c.hidden_size, c.moe_intermediate_size);
  has_shared = c.n_shared_experts > 0;
  if (has_shared)
    shared = Mlp<T>(s, prefix + "shared_experts.", c.hidden_size, c.moe_intermediate_size * c.n_shared_experts);
}

template <typename T>
void route_token(const ModelConfig& c, const T* s, const T* bias, int32_t* chosen, T* weights) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, G = c.n_group, per_group = E / G;
  std::vector<T> choice(s, s + E);  // what experts are chosen by; the weights always come from s
  if (bias)
    for (int64_t e = 0; e < E; ++e) choice[size_t(e)] += bias[e];

  std::vector<int32_t> candidates;
  if (c.topk_method == TopkMethod::Greedy || G == 1) {
    candidates.resize(size_t(E));
    std::iota(candidates.begin(), candidates.end(), 0);
  } else {
    // Group score: the sum of the group's two best (noaux_tc) or its best (group_limited_greedy).
    std::vector<T> group_score(static_cast<size_t>(G));
    for (int64_t g = 0; g < G; ++g) {
      std::vector<T> members(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
      std::sort(members.begin(), members.end(), std::greater<T>());
      group_score[size_t(g)] = c.topk_method == TopkMethod::NoauxTc ? members[0] + members[1] : members[0];
    }
    std::vector<int32_t> groups(static_cast<size_t>(G));
    std::iota(groups.begin(), groups.end(), 0);
    top_k(groups, group_score.data(), c.topk_group);
    for (int32_t g : groups)
      for (int64_t e = 0; e < per_group; ++e) candidates.push_back(int32_t(g * per_group + e));
  }
  top_k(candidates, choice.data(), K);

  T sum = 0;
  for (int64_t k = 0; k < K; ++k) sum += s[candidates[size_t(k)]];
  const T norm = c.norm_topk_prob && K > 1 ? T(1) / (sum + T(1e-20)) : T(1);
  for (int64_t k = 0; k < K; ++k) {
    chosen[k] = candidates[size_t(k)];
    weights[k] = s[candidates[size_t(k)]] * norm * T(c.routed_scaling_factor);
  }
}
template void route_token<float>(const ModelConfig&, const float*, const float*, int32_t*, float*);
template void route_token<double>(const ModelConfig&, const double*, const double*, int32_t*, double*);

template <typename T>
double Moe<T>::forward(T* y, const T* x_, int64_t B_, int64_t Tn_, double balance_alpha_) {
  const ModelConfig& c = *config;
  x = x_, B = B_, Tn = Tn_, N = B * Tn, balance_alpha = balance_alpha_;
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, d = c.hidden_size;
  logits.resize(size_t(N * E)), chosen.resize(size_t(N * K)), weights.resize(size_t(N * K));
  gate.forward(logits.data(), x, N);
  scores = logits;
  if (c.scoring_func == ScoringFunc::Sigmoid)
    for (T& s : scores) s = T(1) / (T(1) + std::exp(-s));
  else
    ops::softmax_rows(scores.data(), N, E);
  const T* b = bias >= 0 ? store->w(bias) : nullptr;
#pragma omp parallel for schedule(static) if (parallel_worth(N * E))
  for (int64_t n = 0; n < N; ++n)
    route_token(c, &scores[size_t(n * E)], b, &chosen[size_t(n * K)], &weights[size_t(n * K)]);

  rows_of.assign(size_t(E), {});
  for (int64_t i = 0; i < N * K; ++i) rows_of[size_t(chosen[size_t(i)])].push_back(int32_t(i));
  load.assign(size_t(E), 0);
  for (int64_t e = 0; e < E; ++e) load[size_t(e)] = int64_t(rows_of[size_t(e)].size());

  if (has_shared)
    shared.forward(y, x, N);
  else
    std::fill(y, y + N * d, T(0));
  std::vector<T> rows(size_t(N * K * d));
  int64_t at = 0;
  for (const auto& expert_rows : rows_of)
    for (int32_t i : expert_rows) std::copy_n(x + (i / K) * d, d, &rows[size_t(at++ * d)]);
  const int R = ranks();
  const int64_t local = E / R, first = first_local_expert();
  recv_rows = load;
  if (R > 1) {  // how many rows each rank sends to each of this rank's experts
    recv_rows.resize(size_t(R * local));
    store->ep->all_to_all_v(load.data(), std::vector<int64_t>(size_t(R), local), recv_rows.data(),
                            std::vector<int64_t>(size_t(R), local));
  }
  dispatch(rows, xe);
  ye.resize(size_t(local));
  for (int64_t e = 0; e < local; ++e) {
    const int64_t ne = int64_t(xe[size_t(e)].size()) / d;
    ye[size_t(e)].assign(size_t(ne * d), T(0));
    if (ne > 0) experts[size_t(first + e)].forward(ye[size_t(e)].data(), xe[size_t(e)].data(), ne);
  }
  combine(ye, routed_y);
  at = 0;
  for (const auto& expert_rows : rows_of)
    for (int32_t i : expert_rows) {
      const T w = weights[size_t(i)];
      T* yr = y + (i / K) * d;
      const T* src = &routed_y[size_t(at++ * d)];
      for (int64_t j = 0; j < d; ++j) yr[j] += w * src[j];
    }

  if (balance_alpha == 0) return 0;
  // L = alpha * sum_i f_i P_i per sequence, f_i = E/(K T) * (tokens choosing i), P_i = mean_t s_i / sum_j s_j.
  balance_f.assign(size_t(B * E), T(0));
  double loss = 0;
  for (int64_t b = 0; b < B; ++b) {
    T* f = &balance_f[size_t(b * E)];
    std::vector<double> P(size_t(E), 0.0);
    for (int64_t t = 0; t < Tn; ++t) {
      const int64_t n = b * Tn + t;
      for (int64_t k = 0; k < K; ++k) f[chosen[size_t(n * K + k)]] += T(double(E) / double(K * Tn));
      const T* s = &scores[size_t(n * E)];
      const double total = std::accumulate(s, s + E, 0.0);
      for (int64_t e = 0; e < E; ++e) P[size_t(e)] += double(s[e]) / total / double(Tn);
    }
    for (int64_t e = 0; e < E; ++e) loss += balance_alpha * double(f[e]) * P[size_t(e)] / double(B);
  }
  return loss;
}

template <typename T>
void Moe<T>::backward(T* dx, const T* dy) {
  const ModelConfig& c = *config;
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, d = c.hidden_size;
  if (has_shared) shared.backward(dx, dy);

  std::vector<T> dweights(size_t(N * K), T(0)), drows(size_t(N * K * d));
  int64_t at = 0;
  for (const auto& expert_rows : rows_of)
    for (int32_t i : expert_rows) {
      const T* g = dy + (i / K) * d;
      const T* out = &routed_y[size_t(at * d)];
      T* dr = &drows[size_t(at++ * d)];
      T dot = 0;
      for (int64_t j = 0; j < d; ++j) {
        dr[j] = weights[size_t(i)] * g[j];
        dot += g[j] * out[j];
      }
      dweights[size_t(i)] = dot;
    }
  std::vector<std::vector<T>> dye, dxe(ye.size());
  dispatch(drows, dye);
  const int64_t first = first_local_expert();
  for (size_t e = 0; e < ye.size(); ++e) {
    dxe[e].assign(dye[e].size(), T(0));
    if (!dye[e].empty()) experts[size_t(first) + e].backward(dxe[e].data(), dye[e].data());
  }
  combine(dxe, drows);
  at = 0;
  for (const auto& expert_rows : rows_of)
    for (int32_t i : expert_rows) {
      T* dst = dx + (i / K) * d;
      const T* src = &drows[size_t(at++ * d)];
      for (int64_t j = 0; j < d; ++j) dst[j] += src[j];
    }

  // Back through w = scale * s / (sum of chosen s) to the scores, then through the score function to the logits.
  std::vector<T> dscores(size_t(N * E), T(0));
  const T scale = T(c.routed_scaling_factor);
#pragma omp parallel for schedule(static) if (parallel_worth(N * E))
  for (int64_t n = 0; n < N; ++n) {
    const T* s = &scores[size_t(n * E)];
    T* ds = &dscores[size_t(n * E)];
    const int32_t* ch = &chosen[size_t(n * K)];
    const T* dw = &dweights[size_t(n * K)];
    if (c.norm_topk_prob && K > 1) {
      T sum = 0, dot = 0;
      for (int64_t k = 0; k < K; ++k) sum += s[ch[k]];
      const T z = sum + T(1e-20);
      for (int64_t k = 0; k < K; ++k) dot += dw[k] * s[ch[k]];
      for (int64_t k = 0; k < K; ++k) ds[ch[k]] += scale * (dw[k] / z - dot / (z * z));
    } else {
      for (int64_t k = 0; k < K; ++k) ds[ch[k]] += scale * dw[k];
    }
    if (balance_alpha != 0) {
      const int64_t b = n / Tn;
      T total = 0, dot = 0;
      for (int64_t e = 0; e < E; ++e) total += s[e];
      std::vector<T> g(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) {
        g[size_t(e)] = T(balance_alpha / double(B * Tn)) * balance_f[size_t(b * E + e)];
        dot += g[size_t(e)] * s[e] / total;
      }
      for (int64_t e = 0; e < E; ++e) ds[e] += (g[size_t(e)] - dot) / total;
    }
    if (c.scoring_func == ScoringFunc::Sigmoid) {
      for (int64_t e = 0; e < E; ++e) ds[e] *= s[e] * (T(1) - s[e]);
    } else {
      T dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += ds[e] * s[e];
      for (int64_t e = 0; e < E; ++e) ds[e] = s[e] * (ds[e] - dot);
    }
  }
  gate.backward(dx, dscores.data());
}

template <typename T>
int Moe<T>::ranks() const {
  return store->ep ? store->ep->size() : 1;
}

template <typename T>
int64_t Moe<T>::first_local_expert() const {
  return store->ep ? store->ep->rank() * (config->n_routed_experts / ranks()) : 0;
}

// Values of the routed rows this rank sends to each rank (the experts' owners), and receives from each.
template <typename T>
void Moe<T>::exchange_counts(std::vector<int64_t>& sent, std::vector<int64_t>& received) const {
  const int R = ranks();
  const int64_t d = config->hidden_size, E = config->n_routed_experts, local = E / R;
  sent.assign(size_t(R), 0), received.assign(size_t(R), 0);
  for (int64_t e = 0; e < E; ++e) sent[size_t(e / local)] += load[size_t(e)] * d;
  for (int q = 0; q < R; ++q)
    for (int64_t e = 0; e < local; ++e) received[size_t(q)] += recv_rows[size_t(q * local + e)] * d;
}

// Received rows come rank by rank, each rank's expert by expert; an expert runs once over the rows of all ranks.
template <typename T>
void Moe<T>::dispatch(const std::vector<T>& rows, std::vector<std::vector<T>>& per_expert) {
  const int R = ranks();
  const int64_t d = config->hidden_size, local = config->n_routed_experts / R;
  const std::vector<T>* received = &rows;
  std::vector<T> buffer;
  if (R > 1) {
    std::vector<int64_t> send, recv;
    exchange_counts(send, recv);
    buffer.resize(size_t(std::accumulate(recv.begin(), recv.end(), int64_t(0))));
    store->ep->all_to_all_v(rows.data(), send, buffer.data(), recv);
    received = &buffer;
  }
  per_expert.assign(size_t(local), {});
  size_t at = 0;
  for (int q = 0; q < R; ++q)
    for (int64_t e = 0; e < local; ++e) {
      const size_t n = size_t(recv_rows[size_t(q * local + e)] * d);
      per_expert[size_t(e)].insert(per_expert[size_t(e)].end(), received->begin() + long(at),
                                   received->begin() + long(at + n));
      at += n;
    }
}

template <typename T>
void Moe<T>::combine(const std::vector<std::vector<T>>& per_expert, std::vector<T>& rows) {
  const int R = ranks();
  const int64_t d = config->hidden_size, local = config->n_routed_experts / R;
  std::vector<T> back;  // in the layout dispatch received
  std::vector<size_t> taken(size_t(local), 0);
  for (int q = 0; q < R; ++q)
    for (int64_t e = 0; e < local; ++e) {
      const size_t n = size_t(recv_rows[size_t(q * local + e)] * d);
      const auto& src = per_expert[size_t(e)];
      back.insert(back.end(), src.begin() + long(taken[size_t(e)]), src.begin() + long(taken[size_t(e)] + n));
      taken[size_t(e)] += n;
    }
  if (R == 1) {
    rows = std::move(back);
    return;
  }
  std::vector<int64_t> send, recv;
  exchange_counts(send, recv);
  rows.resize(size_t(std::accumulate(send.begin(), send.end(), int64_t(0))));
  store->ep->all_to_all_v(back.data(), recv, rows.data(), send);
}

template struct Moe<float>;
template struct Moe<double>;

}  // namespace ds
