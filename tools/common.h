#pragma once
// What every ds-* tool shares: the exit-code contract, --version, --threads, and printing errors.
#include <CLI/CLI.hpp>

#include <functional>
#include <string>

namespace ds::tool {

// Adds --version (prints "NAME VERSION") to an app.
void add_version_flag(CLI::App& app);

// Parses argv, then runs body. Exit codes: 0 ok, 1 runtime failure (ds::Error, I/O), 2 usage error.
// Errors go to stderr as one line "NAME: message".
int run(CLI::App& app, int argc, char** argv, const std::function<void()>& body);

}  // namespace ds::tool
