#pragma once
// Regular expressions on PCRE2 (UTF-8, Unicode properties, JIT where available): the tokenizer's pre-tokenizer
// patterns and ds-quantize's --keep patterns.
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ds {

// A compiled pattern. Matching is const and thread-safe. Invalid UTF-8 in a subject is allowed and never matched, so
// such bytes end up in the gaps between matches.
class Regex {
 public:
  // Throws naming `origin` when the pattern does not compile; `literal` matches the pattern's text as it is.
  Regex(const std::string& pattern, bool literal, const std::string& origin);

  // Calls on_match(begin, end) with the byte offsets of each match, in order. Matches are leftmost and
  // non-overlapping; an empty match right where the previous match ended is skipped, as in `tokenizers` (Rust's
  // find_iter).
  void for_each_match(std::string_view subject, const std::function<void(size_t, size_t)>& on_match) const;
  // Whether the pattern matches somewhere in `subject`.
  bool search(std::string_view subject) const;
  // When the pattern matches the whole of `subject`: its capture groups, 0 the whole match, groups that took no part
  // empty.
  std::optional<std::vector<std::string_view>> whole_match(std::string_view subject) const;

 private:
  struct Code;
  std::shared_ptr<const Code> code_;
  std::string origin_;
};

}  // namespace ds
