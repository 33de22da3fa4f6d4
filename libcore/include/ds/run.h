#pragma once
// What ds-pretrain, ds-grpo and ds-distill share about a run directory (layout in ds/checkpoint.h):
//   - TrainingRun: one process per run (a lock), new-or-resume, and nothing left behind by a run refused at start;
//   - TrainerState: a checkpoint's trainer_state.json, read strictly;
//   - RunOptions: the options that fix a run's trajectory, recorded in its checkpoints, so that a resume takes them
//     from the run and refuses a different value given again.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ds/bad_steps.h"
#include "ds/checkpoint.h"
#include "ds/comm.h"
#include "ds/cuda.h"
#include "ds/optim.h"

namespace ds {

// What every trainer's options hold: ds-pretrain's, ds-grpo's and ds-distill's derive from it.
struct TrainerOptions {
  std::string run_dir;
  bool resume = false;       // continue run_dir from its latest checkpoint
  int64_t steps = 1000;      // total optimizer steps of the run, counted from its start
  int64_t stop_after = 0;    // stop (with a checkpoint) after this many steps of this invocation; 0 = no limit
  ScheduleOptions schedule;  // total is set from the steps
  AdamWOptions adamw;
  double clip = 1.0;  // clip the global gradient norm to this; 0 = off
  uint64_t seed = 1234;
  int64_t save_every = 0;  // 0: only at the end
  int keep = 0;            // checkpoints kept; 0 = all
  int64_t log_every = 10;
  int64_t max_bad_steps = 10;  // consecutive non-finite steps tolerated (each is skipped) before bad_steps acts
  BadStepOptions bad_steps;    // then stop, or reload the last checkpoint at a lower learning rate
  bool fp8 = false;            // FP8 training GEMMs: emulated on the CPU (Model::set_fp8), e4m3 on a GPU
  // Where the model trains. On a CUDA device the parameters and the AdamW moments live there (cuda_model.h) and
  // come back to the host for checkpoints, whose format is the same on either device, so a run resumes on either.
  Device device;
  // Data parallel over comm's ranks (null: one process): the batch is the global one, each rank takes its contiguous
  // share of it, so R ranks follow the one-process run up to float rounding; the AdamW state is sharded (ZeRO-1);
  // rank 0 writes the run directory.
  dist::Comm* comm = nullptr;
  double bucket_mb = 25;  // CPU: gradients reduced in buckets of this many MiB during the backward; 0: after it
};

// A run directory opened for training. Rank 0 takes RUN/.lock (flock, with its pid inside for the message), so a
// second process on the same run fails naming the holder; the lock goes with its process, so a dead one's lock is
// simply taken over. A new run must not hold a checkpoint, a resumed one must. Temporary checkpoint directories of
// killed writers are removed. A new run's directory that this process created is removed again when the run is
// destroyed before started() (its inputs were refused), so that a failed start leaves no empty run behind.
// With comm over several ranks every rank calls it and all fail together.
class TrainingRun {
 public:
  TrainingRun(const std::string& path, bool resume, dist::Comm* comm = nullptr);
  ~TrainingRun();
  TrainingRun(const TrainingRun&) = delete;
  TrainingRun& operator=(const TrainingRun&) = delete;

  const RunDir& dir() const { return dir_; }
  // The checkpoint a resume starts from (absent for a new run).
  const std::optional<std::string>& resumed_from() const { return latest_; }
  // The inputs were accepted: from here on the directory stays, whatever happens.
  void started() { created_.clear(); }

 private:
  void release();

  RunDir dir_;
  std::optional<std::string> latest_;
  std::string
      created_;  // the outermost directory this process created (the run's or its checkpoints/), until started()
  int lock_fd_ = -1;
};

// trainer_state.json of a checkpoint, parsed and checked: "step" a count, "config_hash" text, "options" an object.
// Each trainer reads its own further fields with count() and text(), which name the file and the key when a field
// is missing or has the wrong type or sign.
class TrainerState {
 public:
  explicit TrainerState(const std::string& checkpoint_dir);
  const std::string& path() const { return path_; }
  const nlohmann::json& json() const { return json_; }
  int64_t count(const std::string& key) const;  // a non-negative integer
  std::string text(const std::string& key) const;
  int64_t step() const { return count("step"); }

 private:
  std::string path_;
  nlohmann::json json_;
};

// The options a run keeps for its whole life, bound to the fields of a trainer's options and named as on the command
// line ("seq-len" for --seq-len). They are recorded in every checkpoint (trainer_state.json "options").
class RunOptions {
 public:
  template <typename T>
  RunOptions& add(const std::string& name, T& field) {
    options_.push_back(
        {name, [&field] { return nlohmann::json(field); }, [&field](const nlohmann::json& j) { field = j.get<T>(); }});
    return *this;
  }
  // A file or directory, recorded as an absolute path so that a resume from another directory finds it. A value
  // with no slash that names no file (a preset, builtin:arith, "-") is a name and kept as it is.
  RunOptions& add_path(const std::string& name, std::string& path);
  RunOptions& add_paths(const std::string& name, std::vector<std::string>& paths);
  // What every trainer has: --lr, --min-lr-ratio, --warmup, --schedule, --decay-fraction, --weight-decay, --beta1,
  // --beta2, --clip and --seed.
  RunOptions& add_training(ScheduleOptions& schedule, AdamWOptions& adamw, double& clip, uint64_t& seed);

  nlohmann::json to_json() const;
  // Takes over a resumed run's record: each recorded option not given on the command line takes its recorded value;
  // one given with another value is a UsageError naming it. source names the record in messages.
  void adopt(const nlohmann::json& recorded, const std::function<bool(const std::string& name)>& given,
             const std::string& source);

 private:
  struct Option {
    std::string name;
    std::function<nlohmann::json()> get;
    std::function<void(const nlohmann::json&)> set;
  };
  const Option* find(const std::string& name, const std::string& source) const;
  std::vector<Option> options_;
};

// A resumed run's options (RunOptions::to_json) against its record: a difference, or an option this version does
// not know, is an Error naming it. source names the record.
void check_recorded_options(const nlohmann::json& now, const nlohmann::json& recorded, const std::string& source);

// adopt() of the options recorded in run_dir's latest checkpoint.
void adopt_run_options(RunOptions options, const std::string& run_dir,
                       const std::function<bool(const std::string& name)>& given);

}  // namespace ds
