#pragma once
// JSONL records: one JSON object per line. Model output can hold invalid UTF-8 (a byte-level model may stop inside a
// character), which JSON cannot carry: such bytes become U+FFFD instead of failing the whole record.
#include <nlohmann/json.hpp>

#include <string>

namespace ds {

inline std::string to_jsonl(const nlohmann::json& record) {
  return record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace ds
