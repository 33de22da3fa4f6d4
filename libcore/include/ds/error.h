#pragma once
// One exception type for every failure a user can cause or meet (bad files, bad options, I/O errors).
// Its message is a single line that names the file or option and what is wrong; tools print it and exit 1.
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace ds {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace ds
