#pragma once
// Rule-based verifiers (the R1 recipe's rewards): find the answer a completion gives, compare it with a reference
// answer, and check the <think> ... </think> <answer> ... </answer> structure. Shared by ds-eval and ds-grpo.
//
// Answers are looked for only outside the reasoning, so a model cannot score by listing candidates while thinking.
// Every function here runs in time linear in the input (no recursion, no backtracking), whatever the text.
#include <optional>
#include <string>
#include <string_view>

namespace ds::verify {

// The completion without its reasoning: every <think> ... </think> span is removed. An unclosed <think> hides the rest
// (the reasoning was cut off); a </think> with no <think> before it hides everything before it (the R1 template
// opens the think block in the prompt).
std::string outside_think(std::string_view completion);

// The content of the last top-level \boxed{...} (braces nest; \{ and \} are literal braces) or \boxed X (X runs to
// whitespace or $). None when there is no box, or when the last box is empty or never closed: the last box is the
// model's final answer, so an earlier one does not stand in for it.
std::optional<std::string> last_boxed(std::string_view text);

// The content of the last complete <answer> ... </answer> pair, trimmed; none when there is no pair or it is empty.
std::optional<std::string> answer_tag(std::string_view text);

// The answer a completion gives, outside <think>: the last <answer> pair decides when there is one (its last \boxed{}
// when it holds a box, else its whole content); otherwise the last \boxed{}. None when there is no answer or it is
// empty.
std::optional<std::string> extract_answer(std::string_view completion);

// The canonical form answers are compared in. Peeled first: surrounding whitespace and $, a \boxed{} around the whole
// answer, \text{...} wrappers, a trailing % or \% (percentages compare as their number: "50%" matches "50", not
// "0.5"). U+2212 (the typeset minus) reads as '-'. What remains, when it is a number, becomes its exact value:
//   integers and decimals, with an optional sign ('+' or '-') and "1,234,567" thousands separators (groups of three);
//   fractions a/b and \frac{a}{b} (also \dfrac, \tfrac) of such numbers;
// spelled as a decimal when it terminates ("1/2" -> "0.5", "5.0" -> "5", "-0" -> "0"), else as a reduced fraction
// ("2/6" -> "1/3"). Anything else (and numbers past 38 digits in a fraction) keeps its text with whitespace runs made
// one space, compared exactly. Scientific notation is not read.
std::string normalize(std::string_view answer);

// True when both normalise to the same non-empty form.
bool answers_match(std::string_view predicted, std::string_view reference);

// The R1 format: <think> ... </think> then <answer> ... </answer>, each tag exactly once, nothing but whitespace
// outside them. For a prompt that already opened the think block (the R1 template), check "<think>" + completion.
bool format_ok(std::string_view completion);

// The two rule-based rewards of the R1 recipe, each 0 or 1; ds-grpo weights them.
struct Reward {
  double accuracy = 0;
  double format = 0;
};
Reward reward(std::string_view completion, std::string_view reference);

}  // namespace ds::verify
