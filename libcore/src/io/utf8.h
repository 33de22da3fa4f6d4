#pragma once
// Decoding one UTF-8 character, for the few places that step through text by characters.
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

namespace ds::tok {

// The code point starting at s[i] and its length in bytes; nullopt where no valid sequence starts.
inline std::optional<std::pair<uint32_t, size_t>> decode_utf8(std::string_view s, size_t i) {
  const auto lead = uint8_t(s[i]);
  const size_t n = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) return std::nullopt;
  uint32_t c = n == 1 ? lead : lead & (0x7Fu >> n);
  for (size_t k = 1; k < n; ++k) {
    if ((uint8_t(s[i + k]) & 0xC0) != 0x80) return std::nullopt;
    c = (c << 6) | (uint8_t(s[i + k]) & 0x3Fu);
  }
  return std::pair{c, n};
}

}  // namespace ds::tok
