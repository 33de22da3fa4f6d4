#include "common.h"

#include <fmt/core.h>

#include <csignal>
#include <cstdio>
#include <exception>

#include "ds/error.h"
#include "ds/version.h"

namespace ds::tool {

void add_version_flag(CLI::App& app) {
  app.set_version_flag("--version", fmt::format("{} {}", app.get_name(), kVersion));
}

int run(CLI::App& app, int argc, char** argv, const std::function<void()>& body) {
  // Past a file-size limit, write() should fail with EFBIG (a clear error) instead of killing the process.
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help, --version
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "{}: {}\n", app.get_name(), e.what());
    fmt::print(stderr, "Run with --help for more information.\n");
    return 2;
  }
  try {
    body();
    return 0;
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "{}: {}\n", app.get_name(), e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", app.get_name(), e.what());
    return 1;
  }
}

}  // namespace ds::tool

#include <csignal>

#include "ds/ops.h"

namespace ds::tool {

void add_compute_options(CLI::App& app, ComputeOptions& options) {
  app.add_option("--threads", options.threads, "CPU threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--device", options.device, "cpu or cuda[:N]")->capture_default_str();
}

void apply_compute_options(const ComputeOptions& options) {
  if (options.device != "cpu")
    throw CLI::ValidationError("--device", "'" + options.device + "' is not available: this build runs on the CPU only");
  set_threads(options.threads);
}

namespace {
std::atomic<bool> stop_requested{false};
extern "C" void on_stop_signal(int) { stop_requested.store(true); }
}  // namespace

std::atomic<bool>& install_stop_signals() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGUSR1}) sigaction(sig, &action, nullptr);
  return stop_requested;
}

}  // namespace ds::tool
