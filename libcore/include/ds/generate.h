#pragma once
// Greedy completions of held-out builtin:arith problems: what ds-pretrain --samples prints after training.
#include <cstdint>
#include <string>
#include <vector>

#include "ds/arith.h"
#include "ds/model.h"
#include "ds/tokenizer.h"

namespace ds {

struct ArithSample {
  arith::Problem problem;
  std::string completion;
  bool correct = false;
};
// The first n held-out problems, prompted as the pretraining corpus frames them ("User: ... Assistant:"), decoded
// greedily as one batch.
std::vector<ArithSample> sample_arith(const Model<float>& model, const Tokenizer& tokenizer, size_t n,
                                      int64_t max_new_tokens = 96);

}  // namespace ds
