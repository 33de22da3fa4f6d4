#pragma once
// Shared by the fuzz targets: the libFuzzer entry point each defines, and a per-process scratch file for readers
// that take a path. A ds::Error is the expected answer to bad input; anything else (a crash, a sanitizer report,
// another exception) is a finding.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace ds::fuzz {

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Writes the input to a file unique to this process (in TMPDIR, /tmp by default) and returns its path.
inline std::string scratch_file(const uint8_t* data, size_t size, std::string_view suffix) {
  const char* dir = std::getenv("TMPDIR");
  const std::string path =
      std::string(dir && *dir ? dir : "/tmp") + "/ds-fuzz-" + std::to_string(::getpid()) + std::string(suffix);
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), std::streamsize(size));
  return path;
}

}  // namespace ds::fuzz
