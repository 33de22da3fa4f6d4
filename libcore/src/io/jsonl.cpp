#include "ds/jsonl.h"

#include <fmt/format.h>

#include "utf8.h"

namespace ds {

std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto c = uint8_t(text[i]);
    const auto code_point = tok::decode_utf8(text, i);
    if (!code_point || (c < 0x20 && c != '\t') || c == 0x7F) {
      out += fmt::format("\\x{:02X}", c);
      ++i;
    } else {
      out.append(text.substr(i, code_point->second));
      i += code_point->second;
    }
  }
  return out;
}

}  // namespace ds
