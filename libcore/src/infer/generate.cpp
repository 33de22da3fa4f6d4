#include "ds/generate.h"

#include "ds/engine.h"

namespace ds {

std::vector<ArithSample> sample_arith(const Model<float>& model, const Tokenizer& tokenizer, size_t n,
                                      int64_t max_new_tokens) {
  const std::vector<arith::Problem> problems = arith::test_set(n, 0);
  std::vector<std::vector<uint32_t>> prompts;
  for (const arith::Problem& p : problems) {
    std::vector<uint32_t> prompt = {tokenizer.bos_id()};
    const std::vector<uint32_t> text = tokenizer.encode(arith::prompt_text(p), false);
    prompt.insert(prompt.end(), text.begin(), text.end());
    prompts.push_back(std::move(prompt));
  }
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = max_new_tokens;
  Engine engine(model, tokenizer);
  const std::vector<Completion> completions = engine.generate(prompts, greedy, 0);
  std::vector<ArithSample> samples;
  for (size_t i = 0; i < problems.size(); ++i)
    samples.push_back({problems[i], completions[i].text, arith::check_answer(problems[i], completions[i].text)});
  return samples;
}

}  // namespace ds
