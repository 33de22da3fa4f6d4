// The verifiers on arbitrary completions; the first line is the reference answer. The accuracy reward must be the
// match of the extracted answer, and normalising must be idempotent (a normalised answer is its own canonical form).
#include "ds/verify.h"

#include <fmt/format.h>

#include "ds/error.h"
#include "fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = ds::fuzz::as_text(data, size);
  const size_t newline = std::min(text.find('\n'), text.size());
  const std::string_view reference = text.substr(0, newline), completion = text.substr(std::min(newline + 1, size));
  try {
    const ds::verify::Reward r = ds::verify::reward(completion, reference);
    if (const auto answer = ds::verify::extract_answer(completion)) {
      const std::string key = ds::verify::normalize(*answer);
      if (const std::string again = ds::verify::normalize(key); again != key) {
        fmt::print(stderr, "normalize is not idempotent: {:?} -> {:?} -> {:?}\n", *answer, key, again);
        __builtin_trap();
      }
      if (ds::verify::answers_match(*answer, reference) != (r.accuracy > 0)) __builtin_trap();
    }
    ds::verify::format_ok(completion);
  } catch (const ds::Error&) {
  }
  return 0;
}
