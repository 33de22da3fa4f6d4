#include "common.h"

#include <fmt/core.h>

#include <cstdio>
#include <exception>

#include "ds/error.h"
#include "ds/version.h"

namespace ds::tool {

void add_version_flag(CLI::App& app) {
  app.set_version_flag("--version", fmt::format("{} {}", app.get_name(), kVersion));
}

int run(CLI::App& app, int argc, char** argv, const std::function<void()>& body) {
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
