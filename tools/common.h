#pragma once
// What every ds-* tool shares: the exit-code contract, --version, --threads, and printing errors.
#include <CLI/CLI.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>

#include "ds/bad_steps.h"
#include "ds/comm.h"
#include "ds/cuda.h"
#include "ds/optim.h"
#include "ds/run.h"

namespace ds::tool {

// Adds --version (prints "NAME VERSION") to an app.
void add_version_flag(CLI::App& app);

// Adds --config FILE (TOML/INI). A key that names no option, or a line that is not text, is a usage error naming
// the file and the line.
void add_config_option(CLI::App& app);

// Parses argv, then runs body. Exit codes: 0 ok, 1 runtime failure (ds::Error, I/O), 2 usage error.
// Errors go to stderr as one line "NAME: message".
int run(CLI::App& app, int argc, char** argv, const std::function<void()>& body);

// The valid values of a numeric option: finite numbers between lo and hi (either end open or closed), or whole
// numbers only. NaN and infinities never pass.
inline constexpr double kInf = std::numeric_limits<double>::infinity();
struct Range {
  double lo = -kInf, hi = kInf;
  bool lo_open = false, hi_open = false;
  bool integer = false;
};
inline constexpr Range kAnyNumber{};
inline constexpr Range kNonNegative{.lo = 0};
inline constexpr Range kPositive{.lo = 0, .lo_open = true};
inline constexpr Range kFraction{.lo = 0, .hi = 1};       // [0, 1]
inline constexpr Range kCount{.lo = 0, .integer = true};  // 0, 1, 2, ...
inline constexpr Range kPositiveCount{.lo = 1, .integer = true};
inline constexpr Range at_least(int64_t n) { return {.lo = double(n), .integer = true}; }
// The sampling settings (ds/sampler.h) the tools offer.
inline constexpr Range kTemperature = kNonNegative;  // 0 = greedy
inline constexpr Range kTopP{.lo = 0, .hi = 1, .lo_open = true};
inline constexpr Range kTopK = kCount;
inline constexpr Range kMinP = kFraction;
inline constexpr Range kRepetitionPenalty = kPositive;
inline constexpr Range kMaxNewTokens = kPositiveCount;

// Empty when `value` is a number in `range`; else why not, e.g. "2 is not in (0, 1]".
std::string check_range(const std::string& value, const Range& range);
// The option check for a range, for CLI::Option::check: a failure reads "--top-p: 2 is not in (0, 1]".
CLI::Validator in(const Range& range);
// The option check for a value that `parse` accepts (it throws ds::Error with the reason otherwise); `names` shows
// the valid values in --help.
CLI::Validator parsed_by(std::function<void(const std::string&)> parse, const std::string& names);

}  // namespace ds::tool

namespace ds::tool {

// Options every tool that computes shares: --threads and --device (cpu only in builds without CUDA).
struct ComputeOptions {
  int threads = 0;
  std::string device = "cpu";
};
void add_compute_options(CLI::App& app, ComputeOptions& options);
// Applies --threads and --device (making a CUDA device current) and returns the device. A device that is malformed,
// absent ("no CUDA device"), not in this build, or a GPU for a tool that is not cuda_capable is a
// CLI::ValidationError.
Device apply_compute_options(const ComputeOptions& options, bool cuda_capable = false);

// Multi-process training (ds/comm.h): --comm BACKEND (nccl offered where the tool trains on GPUs), --comm-timeout
// SECONDS, --bucket-mb MIB, and --ep N where the tool has expert parallelism.
struct DistOptions {
  std::string backend = "auto";
  double timeout_s = 300;
  double bucket_mb = 25;  // gradient reduction buckets (ds::AdamW)
  int expert_parallel = 1;
};
void add_dist_options(CLI::App& app, DistOptions& options, bool expert_parallel, bool nccl);
// The job's Comm from the launcher's environment (single process when there is none). A trainer on a CUDA device
// keeps its gradients there: its Comm is NCCL's on that device (with --comm auto), not MPI's over host memory.
std::unique_ptr<ds::dist::Comm> make_comm(const DistOptions& options, const Device& device = {});
// Under a launch of several ranks, "cuda" (no ordinal) is the GPU of this rank's local rank
// (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID, LOCAL_RANK), so the ranks of a node take one GPU each; any other
// device is kept.
std::string local_device(const std::string& device);

// What every trainer (ds-pretrain, ds-grpo, ds-distill) shares, bound to the fields of its ds::TrainerOptions,
// whose current values are the defaults shown: run length, learning-rate schedule, AdamW, clipping, seed,
// checkpoints and logging, the bad-step options and --fp8. The schedule's name goes to `schedule`, for
// ds::parse_schedule.
void add_training_options(CLI::App& app, TrainerOptions& o, std::string& schedule, const Range& steps_range,
                          const std::string& steps_help, const std::string& seed_help);
// For a resumed run taking its recorded options (ds::adopt_run_options): whether --NAME was given, on the command
// line or in --config.
std::function<bool(const std::string&)> given_options(const CLI::App& app);

// Checks a --template value: one of ds/chat.h's formats.
CLI::Validator chat_format_validator();

// SIGINT, SIGTERM and SIGUSR1 set the returned flag instead of killing the process, so long jobs can save and exit
// (and an interactive tool can stop one reply); the caller may reset it.
std::atomic<bool>& install_stop_signals();

}  // namespace ds::tool
