// The rule-based verifiers: answer extraction, normalisation and matching, the R1 format check, rewards.
#include "ds/verify.h"

#include <doctest/doctest.h>

#include "ds/arith.h"

using namespace ds::verify;

namespace {

struct ExtractCase {
  const char* completion;
  std::optional<std::string> answer;
};

struct MatchCase {
  const char* predicted;
  const char* reference;
  bool match;
};

struct FormatCase {
  const char* completion;
  bool ok;
};

}  // namespace

TEST_CASE("extract_answer: boxes, answer tags and reasoning") {
  const std::optional<std::string> none;
  const ExtractCase cases[] = {
      {"\\boxed{5}", "5"},
      {"The answer is \\boxed{12}.", "12"},
      {"first \\boxed{1} then \\boxed{2}", "2"},    // several boxes: the last
      {"\\boxed{}", none},                          // empty box
      {"\\boxed{3} and finally \\boxed{ }", none},  // the last box is empty: no fallback to 3
      {"\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"},    // nested braces
      {"\\boxed{{a}{b}}", "{a}{b}"},
      {"\\boxed{\\{1,2\\}}", "\\{1,2\\}"},  // escaped braces do not nest
      {"\\boxed{5", none},                  // never closed
      {"\\boxed{2} \\boxed{3", none},       // the last box is never closed
      {"\\boxed{1}}} \\boxed{4}", "4"},     // stray closing braces between boxes
      {"\\boxed 7", "7"},                   // \boxed X form
      {"so $\\boxed 7$.", "7"},
      {"\\boxed {5}", "5"},
      {"\\boxedx{5}", none},  // another command
      {"ends with \\boxed", none},
      {"<answer>42</answer>", "42"},
      {"<answer> 7 </answer>", "7"},
      {"<answer>1</answer> <answer>2</answer>", "2"},  // the last pair
      {"<answer>1</answer> <answer>2", "1"},           // the last complete pair
      {"<answer></answer>", none},
      {"<answer>  </answer> \\boxed{5}", none},             // a pair decides even when empty
      {"<answer>The answer is \\boxed{9}.</answer>", "9"},  // a box inside the answer
      {"<think> <answer>5</answer> </think>", none},        // only inside the reasoning
      {"<think> \\boxed{5} </think> I am not sure.", none},
      {"<think> 3+4=7 </think> <answer> 7 </answer>", "7"},
      {"<think> maybe \\boxed{6} </think> \\boxed{7}", "7"},
      {"<think>a</think><answer>5</answer><think>b</think>", "5"},
      {"<think> cut off \\boxed{4}", none},                       // reasoning never closed
      {"reasoning \\boxed{1} </think> <answer>8</answer>", "8"},  // the R1 template opened <think> in the prompt
      {"<answer>3</answer> then </think> nothing", none},         // all before a bare </think> is reasoning
      {"no answer here", none},
      {"", none},
  };
  for (const ExtractCase& c : cases) {
    CAPTURE(c.completion);
    CHECK(extract_answer(c.completion) == c.answer);
  }
}

TEST_CASE("last_boxed and answer_tag on their own") {
  CHECK(last_boxed("\\boxed{\\boxed{6}}") == "\\boxed{6}");  // top-level boxes only
  CHECK(last_boxed("<think>\\boxed{1}</think>") == "1");     // no reasoning rule here: extract_answer applies it
  CHECK(answer_tag("<answer>\n x \n</answer>") == "x");
  CHECK(answer_tag("<answer>x") == std::nullopt);
  CHECK(outside_think("a<think>b</think>c<think>d") == "ac");
  CHECK(outside_think("a</think>b<think>c</think>d") == "bd");
}

TEST_CASE("answers_match: numbers, fractions, wrappers and text") {
  const MatchCase cases[] = {
      {"1,234", "1234", true},  // thousands separators
      {"1,234,567", "1234567", true},
      {"1,234.5", "1234.50", true},
      {"12,34", "1234", false},  // not groups of three: compared as text
      {"1234,567", "1234567", false},
      {"0.5", "1/2", true},
      {"\\frac{1}{2}", "0.5", true},
      {"\\dfrac{3}{4}", "0.75", true},
      {"\\tfrac{3}{4}", "3/4", true},
      {"2/4", "1/2", true},
      {"1 / 2", "0.5", true},
      {"1/3", "2/6", true},
      {"1/3", "0.333", false},  // a repeating fraction never equals a rounded decimal
      {"1.5", "3/2", true},
      {"0.1", "1/10", true},
      {"-\\frac{1}{2}", "-0.5", true},
      {"\\frac{-1}{2}", "-1/2", true},
      {"-1/-2", "0.5", true},
      {"-3", "\u22123", true},  // U+2212 is a minus
      {"3", "-3", false},
      {"+5", "5", true},
      {"- 5", "-5", true},
      {"--5", "5", false},  // not a number: text
      {"5.0", "5", true},
      {"5.00", "5", true},
      {"5.", "5", true},
      {"-0", "0", true},
      {"-0.0", "0", true},
      {"007", "7", true},
      {".5", "0.5", true},
      {"$5$", "5", true},
      {"$$\\frac{1}{4}$$", "0.25", true},
      {"\\boxed{12}", "12", true},
      {"$\\boxed{12}$", "12", true},
      {"\\text{5}", "5", true},
      {"5 \\text{apples}", "5 apples", true},
      {"50%", "50", true},  // percentages compare as their number
      {"50\\%", "50", true},
      {"50%", "0.5", false},
      {"1e3", "1000", false},  // scientific notation is not read
      {"12", "13", false},
      {"x  +\n1", "x + 1", true},  // whitespace runs are one space
      {"x + 1", "x+1", false},     // but not removed
      {"seven", "Seven", false},   // text is compared exactly
      {"", "", false},             // an empty answer never matches
      {"  ", "", false},
      {"1/0", "2/0", false},  // no value: compared as text
  };
  for (const MatchCase& c : cases) {
    CAPTURE(c.predicted);
    CAPTURE(c.reference);
    CHECK(answers_match(c.predicted, c.reference) == c.match);
    CHECK(answers_match(c.reference, c.predicted) == c.match);  // symmetric
  }
}

TEST_CASE("normalize spells numbers canonically") {
  CHECK(normalize(" 1,234.50 ") == "1234.5");
  CHECK(normalize("\\frac{6}{8}") == "0.75");
  CHECK(normalize("4/6") == "2/3");
  CHECK(normalize("-4/6") == "-2/3");
  CHECK(normalize("0/7") == "0");
  CHECK(normalize("\u2212 0.250") == "-0.25");
  CHECK(normalize("a   b") == "a b");
}

TEST_CASE("normalize peels every wrapper: a normal form normalises to itself") {
  CHECK(normalize("5" + std::string(40, '%')) == "5");
  CHECK(normalize("$\\boxed{$\\boxed{\\boxed{7\\%}}$}$ %") == "7");
  CHECK(normalize("\\text\\text{{12}}") == "12");  // unwrapping joins "\text" and "{": unwrap again
  const std::vector<std::string> answers = {"in>" + std::string(60, '%'), "$x$%$%$%$%$%$%$%$%$%$%$%",
                                            "\\boxed{\\boxed{a}} b%", "\\text\\text\\text{{{x}}} y"};
  for (const std::string& x : answers) CHECK(normalize(normalize(x)) == normalize(x));
}

TEST_CASE("format_ok: the R1 think/answer structure") {
  const FormatCase cases[] = {
      {"<think> a </think> <answer> 5 </answer>", true},
      {" <think>a</think>\n<answer>5</answer>\n", true},
      {"<think></think><answer></answer>", true},                     // structure only
      {"<think>a</think><answer>5</answer> extra", false},            // text after
      {"pre <think>a</think><answer>5</answer>", false},              // text before
      {"<think>a</think> so <answer>5</answer>", false},              // text between
      {"<answer>5</answer><think>a</think>", false},                  // wrong order
      {"<think>a</think><think>b</think><answer>5</answer>", false},  // twice
      {"<think>a</think><answer>5</answer><answer>6</answer>", false},
      {"<think> <answer> </think> </answer>", false},  // interleaved
      {"<think>a", false},
      {"a</think><answer>5</answer>", false},  // the R1 template's completions: check "<think>" + completion
      {"\\boxed{5}", false},
  };
  for (const FormatCase& c : cases) {
    CAPTURE(c.completion);
    CHECK(format_ok(c.completion) == c.ok);
  }
}

TEST_CASE("reward: accuracy and format") {
  const auto check = [](const char* completion, const char* reference, double accuracy, double format) {
    CAPTURE(completion);
    const Reward r = reward(completion, reference);
    CHECK(r.accuracy == accuracy);
    CHECK(r.format == format);
  };
  check("<think> 2+2=4 </think> <answer> 4 </answer>", "4", 1, 1);
  check("<think> 2+2=5 </think> <answer> 5 </answer>", "4", 0, 1);
  check("It is \\boxed{4}.", "4", 1, 0);
  check("<think> \\boxed{4} </think>", "4", 0, 0);
  check("<think> x </think> <answer> \\boxed{\\boxed{1,000}} </answer>", "1000", 1, 1);
}

TEST_CASE("the verifiers agree with arith::check_answer on builtin:arith solutions") {
  for (const ds::arith::Problem& p : ds::arith::test_set(50, 3)) {
    CAPTURE(p.solution);
    const Reward r = reward(" " + p.solution, p.answer);
    CHECK(r.accuracy == 1);
    CHECK(r.format == 1);
    CHECK(ds::arith::check_answer(p, p.solution));
    CHECK(reward(p.solution, p.answer + "1").accuracy == 0);
  }
}

TEST_CASE("very long and hostile inputs stay linear and correct") {
  const size_t n = 1'000'000;
  CHECK(extract_answer("\\boxed" + std::string(n, '{')) == std::nullopt);
  CHECK(extract_answer("\\boxed" + std::string(n, '{') + "7" + std::string(n, '}')) ==
        std::string(n - 1, '{') + "7" + std::string(n - 1, '}'));
  std::string many;
  for (int i = 0; i < 100'000; ++i) many += "\\boxed{1}";
  CHECK(extract_answer(many + "\\boxed{2}") == "2");
  CHECK(extract_answer(std::string(n, '<') + "answer>3</answer>") == "3");
  std::string thinks;
  for (int i = 0; i < 100'000; ++i) thinks += "<think>";
  CHECK(extract_answer(thinks + "\\boxed{1}") == std::nullopt);
  CHECK(!format_ok(thinks + "</think><answer>1</answer>"));
  std::string closes;
  for (int i = 0; i < 100'000; ++i) closes += "</think>";
  CHECK(extract_answer(closes + "\\boxed{1}<think>") == "1");
  std::string texts, minuses;
  for (int i = 0; i < 100'000; ++i) texts += "\\text{1}";
  for (int i = 0; i < 100'000; ++i) minuses += "\u2212";
  CHECK(normalize(texts) == std::string(100'000, '1'));
  CHECK(normalize(minuses) == std::string(100'000, '-'));
  const std::string digits(5000, '7');
  CHECK(answers_match(digits, digits + ".000"));  // exact decimals of any length
  CHECK(!answers_match(digits, digits + "1"));
  CHECK(answers_match(digits + "/" + digits, digits + "/" + digits));  // too long for a value: compared as text
}
