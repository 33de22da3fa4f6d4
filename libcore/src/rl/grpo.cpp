#include "ds/grpo.h"

#include <algorithm>
#include <cmath>

#include "ds/error.h"

namespace ds::grpo {

ScaleRewards parse_scale_rewards(const std::string& name) {
  if (name == "group") return ScaleRewards::group;
  if (name == "none") return ScaleRewards::none;
  fail("'{}' is not one of group, none", name);
}

Aggregation parse_aggregation(const std::string& name) {
  if (name == "grpo") return Aggregation::grpo;
  if (name == "dapo") return Aggregation::dapo;
  if (name == "dr_grpo") return Aggregation::dr_grpo;
  fail("'{}' is not one of grpo, dapo, dr_grpo", name);
}

namespace {

void check_groups(size_t n, int64_t group_size) {
  if (group_size < 2) fail("the group size must be at least 2, not {}", group_size);
  if (n % size_t(group_size) != 0) fail("{} rewards do not split into groups of {}", n, group_size);
}

bool all_equal(std::span<const double> r) {
  return std::all_of(r.begin(), r.end(), [&](double x) { return x == r[0]; });
}

}  // namespace

std::vector<double> advantages(std::span<const double> rewards, int64_t group_size, ScaleRewards scale, double eps) {
  check_groups(rewards.size(), group_size);
  const size_t G = size_t(group_size);
  std::vector<double> out(rewards.size(), 0.0);
  for (size_t g = 0; g < rewards.size(); g += G) {
    const std::span<const double> r = rewards.subspan(g, G);
    if (all_equal(r)) continue;  // exactly 0, even with eps = 0
    double mean = 0, var = 0;
    for (double x : r) mean += x / double(G);
    for (double x : r) var += (x - mean) * (x - mean) / double(G - 1);
    const double denom = scale == ScaleRewards::group ? std::sqrt(var) + eps : 1.0;
    for (size_t i = 0; i < G; ++i) out[g + i] = (r[i] - mean) / denom;
  }
  return out;
}

int64_t zero_variance_groups(std::span<const double> rewards, int64_t group_size) {
  check_groups(rewards.size(), group_size);
  int64_t count = 0;
  for (size_t g = 0; g < rewards.size(); g += size_t(group_size)) {
    count += all_equal(rewards.subspan(g, size_t(group_size)));
  }
  return count;
}

std::vector<double> token_scales(std::span<const int64_t> lengths, Aggregation aggregation,
                                 int64_t max_completion_len) {
  const double sequences = double(lengths.size());
  int64_t total = 0;
  for (int64_t n : lengths) total += n;
  std::vector<double> out;
  out.reserve(size_t(total));
  for (int64_t n : lengths) {
    double s = 0;
    switch (aggregation) {
      case Aggregation::grpo:
        s = 1.0 / (sequences * double(n));
        break;
      case Aggregation::dapo:
        s = 1.0 / double(total);
        break;
      case Aggregation::dr_grpo:
        if (max_completion_len <= 0) fail("dr_grpo needs a positive max completion length");
        s = 1.0 / (sequences * double(max_completion_len));
        break;
    }
    out.insert(out.end(), size_t(n), s);
  }
  return out;
}

Stats& Stats::operator+=(const Stats& o) {
  tokens += o.tokens, clipped_low += o.clipped_low, clipped_high += o.clipped_high;
  kl += o.kl, ratio += o.ratio;
  return *this;
}

Result policy_loss(const Tokens& t, const Options& o) {
  const size_t n = t.logp.size();
  const bool kl = o.beta != 0;
  if (t.old_logp.size() != n || t.advantage.size() != n || t.scale.size() != n || (kl && t.ref_logp.size() != n))
    fail("policy_loss: token arrays of different lengths");
  Result r;
  r.weights.resize(n);
  r.stats.tokens = int64_t(n);
  for (size_t i = 0; i < n; ++i) {
    const double A = t.advantage[i], rho = std::exp(t.logp[i] - t.old_logp[i]);
    const bool low = A < 0 && rho<1 - o.epsilon, high = A> 0 && rho > 1 + o.epsilon_high;
    const double clipped = std::clamp(rho, 1 - o.epsilon, 1 + o.epsilon_high);
    // min(rho A, clip(rho) A) is the clipped term exactly when low or high; its gradient is then 0.
    double loss = -std::min(rho * A, clipped * A), weight = (low || high) ? 0.0 : rho * A;
    if (kl) {
      const double d = t.ref_logp[i] - t.logp[i], e = std::exp(d);
      r.stats.kl += e - d - 1;
      loss += o.beta * (e - d - 1);
      weight += o.beta * (e - 1);  // -d/dlogp of beta * (e^d - d - 1)
    }
    r.loss += t.scale[i] * loss;
    r.weights[i] = t.scale[i] * weight;
    r.stats.clipped_low += low, r.stats.clipped_high += high, r.stats.ratio += rho;
  }
  return r;
}

Packed pack(std::span<const Sequence> sequences, int32_t pad_id) {
  Packed p;
  p.B = int64_t(sequences.size());
  for (const Sequence& s : sequences) {
    if (s.prompt.empty() || s.completion.empty()) fail("pack: a sequence needs a prompt and a completion");
    p.Tn = std::max(p.Tn, int64_t(s.prompt.size() + s.completion.size()) - 1);
  }
  p.inputs.assign(size_t(p.B * p.Tn), pad_id);
  p.targets.assign(p.inputs.size(), -1);
  for (int64_t b = 0; b < p.B; ++b) {
    const Sequence& s = sequences[size_t(b)];
    const int64_t P = int64_t(s.prompt.size()), n = P + int64_t(s.completion.size());
    auto token = [&](int64_t i) { return int32_t(i < P ? s.prompt[size_t(i)] : s.completion[size_t(i - P)]); };
    for (int64_t i = 0; i + 1 < n; ++i) p.inputs[size_t(b * p.Tn + i)] = token(i);
    for (int64_t i = P; i < n; ++i) {
      const int64_t row = b * p.Tn + i - 1;
      p.targets[size_t(row)] = token(i);
      p.rows.push_back(row);
    }
  }
  return p;
}

}  // namespace ds::grpo
