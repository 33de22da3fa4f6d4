#include "ds/arith.h"

#include <doctest/doctest.h>

#include <cstdio>
#include <set>

#include "ds/error.h"

using namespace ds;
using namespace ds::arith;

namespace {

struct Parsed {
  int a = 0;
  char op = 0;
  int b = 0;
};

Parsed parse_prompt(const std::string& prompt) {
  Parsed p;
  char question = 0;
  REQUIRE_MESSAGE(std::sscanf(prompt.c_str(), "What is %d %c %d%c", &p.a, &p.op, &p.b, &question) == 4, prompt);
  REQUIRE(question == '?');
  return p;
}

long evaluate(long a, char op, long b) { return op == '+' ? a + b : op == '-' ? a - b : a * b; }

// Value of an expression of non-negative integers with + - * (the usual precedence), written without spaces.
long evaluate(const std::string& expr) {
  long total = 0, term = 1, number = 0;
  char sign = '+';
  for (size_t i = 0; i <= expr.size(); ++i) {
    const char c = i < expr.size() ? expr[i] : '+';
    if (c >= '0' && c <= '9') {
      number = number * 10 + (c - '0');
      continue;
    }
    term *= number;
    number = 0;
    if (c == '*') continue;
    total += sign == '+' ? term : -term;
    term = 1;
    sign = c;
  }
  return total;
}

// Checks one problem against arithmetic done here, independently of the generator.
void check_problem(const Problem& p, int max_digits) {
  CAPTURE(p.prompt);
  CAPTURE(p.solution);
  const Parsed q = parse_prompt(p.prompt);
  const long c = evaluate(q.a, q.op, q.b);
  CHECK(q.a >= 0);
  CHECK(q.b >= 0);
  CHECK(c >= 0);
  if (q.op == '*') {
    CHECK(q.a < 100);
    CHECK(q.b < 10);
  } else {
    const int limit = max_digits == 1 ? 10 : max_digits == 2 ? 100 : 1000;
    CHECK(q.a < limit);
    CHECK(q.b < limit);
  }
  CHECK(p.answer == std::to_string(c));
  CHECK(check_answer(p, p.solution));

  const std::string tail = " </think> <answer> " + std::to_string(c) + " </answer>";
  REQUIRE(p.solution.size() > tail.size());
  CHECK(p.solution.starts_with("<think> "));
  CHECK(p.solution.ends_with(tail));
  CHECK(p.solution.find(std::to_string(q.a) + q.op + std::to_string(q.b) + "=" + std::to_string(c) + ". </think>") !=
        std::string::npos);

  // Every column states true arithmetic, and the written digits (after the last column's value) spell the answer.
  const size_t begin = std::string_view("<think> ").size(), end = p.solution.find(" So ");
  REQUIRE(end != std::string::npos);
  const std::string columns = p.solution.substr(begin, end - begin);  // "7+8=15, write 5 carry 1. 4+3+1=8."
  std::string written, last_value;
  for (size_t start = 0; start < columns.size();) {
    const size_t stop = columns.find('.', start);
    REQUIRE(stop != std::string::npos);
    const std::string column = columns.substr(start, stop - start);
    CAPTURE(column);
    const size_t eq = column.find('='), write = column.find(", write ");
    REQUIRE(eq != std::string::npos);
    const std::string value = column.substr(eq + 1, write == std::string::npos ? write : write - eq - 1);
    CHECK(evaluate(column.substr(0, eq)) == std::stol(value));
    if (write == std::string::npos) {
      last_value = value;
    } else {
      const std::string digit = column.substr(write + 8, 1);
      CHECK(std::stol(value) % 10 == std::stol(digit));
      written = digit + written;
    }
    start = stop + 2;
  }
  CHECK(std::stol(last_value + written) == c);
}

}  // namespace

TEST_CASE("arith: worked solutions have the documented form") {
  const auto solution = [](const std::string& prompt) {
    for (Split split : {Split::train, Split::test}) {
      Generator generator(3, split);
      for (int i = 0; i < 200'000; ++i) {
        Problem p = generator.next();
        if (p.prompt == prompt) return p.solution;
      }
    }
    return std::string("(not generated)");
  };
  CHECK(solution("What is 47 + 38?") ==
        "<think> 7+8=15, write 5 carry 1. 4+3+1=8. So 47+38=85. </think> <answer> 85 </answer>");
  CHECK(solution("What is 95 + 7?") ==
        "<think> 5+7=12, write 2 carry 1. 9+0+1=10. So 95+7=102. </think> <answer> 102 </answer>");
  CHECK(solution("What is 52 - 38?") ==
        "<think> 12-8=4, write 4 borrow 1. 5-3-1=1. So 52-38=14. </think> <answer> 14 </answer>");
  CHECK(solution("What is 47 * 6?") ==
        "<think> 7*6=42, write 2 carry 4. 4*6+4=28. So 47*6=282. </think> <answer> 282 </answer>");
  CHECK(solution("What is 3 * 4?") == "<think> 3*4=12. So 3*4=12. </think> <answer> 12 </answer>");
}

TEST_CASE("arith: every solution is correct arithmetic, for every op and max_digits") {
  for (int max_digits = 1; max_digits <= 3; ++max_digits) {
    for (Split split : {Split::train, Split::test}) {
      Generator generator(11, split, max_digits);
      std::set<char> ops;
      for (int i = 0; i < 3000; ++i) {
        const Problem p = generator.next();
        check_problem(p, max_digits);
        ops.insert(parse_prompt(p.prompt).op);
      }
      CHECK(ops == std::set<char>{'+', '-', '*'});
    }
  }
}

TEST_CASE("arith: a seed fixes the stream; other seeds give other streams") {
  Generator a(42), b(42), c(43);
  int same_as_other_seed = 0;
  for (int i = 0; i < 1000; ++i) {
    const Problem pa = a.next(), pb = b.next(), pc = c.next();
    CHECK(pa.id == pb.id);
    CHECK(pa.prompt == pb.prompt);
    CHECK(pa.solution == pb.solution);
    same_as_other_seed += pa.prompt == pc.prompt;
  }
  CHECK(same_as_other_seed < 100);
  Generator d(42);
  CHECK(d.next().id == "arith-train-000000");
  CHECK(d.next().id == "arith-train-000001");
  CHECK_THROWS_AS(Generator(1, Split::train, 0), Error);
  CHECK_THROWS_AS(Generator(1, Split::train, 4), Error);
}

TEST_CASE("arith: no held-out problem appears in 100k training samples") {
  std::set<std::string> train, test;
  Generator train_gen(5, Split::train), test_gen(6, Split::test);
  for (int i = 0; i < 100'000; ++i) {
    train.insert(train_gen.next().prompt);
    test.insert(test_gen.next().prompt);
  }
  for (const Problem& p : test_set(1000, 7)) test.insert(p.prompt);
  for (const std::string& prompt : test) CHECK_MESSAGE(!train.count(prompt), prompt);
  // Both sides cover most of their split, and the test split is about a tenth of all problems.
  const double test_share = double(test.size()) / double(test.size() + train.size());
  CHECK(test_share > 0.07);
  CHECK(test_share < 0.13);
}

TEST_CASE("arith: test_set is distinct, deterministic and numbered") {
  const std::vector<Problem> problems = test_set(1000, 1);
  REQUIRE(problems.size() == 1000);
  std::set<std::string> prompts;
  for (const Problem& p : problems) prompts.insert(p.prompt);
  CHECK(prompts.size() == 1000);
  CHECK(problems[0].id == "arith-test-000000");
  CHECK(problems[17].id == "arith-test-000017");
  const std::vector<Problem> again = test_set(1000, 1), other = test_set(1000, 2);
  int same_as_other_seed = 0;
  for (size_t i = 0; i < problems.size(); ++i) {
    CHECK(again[i].prompt == problems[i].prompt);
    same_as_other_seed += other[i].prompt == problems[i].prompt;
  }
  CHECK(same_as_other_seed < 100);
  CHECK(test_set(20, 1, 1).size() == 20);
  CHECK_THROWS_AS(test_set(1000, 1, 1), Error);  // max_digits 1 has only a few dozen test problems
}

TEST_CASE("arith: document and prompt_text") {
  const Problem p = test_set(1, 3)[0];
  CHECK(prompt_text(p) == "User: " + p.prompt + " Assistant:");
  CHECK(document(p) == prompt_text(p) + " " + p.solution);
  CHECK(document(p).starts_with("User: What is "));
  CHECK(document(p).find(" Assistant: <think> ") != std::string::npos);
}

TEST_CASE("arith: check_answer") {
  const Problem p{"arith-test-000000", "What is 47 + 38?", "85", ""};
  CHECK(check_answer(p, "<think> ... </think> <answer> 85 </answer>"));
  CHECK(check_answer(p, "<answer>85</answer>"));
  CHECK(check_answer(p, "<answer>\n\t85 \r\n</answer> trailing text"));
  CHECK(check_answer(p, "<answer> 1 </answer> then <answer> 85 </answer>"));  // the last answer counts
  CHECK_FALSE(check_answer(p, "<answer> 85 </answer> then <answer> 1 </answer>"));
  CHECK_FALSE(check_answer(p, "<answer> 86 </answer>"));
  CHECK_FALSE(check_answer(p, "<answer> -85 </answer>"));
  CHECK_FALSE(check_answer(p, "85"));
  CHECK_FALSE(check_answer(p, ""));
  CHECK_FALSE(check_answer(p, "<answer> 85"));
  CHECK_FALSE(check_answer(p, "85 </answer>"));
  CHECK_FALSE(check_answer(p, "<answer></answer>"));
  CHECK_FALSE(check_answer(p, "<answer> 8 5 </answer>"));
  CHECK_FALSE(check_answer(p, "<answer> 85.0 </answer>"));
  CHECK_FALSE(check_answer(p, "<answer> 85x </answer>"));
  CHECK_FALSE(check_answer(p, "<answer> 99999999999999999999999999 </answer>"));
  const Problem zero{"z", "What is 5 - 5?", "0", ""};
  CHECK(check_answer(zero, "<answer> 0 </answer>"));
  CHECK_FALSE(check_answer(zero, "<answer> </answer>"));
}
