#pragma once
// Sampler: turns one row of logits into a token: repetition penalty, temperature, top-k, top-p, min-p, then a draw
// from a seeded generator (identical on every platform for a seed). Temperature 0 is greedy.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ds {

struct SamplingOptions {
  double temperature = 0.6;         // R1's recommended setting; 0 = greedy
  double top_p = 0.95;              // 1 = off
  int64_t top_k = 0;                // 0 = off
  double min_p = 0.0;               // keep tokens with p >= min_p * p_max; 0 = off
  double repetition_penalty = 1.0;  // > 1 discourages tokens already in the sequence (prompt included)
  int64_t max_new_tokens = 256;
  std::vector<std::string> stop;  // generation ends when the completion text contains one (it is cut off)
};

class Sampler {
 public:
  explicit Sampler(uint64_t seed);
  // logits is modified in place. history: the sequence so far, for the repetition penalty.
  uint32_t sample(std::span<float> logits, const SamplingOptions& options, std::span<const uint32_t> history);
  double uniform();  // [0, 1)

 private:
  uint64_t state_;
};

}  // namespace ds
