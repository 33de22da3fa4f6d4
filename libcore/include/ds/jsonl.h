#pragma once
// JSONL records: one JSON object per line. Model output can hold invalid UTF-8 (a byte-level model may stop inside a
// character), which JSON cannot carry: such bytes become U+FFFD instead of failing the whole record.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>

namespace ds {

// The longest JSONL line a reader accepts, so a file or a pipe without newlines cannot make it parse (or buffer)
// without bound.
inline constexpr size_t kMaxJsonlLineBytes = size_t(16) << 20;

inline std::string to_jsonl(const nlohmann::json& record) {
  return record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace ds
