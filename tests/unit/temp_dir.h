#pragma once
// A fresh directory under the system temp directory for one test, removed with everything in it.
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <iterator>
#include <random>
#include <string>

struct TempDir {
  std::filesystem::path path =
      std::filesystem::temp_directory_path() / fmt::format("ds-unit-{}-{}", ::getpid(), std::random_device{}());
  TempDir() { std::filesystem::create_directories(path); }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  size_t count() const {
    return size_t(std::distance(std::filesystem::directory_iterator(path), std::filesystem::directory_iterator()));
  }
};
