#include "ds/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <memory>
#include <optional>
#include <utility>

#include "../io/utf8.h"
#include "ds/error.h"

namespace ds {
namespace {

// Per-thread match state: PCRE2 match data and a JIT stack big enough for long runs of one character class.
struct Matcher {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  Matcher() {
    if (!data || !stack || !context) throw std::bad_alloc();
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~Matcher() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(stack);
    pcre2_match_data_free(data);
  }
  Matcher(const Matcher&) = delete;
  Matcher& operator=(const Matcher&) = delete;
};

Matcher& thread_matcher() {
  thread_local Matcher matcher;
  return matcher;
}

}  // namespace

struct Regex::Code {
  explicit Code(pcre2_code* c) : code(c) {}
  ~Code() { pcre2_code_free(code); }
  Code(const Code&) = delete;
  Code& operator=(const Code&) = delete;
  pcre2_code* code;
};

Regex::Regex(const std::string& pattern, bool literal, const std::string& origin) : origin_(origin) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  const uint32_t options = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error, &offset, nullptr);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    fail("{}: regex {:?} does not compile at offset {}: {}", origin, pattern, offset,
         reinterpret_cast<const char*>(message));
  }
  code_ = std::make_shared<const Code>(code);
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // where JIT is unavailable, pcre2_match interprets
}

namespace {

// pcre2_match into `data`: whether it matched; an error other than no match throws.
bool run_match(const pcre2_code* code, std::string_view subject, size_t start, uint32_t options, pcre2_match_data* data,
               const std::string& origin) {
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), start, options, data,
                             thread_matcher().context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(rc, message, sizeof message);
    fail("{}: regex match failed: {}", origin, reinterpret_cast<const char*>(message));
  }
  return true;
}

// The offsets of the first match of `code` in `subject` at or after `start`, if any.
std::optional<std::pair<size_t, size_t>> first_match(const pcre2_code* code, std::string_view subject, size_t start,
                                                     const std::string& origin) {
  pcre2_match_data* data = thread_matcher().data;
  if (!run_match(code, subject, start, 0, data, origin)) return std::nullopt;
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
  return std::pair<size_t, size_t>(ovector[0], ovector[1]);
}

}  // namespace

void Regex::for_each_match(std::string_view subject, const std::function<void(size_t, size_t)>& on_match) const {
  size_t start = 0, last_end = std::string_view::npos;
  while (start <= subject.size()) {
    const auto match = first_match(code_->code, subject, start, origin_);
    if (!match) return;
    const auto [begin, end] = *match;
    if (begin == end && end == last_end) {  // an empty match touching the last one: try one character further
      if (end == subject.size()) return;
      const auto c = tok::decode_utf8(subject, end);
      start = end + (c ? c->second : 1);
      continue;
    }
    on_match(begin, end);
    last_end = start = end;
  }
}

bool Regex::search(std::string_view subject) const { return first_match(code_->code, subject, 0, origin_).has_value(); }

std::optional<std::vector<std::string_view>> Regex::whole_match(std::string_view subject) const {
  const std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
      pcre2_match_data_create_from_pattern(code_->code, nullptr), pcre2_match_data_free);
  if (!data) throw std::bad_alloc();
  if (!run_match(code_->code, subject, 0, PCRE2_ANCHORED | PCRE2_ENDANCHORED, data.get(), origin_)) return std::nullopt;
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data.get());
  std::vector<std::string_view> groups(pcre2_get_ovector_count(data.get()));
  for (size_t i = 0; i < groups.size(); ++i)
    if (ovector[2 * i] != PCRE2_UNSET) groups[i] = subject.substr(ovector[2 * i], ovector[2 * i + 1] - ovector[2 * i]);
  return groups;
}

}  // namespace ds
