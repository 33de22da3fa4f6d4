#pragma once
// Greedy decoding by full recomputation: the simple reference path (the KV-cached sampler lives beside it later).
#include <cstdint>
#include <string>
#include <vector>

#include "ds/arith.h"
#include "ds/model.h"
#include "ds/tokenizer.h"

namespace ds {

// Appends up to max_new_tokens greedy tokens to prompt, stopping after EOS; returns only the new tokens. Only ids
// below token_limit are chosen: the embedding rows past the tokenizer's vocabulary are padding.
std::vector<uint32_t> generate_greedy(Model<float>& model, const std::vector<uint32_t>& prompt, int64_t max_new_tokens,
                                      uint32_t eos_id, int64_t token_limit);

struct ArithSample {
  arith::Problem problem;
  std::string completion;
  bool correct = false;
};
// Greedy completions of the first n held-out builtin:arith problems (prompted as the pretraining corpus frames them).
std::vector<ArithSample> sample_arith(Model<float>& model, const Tokenizer& tokenizer, size_t n,
                                      int64_t max_new_tokens = 96);

}  // namespace ds
