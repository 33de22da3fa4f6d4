#pragma once
// What every ds-* tool shares: the exit-code contract, --version, --threads, and printing errors.
#include <CLI/CLI.hpp>

#include <atomic>
#include <functional>
#include <string>

namespace ds::tool {

// Adds --version (prints "NAME VERSION") to an app.
void add_version_flag(CLI::App& app);

// Parses argv, then runs body. Exit codes: 0 ok, 1 runtime failure (ds::Error, I/O), 2 usage error.
// Errors go to stderr as one line "NAME: message".
int run(CLI::App& app, int argc, char** argv, const std::function<void()>& body);

}  // namespace ds::tool

namespace ds::tool {

// Options every tool that computes shares: --threads and --device (cpu only in builds without CUDA).
struct ComputeOptions {
  int threads = 0;
  std::string device = "cpu";
};
void add_compute_options(CLI::App& app, ComputeOptions& options);
// Applies --threads and checks --device; throws CLI::ValidationError for a device this build cannot use.
void apply_compute_options(const ComputeOptions& options);

// SIGINT, SIGTERM and SIGUSR1 set the returned flag instead of killing the process, so long jobs can save and exit
// (and an interactive tool can stop one reply); the caller may reset it.
std::atomic<bool>& install_stop_signals();

}  // namespace ds::tool
