#include "ds/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

namespace ds {

Sampler::Sampler(uint64_t seed) : state_(seed) {}

double Sampler::uniform() {
  // splitmix64: tiny, seedable, and the same everywhere (unlike std:: distributions).
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53;
}

uint32_t Sampler::sample(std::span<float> logits, const SamplingOptions& o, std::span<const uint32_t> history) {
  if (o.repetition_penalty != 1.0) {
    // As in Hugging Face: a seen token's positive logit is divided by the penalty, a negative one multiplied.
    const float p = float(o.repetition_penalty);
    std::unordered_set<uint32_t> seen(history.begin(), history.end());
    for (uint32_t t : seen)
      if (t < logits.size()) logits[t] = logits[t] > 0 ? logits[t] / p : logits[t] * p;
  }
  if (o.temperature <= 0) return uint32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  // A diverged model's NaN logits would break the sort's ordering (undefined behaviour); they rank last instead.
  for (float& x : logits)
    if (std::isnan(x)) x = -std::numeric_limits<float>::infinity();

  std::vector<uint32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0u);
  auto by_logit = [&](uint32_t a, uint32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  size_t keep = order.size();
  if (o.top_k > 0 && size_t(o.top_k) < keep) {
    keep = size_t(o.top_k);
    std::partial_sort(order.begin(), order.begin() + std::ptrdiff_t(keep), order.end(), by_logit);
  } else {
    std::sort(order.begin(), order.end(), by_logit);
  }
  std::vector<double> p(keep);
  const double mx = logits[order[0]];
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += (p[i] = std::exp((double(logits[order[i]]) - mx) / o.temperature));
  for (double& x : p) x /= sum;
  if (o.top_p < 1.0) {  // the smallest prefix whose mass reaches top_p
    double cumulative = 0;
    for (size_t i = 0; i < keep; ++i)
      if ((cumulative += p[i]) >= o.top_p) {
        keep = i + 1;
        break;
      }
  }
  if (o.min_p > 0)
    while (keep > 1 && p[keep - 1] < o.min_p * p[0]) --keep;
  const double total = std::accumulate(p.begin(), p.begin() + std::ptrdiff_t(keep), 0.0);
  double u = uniform() * total;
  for (size_t i = 0; i < keep; ++i)
    if ((u -= p[i]) < 0) return order[i];
  return order[keep - 1];
}

}  // namespace ds
