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

// A failure of the command line rather than of the data: an option out of range, or one that contradicts what a
// resumed run recorded. Tools exit 2 for it, as for any usage error.
struct UsageError : Error {
  using Error::Error;
};

template <typename... Args>
[[noreturn]] void usage_fail(fmt::format_string<Args...> format, Args&&... args) {
  throw UsageError(fmt::format(format, std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace ds
