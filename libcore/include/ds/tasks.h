#pragma once
// Task sets for evaluation and RL: a prompt and the reference answer a verifier checks completions against.
//
// Sources: a JSONL file (man/dskit-formats.5; "-" is stdin), one task per line:
//   {"id": "t1", "prompt": "What is 2 + 2?", "answer": "4"}
// "question" or "problem" may name the prompt and "solution" the answer (a solution holding a \boxed{} answer, as in
// MATH, gives that box's content). "id" is optional (default: the line number); ids and answers may be JSON numbers.
// Unknown fields, empty prompts, missing answers and repeated ids are errors naming the line ("tasks.jsonl:17: ..."),
// since a misspelt field would otherwise silently change what is measured. Blank lines are skipped.
//
// builtin:arith and builtin:arith:test: the first kArithTestTasks held-out arithmetic problems (arith::test_set with
// seed 0, the same set everywhere); builtin:arith:train: kArithTrainTasks problems of the training split.
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace ds {

struct Task {
  std::string id;
  std::string prompt;
  std::string answer;
};

inline constexpr size_t kArithTestTasks = 200;
inline constexpr size_t kArithTrainTasks = 10000;

// A JSONL file or a builtin:* name. Throws ds::Error naming the source (and line) for anything wrong.
std::vector<Task> load_tasks(const std::string& source);
// The tasks of JSONL text; `name` is used in messages.
std::vector<Task> parse_tasks(std::string_view jsonl, const std::string& name);

}  // namespace ds
