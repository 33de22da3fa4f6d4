#include "common.h"

#include <fmt/core.h>

#include <charconv>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <exception>
#include <iterator>
#include <sstream>

#include "ds/chat.h"
#include "ds/error.h"
#include "ds/jsonl.h"
#include "ds/version.h"

namespace ds::tool {

void add_version_flag(CLI::App& app) {
  app.set_version_flag("--version", fmt::format("{} {}", app.get_name(), kVersion));
}

namespace {

// CLI11's TOML reader, made strict: it would skip a key that names no option, and read binary garbage as keys.
class StrictConfig : public CLI::ConfigTOML {
 public:
  explicit StrictConfig(const CLI::App& app) : app_(app) {}

  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    const std::string file = app_.get_config_ptr()->as<std::string>();
    const std::string all(std::istreambuf_iterator<char>(input), {});
    std::vector<std::string> keys;  // of each line, to find an item's line
    std::istringstream split(all);
    for (std::string line; std::getline(split, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (printable(line) != line)  // control characters or bytes that are not UTF-8
        throw CLI::ConfigError(fmt::format("--config {}:{}: not a line of text: {}", file, keys.size() + 1,
                                           printable(line.substr(0, 40))));
      std::string key = CLI::detail::trim_copy(line.substr(0, line.find('=')));
      CLI::detail::remove_quotes(key);
      keys.push_back(key);
    }
    std::istringstream text(all);
    std::vector<CLI::ConfigItem> items = CLI::ConfigTOML::from_config(text);
    size_t line = 0;  // items come in the order of their lines
    for (const CLI::ConfigItem& item : items) {
      if (item.name == "++" || item.name == "--") continue;  // the ends of [sections]
      while (line < keys.size() && keys[line] != item.name && keys[line] != item.fullname()) ++line;
      if (!known(item))
        throw CLI::ConfigError(
            fmt::format("--config {}:{}: no option '{}'", file, line + 1, printable(item.fullname())));
    }
    return items;
  }

 private:
  // Whether the key names an option, found as CLI11 looks it up.
  bool known(const CLI::ConfigItem& item) const {
    const CLI::App* app = &app_;
    for (const std::string& parent : item.parents) {
      const auto named = app->get_subcommands([&](const CLI::App* sub) { return sub->check_name(parent); });
      if (named.empty()) return false;
      app = named.front();
    }
    return app->get_option_no_throw("--" + item.name) ||
           (item.name.size() == 1 && app->get_option_no_throw("-" + item.name)) || app->get_option_no_throw(item.name);
  }
  const CLI::App& app_;
};

std::string number_str(double x) { return std::isinf(x) ? (x > 0 ? "inf" : "-inf") : fmt::format("{:g}", x); }

// "(0, 1]", for --help.
std::string interval(const Range& r) {
  return fmt::format("{}{}, {}{}", r.lo_open || std::isinf(r.lo) ? '(' : '[', number_str(r.lo), number_str(r.hi),
                     r.hi_open || std::isinf(r.hi) ? ')' : ']');
}

// "in (0, 1]", "a number >= 0", "an integer >= 1", ...
std::string describe(const Range& r) {
  const std::string kind = r.integer ? "an integer" : "a number";
  if (std::isinf(r.lo) && std::isinf(r.hi)) return kind;
  if (std::isinf(r.hi)) return fmt::format("{} {} {}", kind, r.lo_open ? ">" : ">=", number_str(r.lo));
  if (std::isinf(r.lo)) return fmt::format("{} {} {}", kind, r.hi_open ? "<" : "<=", number_str(r.hi));
  return fmt::format("{}in {}", r.integer ? "an integer " : "", interval(r));
}

}  // namespace

void add_config_option(CLI::App& app) {
  app.set_config("--config", "", "read options from a TOML/INI file");
  app.config_formatter(std::make_shared<StrictConfig>(app));
}

std::string check_range(const std::string& value, const Range& range) {
  const auto whole = [&](auto& number) {
    const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), number);
    return ec == std::errc() && ptr == value.data() + value.size();
  };
  double x = 0;
  bool parsed = false;
  if (range.integer) {
    int64_t n = 0;
    uint64_t u = 0;  // seeds go past int64's range
    if (whole(n))
      parsed = true, x = double(n);
    else if (whole(u))
      parsed = true, x = double(u);
  } else {
    parsed = whole(x) && std::isfinite(x);
  }
  const bool inside =
      parsed && (range.lo_open ? x > range.lo : x >= range.lo) && (range.hi_open ? x < range.hi : x <= range.hi);
  return inside ? "" : fmt::format("{} is not {}", printable(value), describe(range));
}

CLI::Validator in(const Range& range) {
  return CLI::Validator([range](std::string& value) { return check_range(value, range); }, interval(range));
}

CLI::Validator parsed_by(std::function<void(const std::string&)> parse, const std::string& names) {
  return CLI::Validator(
      [parse](std::string& value) -> std::string {
        try {
          parse(value);
          return {};
        } catch (const Error& e) {
          return e.what();
        }
      },
      names);
}

CLI::Validator chat_format_validator() {
  return parsed_by([](const std::string& name) { parse_chat_format(name); }, "r1|r1-zero|plain|none");
}

int run(CLI::App& app, int argc, char** argv, const std::function<void()>& body) {
  // Past a file-size limit, write() should fail with EFBIG (a clear error) instead of killing the process.
  std::signal(SIGXFSZ, SIG_IGN);
  // One line, whatever bytes a message quotes from the command line or a file.
  const auto report = [&](const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", app.get_name(), printable(e.what()));
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help, --version
  } catch (const CLI::ParseError& e) {
    report(e);
    return 2;
  }
  try {
    body();
    return 0;
  } catch (const CLI::ParseError& e) {
    report(e);
    return 2;
  } catch (const UsageError& e) {
    report(e);
    return 2;
  } catch (const std::exception& e) {
    report(e);
    return 1;
  }
}

}  // namespace ds::tool

#include <csignal>

#include "ds/cuda.h"
#include "ds/ops.h"

namespace ds::tool {

void add_compute_options(CLI::App& app, ComputeOptions& options) {
  app.add_option("--threads", options.threads, "CPU threads (0 = the cores other programs leave idle)")
      ->check(in(kCount));
  app.add_option("--device", options.device, "cpu or cuda[:N]")->capture_default_str();
}

Device apply_compute_options(const ComputeOptions& options, bool cuda_capable) {
  Device device;
  try {
    device = parse_device(options.device);
    if (device.cuda && !kCudaBuild) fail("'{}' is not available: this build runs on the CPU only", options.device);
#ifdef DS_CUDA
    if (device.cuda) cuda::select_device(device.index);
#endif
    if (device.cuda && !cuda_capable) fail("'{}': this tool runs on the CPU only", device.name());
  } catch (const Error& e) {
    throw CLI::ValidationError("--device", e.what());
  }
  set_threads(options.threads);
  return device;
}

void add_dist_options(CLI::App& app, DistOptions& options, bool expert_parallel, bool nccl) {
  app.add_option("--comm", options.backend,
                 nccl ? "collectives between the ranks of an mpirun or srun launch: auto, single, mpi, nccl "
                        "(with --device cuda, where auto picks it)"
                      : "collectives between the ranks of an mpirun or srun launch: auto, single, mpi")
      ->capture_default_str();
  app.add_option("--comm-timeout", options.timeout_s, "seconds a collective may wait for the other ranks")
      ->capture_default_str()
      ->check(in(kPositive));
  app.add_option("--bucket-mb", options.bucket_mb,
                 "reduce the gradients in buckets of this many MiB while the backward runs (0: all after it)")
      ->capture_default_str()
      ->check(in(kNonNegative));
  if (!expert_parallel) return;
  app.add_option("--ep", options.expert_parallel, "split the routed experts over groups of N ranks (expert parallel)")
      ->capture_default_str()
      ->check(in(kPositiveCount));
}

std::unique_ptr<ds::dist::Comm> make_comm(const DistOptions& options, const Device& device) {
  ds::dist::CommOptions comm{.backend = options.backend, .timeout_s = options.timeout_s};
  if (device.cuda) {
    if (comm.backend == "auto" && ds::dist::discover_launch().size > 1) comm.backend = "nccl";
    comm.device = device.index;
  } else {
    // The trainers on the CPU keep FP32 master weights, gradients and AdamW state in host memory.
    comm.host_buffers = true;
  }
  return ds::dist::make_comm(comm);
}

std::string local_device(const std::string& device) {
  const ds::dist::Launch launch = ds::dist::discover_launch();
  return device == "cuda" && launch.size > 1 ? fmt::format("cuda:{}", launch.local_rank) : device;
}

namespace {
// --on-bad-steps, --bad-lr-factor and --max-reloads: what a trainer does after --max-bad-steps.
void add_bad_step_options(CLI::App& app, BadStepOptions& o) {
  app.add_option("--on-bad-steps", o.action,
                 "after --max-bad-steps: stop with an error, or reload the last checkpoint at a lower learning rate")
      ->transform(CLI::Validator(
          [](std::string& name) -> std::string {
            if (name != "stop" && name != "reload") return fmt::format("'{}' is not one of stop, reload", name);
            name = std::to_string(int(name == "stop" ? OnBadSteps::Stop : OnBadSteps::Reload));
            return {};
          },
          "stop|reload"))
      ->default_str("stop");
  app.add_option("--bad-lr-factor", o.lr_factor, "reload: multiply the learning rate by this at each reload")
      ->capture_default_str()
      ->check(in({.lo = 0, .hi = 1, .lo_open = true}));
  app.add_option("--max-reloads", o.max_reloads, "reload: stop with an error instead after this many reloads")
      ->capture_default_str()
      ->check(in(kCount));
}
}  // namespace

void add_training_options(CLI::App& app, TrainerOptions& o, std::string& schedule, const Range& steps_range,
                          const std::string& steps_help, const std::string& seed_help) {
  app.add_option("--steps", o.steps, steps_help)->capture_default_str()->check(in(steps_range));
  app.add_option("--stop-after", o.stop_after, "save and stop after this many steps of this invocation (0 = off)")
      ->check(in(kCount));
  app.add_option("--lr", o.schedule.lr, "peak learning rate")->capture_default_str()->check(in(kPositive));
  app.add_option("--min-lr-ratio", o.schedule.min_lr_ratio, "final lr as a fraction of --lr")
      ->capture_default_str()
      ->check(in(kFraction));
  app.add_option("--warmup", o.schedule.warmup, "linear warmup steps")->capture_default_str()->check(in(kCount));
  app.add_option("--schedule", schedule, "cosine, wsd or constant")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& name) { parse_schedule(name); }, "cosine|wsd|constant"));
  app.add_option("--decay-fraction", o.schedule.decay_fraction, "wsd: share of steps spent decaying")
      ->capture_default_str()
      ->check(in(kFraction));
  app.add_option("--weight-decay", o.adamw.weight_decay, "AdamW decoupled weight decay")
      ->capture_default_str()
      ->check(in(kNonNegative));
  const Range beta{.lo = 0, .hi = 1, .hi_open = true};
  app.add_option("--beta1", o.adamw.beta1, "AdamW beta1")->capture_default_str()->check(in(beta));
  app.add_option("--beta2", o.adamw.beta2, "AdamW beta2")->capture_default_str()->check(in(beta));
  app.add_option("--clip", o.clip, "clip the global gradient norm to this (0 = off)")
      ->capture_default_str()
      ->check(in(kNonNegative));
  app.add_option("--seed", o.seed, seed_help)->capture_default_str()->check(in(kCount));
  app.add_option("--save-every", o.save_every, "checkpoint every N steps (0 = at the end only)")->check(in(kCount));
  app.add_option("--keep", o.keep, "checkpoints to keep (0 = all)")->check(in(kCount));
  app.add_option("--log-every", o.log_every, "log every N steps")->capture_default_str()->check(in(kPositiveCount));
  app.add_option("--max-bad-steps", o.max_bad_steps, "consecutive non-finite steps skipped before failing")
      ->capture_default_str()
      ->check(in(kCount));
  add_bad_step_options(app, o.bad_steps);
  app.add_flag("--fp8", o.fp8, "emulate DeepSeek-V3's FP8 training GEMMs (e4m3, 1x128 / 128x128 tiles)");
}

std::function<bool(const std::string&)> given_options(const CLI::App& app) {
  return [&app](const std::string& name) {
    const CLI::Option* option = app.get_option_no_throw("--" + name);
    return option && option->count() > 0;
  };
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
