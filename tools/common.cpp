#include "common.h"

#include <fmt/core.h>

#include <csignal>
#include <cstdio>
#include <exception>
#include <map>

#include "ds/chat.h"
#include "ds/error.h"
#include "ds/version.h"

namespace ds::tool {

void add_version_flag(CLI::App& app) {
  app.set_version_flag("--version", fmt::format("{} {}", app.get_name(), kVersion));
}

CLI::Validator chat_format_validator() {
  return CLI::Validator(
      [](std::string& name) -> std::string {
        try {
          parse_chat_format(name);
          return {};
        } catch (const Error& e) {
          return e.what();
        }
      },
      "r1|r1-zero|plain|none");
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
  } catch (const UsageError& e) {
    fmt::print(stderr, "{}: {}\n", app.get_name(), e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", app.get_name(), e.what());
    return 1;
  }
}

}  // namespace ds::tool

#include <csignal>

#include "ds/cuda.h"
#include "ds/ops.h"

namespace ds::tool {

void add_compute_options(CLI::App& app, ComputeOptions& options) {
  app.add_option("--threads", options.threads, "CPU threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--device", options.device, "cpu or cuda[:N]")->capture_default_str();
}

Device apply_compute_options(const ComputeOptions& options, bool cuda_capable) {
  Device device;
  try {
    device = parse_device(options.device);
    if (device.cuda && !kCudaBuild)
      fail("'{}' is not available: this build runs on the CPU only", options.device);
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
      ->check(CLI::PositiveNumber);
  app.add_option("--bucket-mb", options.bucket_mb,
                 "reduce the gradients in buckets of this many MiB while the backward runs (0: all after it)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  if (!expert_parallel) return;
  app.add_option("--ep", options.expert_parallel, "split the routed experts over groups of N ranks (expert parallel)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

std::unique_ptr<ds::dist::Comm> make_comm(const DistOptions& options, const Device& device) {
  ds::dist::CommOptions comm{.backend = options.backend, .timeout_s = options.timeout_s};
  if (device.cuda) {
    if (comm.backend == "auto" && ds::dist::discover_launch().size > 1) comm.backend = "nccl";
    comm.device = device.index;
  } else {
    // The trainers on the CPU keep FP32 master weights, gradients and AdamW state in host memory (DESIGN.md
    // section 2).
    comm.host_buffers = true;
  }
  return ds::dist::make_comm(comm);
}

std::string local_device(const std::string& device) {
  const ds::dist::Launch launch = ds::dist::discover_launch();
  return device == "cuda" && launch.size > 1 ? fmt::format("cuda:{}", launch.local_rank) : device;
}

void add_training_options(CLI::App& app, const TrainingOptions& o, std::string& schedule, const std::string& steps_help,
                          const std::string& seed_help) {
  app.add_option("--steps", o.steps, steps_help)->capture_default_str();
  app.add_option("--stop-after", o.stop_after, "save and stop after this many steps of this invocation (0 = off)");
  app.add_option("--lr", o.schedule.lr, "peak learning rate")->capture_default_str();
  app.add_option("--min-lr-ratio", o.schedule.min_lr_ratio, "final lr as a fraction of --lr")->capture_default_str();
  app.add_option("--warmup", o.schedule.warmup, "linear warmup steps")->capture_default_str();
  app.add_option("--schedule", schedule, "cosine, wsd or constant")->capture_default_str();
  app.add_option("--decay-fraction", o.schedule.decay_fraction, "wsd: share of steps spent decaying")
      ->capture_default_str();
  app.add_option("--weight-decay", o.adamw.weight_decay, "AdamW decoupled weight decay")->capture_default_str();
  app.add_option("--beta1", o.adamw.beta1, "AdamW beta1")->capture_default_str();
  app.add_option("--beta2", o.adamw.beta2, "AdamW beta2")->capture_default_str();
  app.add_option("--clip", o.clip, "clip the global gradient norm to this (0 = off)")->capture_default_str();
  app.add_option("--seed", o.seed, seed_help)->capture_default_str();
  app.add_option("--save-every", o.save_every, "checkpoint every N steps (0 = at the end only)");
  app.add_option("--keep", o.keep, "checkpoints to keep (0 = all)");
  app.add_option("--log-every", o.log_every, "log every N steps")->capture_default_str();
  app.add_option("--max-bad-steps", o.max_bad_steps, "consecutive non-finite steps skipped before failing")
      ->capture_default_str();
}

std::function<bool(const std::string&)> given_options(const CLI::App& app) {
  return [&app](const std::string& name) {
    const CLI::Option* option = app.get_option_no_throw("--" + name);
    return option && option->count() > 0;
  };
}

void add_bad_step_options(CLI::App& app, BadStepOptions& o) {
  const std::map<std::string, OnBadSteps> actions = {{"stop", OnBadSteps::Stop}, {"reload", OnBadSteps::Reload}};
  app.add_option("--on-bad-steps", o.action,
                 "after --max-bad-steps: stop with an error, or reload the last checkpoint at a lower learning rate")
      ->transform(CLI::CheckedTransformer(actions))
      ->default_str("stop");
  app.add_option("--bad-lr-factor", o.lr_factor, "reload: multiply the learning rate by this at each reload")
      ->capture_default_str();
  app.add_option("--max-reloads", o.max_reloads, "reload: stop with an error instead after this many reloads")
      ->capture_default_str();
}

void add_fp8_flag(CLI::App& app, bool& fp8) {
  app.add_flag("--fp8", fp8, "emulate DeepSeek-V3's FP8 training GEMMs (e4m3, 1x128 / 128x128 tiles)");
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
