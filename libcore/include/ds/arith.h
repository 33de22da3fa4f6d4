#pragma once
// builtin:arith, the built-in corpus and task set: seeded arithmetic problems with short worked solutions in the R1
// format, small enough for a few-million-parameter byte-level model to learn on a CPU, and checkable exactly (for
// GRPO rewards and evaluation).
//
// Problems: a + b and a - b (a >= b) with operands of 1..max_digits digits, and a * b with a of 1..min(max_digits, 2)
// digits and b of one digit. The solution works column by column, e.g. for 47 + 38:
//   <think> 7+8=15, write 5 carry 1. 4+3+1=8. So 47+38=85. </think> <answer> 85 </answer>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ds::arith {

struct Problem {
  std::string id;        // "arith-train-000017", "arith-test-000017"
  std::string prompt;    // "What is 47 + 38?"
  std::string answer;    // "85"
  std::string solution;  // the full completion: "<think> ... </think> <answer> 85 </answer>"
};

// Each problem (a, op, b) belongs to exactly one split, by a stable hash: test iff hash % 10 == 0. So training data
// never contains a held-out problem, whatever the seeds.
enum class Split { train, test };

// An endless, deterministic stream of problems of one split; the same seed gives the same stream on every platform.
class Generator {
 public:
  explicit Generator(uint64_t seed, Split split = Split::train, int max_digits = 2);  // max_digits: 1..3
  Problem next();

 private:
  uint64_t state_;
  Split split_;
  int max_digits_;
  uint64_t count_ = 0;
};

// n distinct held-out problems, deterministic for a seed; ids are "arith-test-000000" onwards. Throws ds::Error when
// fewer than n test problems exist at this max_digits.
std::vector<Problem> test_set(size_t n, uint64_t seed, int max_digits = 2);

// Pretraining text of one problem, R1-Zero style with no special tokens: "User: {prompt} Assistant: {solution}".
// The trainer adds BOS/EOS around documents.
std::string document(const Problem& problem);
// "User: {prompt} Assistant:", the prefix of document(); a trained model continues it with " <think>".
std::string prompt_text(const Problem& problem);

// True when the text between the last <answer> and the </answer> after it is the problem's answer as an integer
// (surrounding whitespace allowed).
bool check_answer(const Problem& problem, std::string_view completion);

}  // namespace ds::arith
