#pragma once
// JSONL records: one JSON object per line. Model output can hold invalid UTF-8 (a byte-level model may stop inside a
// character), which JSON cannot carry: such bytes become U+FFFD instead of failing the whole record.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>
#include <string_view>

namespace ds {

// The longest JSONL line a reader accepts, so a file or a pipe without newlines cannot make it parse (or buffer)
// without bound.
inline constexpr size_t kMaxJsonlLineBytes = size_t(16) << 20;

// `text` fit for a one-line message: control characters (tab aside) and bytes that are not UTF-8 become \xNN.
std::string printable(std::string_view text);

// The message of a JSON error, whose excerpt of the input can hold any bytes, made printable.
inline std::string json_error(const nlohmann::json::exception& e) { return printable(e.what()); }

inline std::string to_jsonl(const nlohmann::json& record) {
  return record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace ds
