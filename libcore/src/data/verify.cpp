#include "ds/verify.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace ds::verify {
namespace {

constexpr std::string_view kThinkOpen = "<think>", kThinkClose = "</think>";
constexpr std::string_view kAnswerOpen = "<answer>", kAnswerClose = "</answer>";
constexpr std::string_view kBoxed = "\\boxed";
constexpr size_t npos = std::string_view::npos;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool all_space(std::string_view s) { return std::all_of(s.begin(), s.end(), is_space); }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

std::optional<std::string> nonempty(std::string_view s) {
  s = trim(s);
  if (s.empty()) return std::nullopt;
  return std::string(s);
}

// The '}' closing the '{' at `open`, skipping backslash-escaped characters; npos when it is never closed.
size_t matching_brace(std::string_view text, size_t open) {
  size_t depth = 0;
  for (size_t i = open; i < text.size(); ++i) {
    if (text[i] == '\\') {
      ++i;
    } else if (text[i] == '{') {
      ++depth;
    } else if (text[i] == '}' && --depth == 0) {
      return i;
    }
  }
  return npos;
}

// One \boxed starting at `pos`: its content and the position after it.
struct Box {
  enum Kind { not_a_box, unclosed, box } kind = not_a_box;
  std::string_view content;
  size_t end = 0;
};

Box parse_box(std::string_view text, size_t pos) {
  const size_t after = pos + kBoxed.size();
  size_t p = after;
  while (p < text.size() && is_space(text[p])) ++p;
  if (p < text.size() && text[p] == '{') {
    const size_t close = matching_brace(text, p);
    if (close == npos) return {Box::unclosed, {}, text.size()};
    return {Box::box, text.substr(p + 1, close - p - 1), close + 1};
  }
  if (p == after && p < text.size()) return {Box::not_a_box, {}, after};  // \boxedfoo: another command
  size_t end = p;
  while (end < text.size() && !is_space(text[end]) && text[end] != '$') ++end;
  return {Box::box, text.substr(p, end - p), end};
}

// The content of the last complete <answer> pair, untrimmed; none when there is no pair.
std::optional<std::string_view> find_answer_tag(std::string_view text) {
  const size_t close = text.rfind(kAnswerClose);
  if (close == npos) return std::nullopt;
  const size_t open = text.rfind(kAnswerOpen, close);
  if (open == npos) return std::nullopt;
  return text.substr(open + kAnswerOpen.size(), close - open - kAnswerOpen.size());
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  for (size_t at = s.find(from); at != npos; at = s.find(from)) {
    out += s.substr(0, at);
    out += to;
    s.remove_prefix(at + from.size());
  }
  return out += s;
}

// \text{X} -> X, in one pass: a brace stack remembers which '{' opened a \text, so its '}' is dropped too.
std::string unwrap_text(std::string_view s) {
  constexpr std::string_view text_open = "\\text{";
  std::string out;
  std::vector<bool> is_text;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s.substr(i).starts_with(text_open)) {
      is_text.push_back(true);
      i += text_open.size() - 1;
    } else if (s[i] == '\\' && i + 1 < s.size()) {
      out += s.substr(i++, 2);
    } else if (s[i] == '{') {
      is_text.push_back(false);
      out += '{';
    } else if (s[i] == '}' && !is_text.empty()) {
      if (!is_text.back()) out += '}';
      is_text.pop_back();
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string collapse_whitespace(std::string_view s) {
  std::string out;
  for (char c : trim(s)) {
    if (!is_space(c))
      out += c;
    else if (out.back() != ' ')
      out += ' ';
  }
  return out;
}

// One pass of peeling wrappers off an answer: whitespace, $, a whole-answer \boxed, a trailing % or \%.
std::string_view peel(std::string_view s) {
  s = trim(s);
  while (!s.empty() && s.front() == '$') s.remove_prefix(1);
  while (!s.empty() && s.back() == '$') s.remove_suffix(1);
  s = trim(s);
  if (s.starts_with(kBoxed)) {
    const Box box = parse_box(s, 0);
    if (box.kind == Box::box && box.end == s.size()) s = box.content;
  }
  if (s.ends_with("\\%"))
    s.remove_suffix(2);
  else if (s.ends_with('%'))
    s.remove_suffix(1);
  return trim(s);
}

// ---- exact numbers ----

// value = (negative ? -1 : 1) * digits * 10^-scale
struct Decimal {
  bool negative = false;
  std::string digits;
  size_t scale = 0;
};

using u128 = unsigned __int128;

std::string to_string(u128 x) {
  std::string s;
  do {
    s += char('0' + int(x % 10));
    x /= 10;
  } while (x != 0);
  return {s.rbegin(), s.rend()};
}

u128 gcd(u128 a, u128 b) {  // std::gcd rejects __int128 in strict C++20
  while (b != 0) a = std::exchange(b, a % b);
  return a;
}

bool checked_mul(u128 a, u128 b, u128& out) {
  if (a != 0 && b > ~u128(0) / a) return false;
  out = a * b;
  return true;
}

bool to_u128(std::string_view digits, u128& out) {
  out = 0;
  for (char c : digits)
    if (!checked_mul(out, 10, out) || (out += u128(c - '0')) < u128(c - '0')) return false;
  return true;
}

bool pow10(size_t e, u128& out) {
  out = 1;
  for (size_t i = 0; i < e; ++i)
    if (!checked_mul(out, 10, out)) return false;
  return true;
}

// "-12.50" -> "-12.5"; "007" -> "7"; "-0.0" -> "0".
std::string canonical(Decimal d) {
  while (d.scale > 0 && d.digits.back() == '0') {
    d.digits.pop_back();
    --d.scale;
  }
  if (d.digits.size() <= d.scale) d.digits.insert(0, d.scale + 1 - d.digits.size(), '0');
  std::string_view whole = std::string_view(d.digits).substr(0, d.digits.size() - d.scale);
  while (whole.size() > 1 && whole.front() == '0') whole.remove_prefix(1);
  std::string out(whole);
  if (d.scale > 0) {
    out += '.';
    out += std::string_view(d.digits).substr(d.digits.size() - d.scale);
  }
  if (d.negative && out != "0") out.insert(0, 1, '-');
  return out;
}

// num / den as a terminating decimal when it is one, else "p/q" reduced; none past 128 bits or for a zero den.
std::optional<std::string> canonical(const Decimal& num, const Decimal& den) {
  u128 a, b, scale_a, scale_b, p, q;
  if (!to_u128(num.digits, a) || !to_u128(den.digits, b) || !pow10(num.scale, scale_a) || !pow10(den.scale, scale_b) ||
      !checked_mul(a, scale_b, p) || !checked_mul(b, scale_a, q) || q == 0)
    return std::nullopt;
  const u128 g = gcd(p, q);
  p /= g;
  q /= g;
  const bool negative = (num.negative != den.negative) && p != 0;
  size_t twos = 0, fives = 0;
  u128 rest = q;
  for (; rest % 2 == 0; rest /= 2) ++twos;
  for (; rest % 5 == 0; rest /= 5) ++fives;
  u128 ten_e, scaled;
  const size_t e = std::max(twos, fives);
  if (rest == 1 && pow10(e, ten_e) && checked_mul(p, ten_e / q, scaled))
    return canonical(Decimal{negative, to_string(scaled), e});
  return fmt::format("{}{}/{}", negative ? "-" : "", to_string(p), to_string(q));
}

// A small cursor over the answer text for the number grammar.
struct Cursor {
  std::string_view s;
  size_t i = 0;

  bool done() const { return i == s.size(); }
  bool eat(std::string_view token) {
    if (!s.substr(i).starts_with(token)) return false;
    i += token.size();
    return true;
  }
  void skip_space() {
    while (i < s.size() && is_space(s[i])) ++i;
  }
  // An optional '+' or '-'; true for '-'.
  bool sign() {
    if (eat("-")) return true;
    eat("+");
    return false;
  }
  // Digits (with "1,234" thousands groups) and an optional fraction part, or ".5"; the sign is the caller's.
  std::optional<Decimal> decimal() {
    Decimal d;
    size_t whole = 0;
    for (; i < s.size() && is_digit(s[i]); ++i, ++whole) d.digits += s[i];
    if (whole >= 1 && whole <= 3) {
      while (i + 3 < s.size() && s[i] == ',' && is_digit(s[i + 1]) && is_digit(s[i + 2]) && is_digit(s[i + 3]) &&
             (i + 4 == s.size() || !is_digit(s[i + 4]))) {
        d.digits += s.substr(i + 1, 3);
        i += 4;
      }
    }
    if (eat(".")) {
      for (; i < s.size() && is_digit(s[i]); ++i, ++d.scale) d.digits += s[i];
    }
    if (d.digits.empty()) return std::nullopt;
    return d;
  }
  std::optional<Decimal> signed_decimal() {
    skip_space();
    const bool negative = sign();
    skip_space();
    auto d = decimal();
    skip_space();
    if (d) d->negative = negative;
    return d;
  }
  // {signed decimal}
  std::optional<Decimal> braced() {
    skip_space();
    if (!eat("{")) return std::nullopt;
    auto d = signed_decimal();
    if (!d || !eat("}")) return std::nullopt;
    return d;
  }
};

// The exact value of a number answer in canonical spelling; none when the text is not a number.
std::optional<std::string> numeric(std::string_view text) {
  Cursor c{text};
  const bool negative = c.sign();
  c.skip_space();
  std::optional<Decimal> num, den;
  if (c.eat("\\frac") || c.eat("\\dfrac") || c.eat("\\tfrac")) {
    num = c.braced();
    den = c.braced();
    if (!num || !den) return std::nullopt;
  } else {
    num = c.decimal();
    if (!num) return std::nullopt;
    c.skip_space();
    if (c.eat("/")) {
      den = c.signed_decimal();
      if (!den) return std::nullopt;
    }
  }
  c.skip_space();
  if (!c.done()) return std::nullopt;
  num->negative = num->negative != negative;
  if (!den) return canonical(*num);
  return canonical(*num, *den);
}

size_t count(std::string_view text, std::string_view tag) {
  size_t n = 0;
  for (size_t at = text.find(tag); at != npos; at = text.find(tag, at + tag.size())) ++n;
  return n;
}

}  // namespace

std::string outside_think(std::string_view completion) {
  // Each search starts where the previous one of its tag ended, so the scan is linear.
  std::string out;
  size_t pos = 0, open = completion.find(kThinkOpen), close = completion.find(kThinkClose);
  for (;;) {
    if (close < open) {  // reasoning opened before this text (in the prompt)
      out.clear();
      pos = close + kThinkClose.size();
      close = completion.find(kThinkClose, pos);
      continue;
    }
    out += completion.substr(pos, open - pos);
    if (open == npos) return out;
    close = completion.find(kThinkClose, open + kThinkOpen.size());
    if (close == npos) return out;  // cut off while reasoning
    pos = close + kThinkClose.size();
    open = completion.find(kThinkOpen, pos);
    close = completion.find(kThinkClose, pos);
  }
}

std::optional<std::string> last_boxed(std::string_view text) {
  std::optional<std::string> answer;
  for (size_t at = text.find(kBoxed); at != npos; at = text.find(kBoxed, at)) {
    const Box box = parse_box(text, at);
    if (box.kind == Box::unclosed) return std::nullopt;
    if (box.kind == Box::box) answer = nonempty(box.content);
    at = box.end;
  }
  return answer;
}

std::optional<std::string> answer_tag(std::string_view text) {
  const auto content = find_answer_tag(text);
  return content ? nonempty(*content) : std::nullopt;
}

std::optional<std::string> extract_answer(std::string_view completion) {
  const std::string visible = outside_think(completion);
  if (const auto content = find_answer_tag(visible)) {
    if (content->find(kBoxed) != npos) return last_boxed(*content);
    return nonempty(*content);
  }
  return last_boxed(visible);
}

std::string normalize(std::string_view answer) {
  // Unwrapping first, to a fixed point: removing a \text{ can join "\text" and "{" or the bytes of a U+2212 around
  // it. Each round that changes anything removes a wrapper, so real answers take one or two.
  std::string text(answer);
  for (std::string next = unwrap_text(text); next != text; next = unwrap_text(text)) text = std::move(next);
  const std::string unwrapped = replace_all(text, "\u2212", "-");
  // Wrappers nest ("$\boxed{50\%}$"): peel them all, so a normalised answer is its own normal form. Each layer
  // shortens the view, and only a \boxed{} layer scans (for its closing brace), so this stays fast on real answers.
  std::string_view view = unwrapped;
  for (std::string_view peeled = peel(view); peeled.size() != view.size(); peeled = peel(view)) view = peeled;
  std::string s = collapse_whitespace(view);
  if (auto number = numeric(s)) return *number;
  return s;
}

bool answers_match(std::string_view predicted, std::string_view reference) {
  const std::string p = normalize(predicted);
  return !p.empty() && p == normalize(reference);
}

bool format_ok(std::string_view completion) {
  for (std::string_view tag : {kThinkOpen, kThinkClose, kAnswerOpen, kAnswerClose})
    if (count(completion, tag) != 1) return false;
  const size_t think = completion.find(kThinkOpen), think_end = completion.find(kThinkClose);
  const size_t answer = completion.find(kAnswerOpen), answer_end = completion.find(kAnswerClose);
  if (!(think < think_end && think_end < answer && answer < answer_end)) return false;
  const size_t gap = think_end + kThinkClose.size(), tail = answer_end + kAnswerClose.size();
  return all_space(completion.substr(0, think)) && all_space(completion.substr(gap, answer - gap)) &&
         all_space(completion.substr(tail));
}

Reward reward(std::string_view completion, std::string_view reference) {
  const auto answer = extract_answer(completion);
  return {answer && answers_match(*answer, reference) ? 1.0 : 0.0, format_ok(completion) ? 1.0 : 0.0};
}

}  // namespace ds::verify
