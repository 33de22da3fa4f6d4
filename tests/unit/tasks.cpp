// Task sets: JSONL parsing with its errors, and the builtin:arith sets.
#include "ds/tasks.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "ds/arith.h"
#include "ds/error.h"
#include "ds/jsonl.h"

using namespace ds;

namespace {
// The message parse_tasks throws for `jsonl`, or "" when it parses.
std::string error_of(const std::string& jsonl) {
  try {
    parse_tasks(jsonl, "tasks.jsonl");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("parse_tasks reads ids, prompts and answers under their accepted names") {
  const std::vector<Task> tasks = parse_tasks(
      "{\"id\": \"a\", \"prompt\": \"What is 2 + 2?\", \"answer\": \"4\"}\n"
      "\n"
      "{\"question\": \"q2\", \"answer\": 12}\r\n"
      "{\"id\": 7, \"problem\": \"q3\", \"solution\": \"So it is $\\\\boxed{\\\\frac{1}{2}}$.\"}\n"
      "  \n"
      "{\"prompt\": \"q4\", \"solution\": \"no box here\"}",
      "t.jsonl");
  REQUIRE(tasks.size() == 4);
  CHECK(tasks[0].id == "a");
  CHECK(tasks[0].prompt == "What is 2 + 2?");
  CHECK(tasks[0].answer == "4");
  CHECK(tasks[1].id == "3");  // no id: the line number
  CHECK(tasks[1].prompt == "q2");
  CHECK(tasks[1].answer == "12");
  CHECK(tasks[2].id == "7");
  CHECK(tasks[2].answer == "\\frac{1}{2}");  // a solution's boxed answer
  CHECK(tasks[3].answer == "no box here");
}

TEST_CASE("parse_tasks errors name the line and the problem") {
  CHECK(error_of("{\"prompt\": \"a\", \"answer\": \"1\"}\n{\"prompt\": \"b\", \"answer\": \"2\", \"foo\": 1}") ==
        "tasks.jsonl:2: unknown field 'foo' (expected id, prompt, answer)");
  CHECK(error_of("{\"prompt\": \"a\", \"answer\": \"1\"}\n\n{\"prompt\": \"b\", \"answer\"") ==
        "tasks.jsonl:3: invalid JSON at byte 25");
  CHECK(error_of("[1, 2]") == "tasks.jsonl:1: not a JSON object");
  CHECK(error_of("{\"prompt\": \"  \", \"answer\": \"1\"}") == "tasks.jsonl:1: empty prompt");
  CHECK(error_of("{\"prompt\": \"a\"}") == "tasks.jsonl:1: no 'answer'");
  CHECK(error_of("{\"answer\": \"1\"}") == "tasks.jsonl:1: no 'prompt'");
  CHECK(error_of("{\"prompt\": 5, \"answer\": \"1\"}") == "tasks.jsonl:1: 'prompt' must be a string");
  CHECK(error_of("{\"prompt\": \"a\", \"answer\": [1]}") == "tasks.jsonl:1: 'answer' must be a string or a number");
  CHECK(error_of("{\"prompt\": \"a\", \"question\": \"b\", \"answer\": \"1\"}") ==
        "tasks.jsonl:1: both 'prompt' and 'question' given");
  CHECK(error_of("{\"id\": \"\", \"prompt\": \"a\", \"answer\": \"1\"}") == "tasks.jsonl:1: empty id");
  CHECK(error_of("{\"id\": \"x\", \"prompt\": \"a\", \"answer\": \"1\"}\n{\"id\": \"x\", \"prompt\": \"b\", "
                 "\"answer\": \"2\"}") == "tasks.jsonl:2: id 'x' already used on line 1");
  CHECK(error_of("\n \n") == "tasks.jsonl: no tasks");
  const std::string huge = "{\"prompt\": \"" + std::string(kMaxJsonlLineBytes, 'x') + "\", \"answer\": \"1\"}";
  CHECK(error_of("{\"prompt\": \"a\", \"answer\": \"1\"}\n" + huge) ==
        fmt::format("tasks.jsonl:2: the line is {} bytes, more than the limit of {}", huge.size(), kMaxJsonlLineBytes));
}

TEST_CASE("load_tasks: files and the builtin:arith sets") {
  const std::vector<Task> test = load_tasks("builtin:arith:test");
  CHECK(test.size() == kArithTestTasks);
  const std::vector<arith::Problem> problems = arith::test_set(kArithTestTasks, 0);
  for (size_t i = 0; i < test.size(); ++i) {
    CHECK(test[i].id == problems[i].id);
    CHECK(test[i].prompt == problems[i].prompt);
    CHECK(test[i].answer == problems[i].answer);
  }
  CHECK(load_tasks("builtin:arith")[5].prompt == test[5].prompt);

  const std::vector<Task> train = load_tasks("builtin:arith:train");
  CHECK(train.size() == kArithTrainTasks);
  std::set<std::string> held_out;
  for (const arith::Problem& p : arith::test_set(200, 0)) held_out.insert(p.prompt);
  CHECK(std::none_of(train.begin(), train.end(), [&](const Task& t) { return held_out.count(t.prompt) > 0; }));
  CHECK(train[0].id == "arith-train-000000");

  CHECK_THROWS_WITH_AS(load_tasks("builtin:nope"), doctest::Contains("unknown task set 'builtin:nope'"), Error);
  CHECK_THROWS_WITH_AS(load_tasks("/nonexistent/tasks.jsonl"), doctest::Contains("/nonexistent/tasks.jsonl"), Error);

  const auto path = std::filesystem::temp_directory_path() / fmt::format("ds-unit-tasks-{}.jsonl", ::getpid());
  std::ofstream(path) << "{\"prompt\": \"a\", \"answer\": \"1\"}\n{\"bad\": 1}\n";
  CHECK_THROWS_WITH_AS(load_tasks(path.string()),
                       (path.string() + ":2: unknown field 'bad' (expected id, prompt, answer)").c_str(), Error);
  std::filesystem::remove(path);
}
