#include "ds/generate.h"

#include <algorithm>

namespace ds {

std::vector<uint32_t> generate_greedy(Model<float>& model, const std::vector<uint32_t>& prompt, int64_t max_new_tokens,
                                      uint32_t eos_id, int64_t token_limit) {
  const int64_t V = model.config().vocab_size, limit = model.config().max_position_embeddings;
  std::vector<int32_t> tokens(prompt.begin(), prompt.end());
  std::vector<uint32_t> out;
  while (int64_t(out.size()) < max_new_tokens && int64_t(tokens.size()) < limit) {
    const int64_t Tn = int64_t(tokens.size());
    model.forward(tokens.data(), nullptr, 1, Tn);
    const float* last = model.logits() + (Tn - 1) * V;
    const uint32_t next = uint32_t(std::max_element(last, last + std::min(V, token_limit)) - last);
    out.push_back(next);
    if (next == eos_id) break;
    tokens.push_back(int32_t(next));
  }
  return out;
}

std::vector<ArithSample> sample_arith(Model<float>& model, const Tokenizer& tokenizer, size_t n,
                                      int64_t max_new_tokens) {
  std::vector<ArithSample> samples;
  for (const arith::Problem& p : arith::test_set(n, 0)) {
    std::vector<uint32_t> prompt = {tokenizer.bos_id()};
    const std::vector<uint32_t> text = tokenizer.encode(arith::prompt_text(p), false);
    prompt.insert(prompt.end(), text.begin(), text.end());
    const std::vector<uint32_t> completion = generate_greedy(model, prompt, max_new_tokens, tokenizer.eos_id(), int64_t(tokenizer.vocab_size()));
    ArithSample s{p, tokenizer.decode(completion, true), false};
    s.correct = arith::check_answer(p, s.completion);
    samples.push_back(std::move(s));
  }
  return samples;
}

}  // namespace ds
