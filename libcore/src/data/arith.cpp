#include "ds/arith.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <optional>
#include <unordered_set>

#include "ds/error.h"

namespace ds::arith {
namespace {

enum class Op { add, sub, mul };
constexpr char kOpChar[] = {'+', '-', '*'};

// splitmix64's finaliser: a fixed 64-bit mix, used for the random stream and for the split hash, so both are the same
// on every platform (std::hash is not).
uint64_t mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Uniform in [lo, hi] from a splitmix64 stream. std::uniform_int_distribution is not used because its output differs
// between standard libraries; the modulo bias here is below 2^-50.
int uniform(uint64_t& state, int lo, int hi) {
  state += 0x9e3779b97f4a7c15ULL;
  return lo + int(mix(state) % uint64_t(hi - lo + 1));
}

bool is_test(int a, Op op, int b) { return mix((uint64_t(a) << 32) | (uint64_t(op) << 16) | uint64_t(b)) % 10 == 0; }

int apply(int a, Op op, int b) { return op == Op::add ? a + b : op == Op::sub ? a - b : a * b; }

int pow10(int k) { return k == 0 ? 1 : 10 * pow10(k - 1); }
int digit(int x, int i) { return x / pow10(i) % 10; }
int num_digits(int x) { return x < 10 ? 1 : 1 + num_digits(x / 10); }

// An operand of 1..max_digits digits; the digit count is drawn first so short numbers are as common as long ones.
int operand(uint64_t& state, int max_digits) {
  const int digits = uniform(state, 1, max_digits);
  return uniform(state, digits == 1 ? 0 : pow10(digits - 1), pow10(digits) - 1);
}

// How many (a, op, b) of the test split the generator can produce at max_digits.
size_t count_test_problems(int max_digits) {
  const int limit = pow10(max_digits), mul_limit = pow10(std::min(max_digits, 2));
  size_t count = 0;
  for (int a = 0; a < limit; ++a) {
    for (int b = 0; b < limit; ++b) {
      count += is_test(a, Op::add, b) + (b <= a && is_test(a, Op::sub, b)) +
               (a < mul_limit && b < 10 && is_test(a, Op::mul, b));
    }
  }
  return count;
}

// The written method, least significant column first. Each column states its value; every column but the last
// writes one digit and passes a carry (or a borrow, spelled by prefixing 1 to the digit) to the next; the last
// column's value is written whole. Multiplication uses the same columns over the digits of a.
std::string worked_steps(int a, Op op, int b) {
  const int columns = op == Op::add ? std::max(num_digits(a), num_digits(b)) : num_digits(a);
  std::string steps;
  int carry = 0;
  for (int i = 0; i < columns; ++i) {
    const int x = digit(a, i), y = op == Op::mul ? b : digit(b, i);
    const int value = apply(x, op, y) + (op == Op::sub ? -carry : carry);
    const bool borrow = value < 0;  // never in the last column, since a >= b
    const int shown = borrow ? value + 10 : value;
    std::string expr = fmt::format("{}{}{}{}", borrow ? "1" : "", x, kOpChar[int(op)], y);
    if (carry) expr += fmt::format("{}{}", op == Op::sub ? '-' : '+', carry);
    if (i + 1 == columns) {
      steps += fmt::format("{}={}. ", expr, shown);
      break;
    }
    carry = op == Op::sub ? int(borrow) : shown / 10;
    steps += fmt::format("{}={}, write {}", expr, shown, shown % 10);
    if (carry) steps += fmt::format(" {} {}", op == Op::sub ? "borrow" : "carry", carry);
    steps += ". ";
  }
  return steps;
}

std::string problem_id(Split split, uint64_t index) {
  return fmt::format("arith-{}-{:06d}", split == Split::test ? "test" : "train", index);
}

Problem make_problem(int a, Op op, int b, std::string id) {
  const int c = apply(a, op, b);
  const char o = kOpChar[int(op)];
  return {std::move(id), fmt::format("What is {} {} {}?", a, o, b), std::to_string(c),
          fmt::format("<think> {}So {}{}{}={}. </think> <answer> {} </answer>", worked_steps(a, op, b), a, o, b, c, c)};
}

// An integer with optional surrounding whitespace and nothing else.
std::optional<int64_t> parse_int(std::string_view text) {
  constexpr std::string_view space = " \t\r\n";
  const size_t first = text.find_first_not_of(space);
  if (first == std::string_view::npos) return std::nullopt;
  text = text.substr(first, text.find_last_not_of(space) + 1 - first);
  int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace

Generator::Generator(uint64_t seed, Split split, int max_digits)
    : state_(seed), split_(split), max_digits_(max_digits) {
  if (max_digits < 1 || max_digits > 3) fail("builtin:arith: max_digits must be 1, 2 or 3, not {}", max_digits);
}

Problem Generator::next() {
  for (;;) {
    const auto op = Op(uniform(state_, 0, 2));
    int a = operand(state_, op == Op::mul ? std::min(max_digits_, 2) : max_digits_);
    int b = op == Op::mul ? uniform(state_, 0, 9) : operand(state_, max_digits_);
    if (op == Op::sub && a < b) std::swap(a, b);  // keep differences non-negative
    if (is_test(a, op, b) != (split_ == Split::test)) continue;
    return make_problem(a, op, b, problem_id(split_, count_++));
  }
}

std::vector<Problem> test_set(size_t n, uint64_t seed, int max_digits) {
  Generator generator(seed, Split::test, max_digits);
  const size_t available = count_test_problems(max_digits);
  if (n > available) {
    fail("builtin:arith: {} test problems asked for, only {} exist at max_digits {}", n, available, max_digits);
  }
  std::vector<Problem> problems;
  std::unordered_set<std::string> seen;
  while (problems.size() < n) {
    Problem problem = generator.next();
    if (!seen.insert(problem.prompt).second) continue;
    problem.id = problem_id(Split::test, problems.size());
    problems.push_back(std::move(problem));
  }
  return problems;
}

std::string prompt_text(const Problem& problem) { return fmt::format("User: {} Assistant:", problem.prompt); }

std::string document(const Problem& problem) { return prompt_text(problem) + " " + problem.solution; }

bool check_answer(const Problem& problem, std::string_view completion) {
  constexpr std::string_view open = "<answer>", close = "</answer>";
  const size_t begin = completion.rfind(open);
  if (begin == std::string_view::npos) return false;
  const size_t end = completion.find(close, begin + open.size());
  if (end == std::string_view::npos) return false;
  const auto given = parse_int(completion.substr(begin + open.size(), end - begin - open.size()));
  return given && given == parse_int(problem.answer);
}

}  // namespace ds::arith
