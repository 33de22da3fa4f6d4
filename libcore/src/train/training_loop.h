#pragma once
// The life of a training run, the same for ds-pretrain, ds-grpo and ds-distill: the run directory and its lock
// (TrainingRun), the trainer state and the check of the recorded options on resume, the step loop with its learning
// rate schedule, the bad-step guard and its reloads, the all-reduced stop, when to log, save and stop, the time and
// collective share of each logged interval, metrics.jsonl and the checkpoints. A trainer derives from it, sets up its
// model in its constructor in the order the protected calls below are listed, then the caller runs it.
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "ds/bad_steps.h"
#include "ds/config.h"
#include "ds/model.h"
#include "ds/optim.h"
#include "ds/run.h"
#include "ds/tokenizer.h"
#include "step_trainer.h"

namespace ds {

// The trajectory options of o as its checkpoints record them (its trainer's run_options, ds/run.h), for the
// TrainingLoop constructor.
template <typename Options>
nlohmann::json recorded_options(const Options& o) {
  Options copy = o;  // run_options binds the fields of the options it is given
  return run_options(copy).to_json();
}

class TrainingLoop {
 public:
  virtual ~TrainingLoop() = default;
  // Steps until total_steps(), options.stop_after, or stop (on any rank); then saves and returns. Throws ds::Error.
  void run(const std::atomic<bool>& stop);

 protected:
  // What the trainer supplies.
  struct StepOutcome {
    bool trained = true;  // false: there was nothing to train on (neither a good nor a bad step)
    bool bad = false;     // a non-finite loss or gradient: no update was made
  };
  // One optimizer step at learning rate lr: the forward and backward passes, then the update unless the loss or the
  // gradient is not finite (decided from all-reduced values, so every rank decides alike).
  virtual StepOutcome train_step(double lr) = 0;
  // After each counted step: log now when due (step() % log_every == 0 or the last step; a trainer may log more).
  virtual void end_step(bool due, bool last) = 0;
  // The trainer's own position (data cursors, token counts) from a checkpoint's state, or the start of the run when
  // there is none (then also its first weights, which from a checkpoint the loop loads itself).
  virtual void restore(const TrainerState& state) = 0;
  virtual void restart() = 0;
  // Its own fields of trainer_state.json.
  virtual void save_state(nlohmann::json& state) const = 0;
  // Seconds spent in collectives so far: the data-parallel group's, and any other the trainer has.
  virtual double comm_seconds() const;

  // 1. Opens the run (ds/run.h) for options, whose trajectory options as the checkpoints record them are `recorded`;
  //    a resume reads its trainer state, checks the recorded options and takes the step and the bad-step state.
  TrainingLoop(const TrainerOptions& options, nlohmann::json recorded, std::function<void(const std::string&)> info,
               std::function<void(const std::string&)> on_checkpoint);
  // The checkpoint a resume starts from, and its state.
  const std::optional<std::string>& resumed_from() const { return run_.resumed_from(); }
  const TrainerState& resumed_state() const { return *state_; }
  // 2. A resumed run's model config must be the one it was trained with.
  void check_config(const ModelConfig& config) const;
  // 3. A resumed run's AdamW state.
  void load_optimizer(AdamW& optimizer) const;
  // 4. Everything was accepted: the run starts with these (kept by reference) and its directory stays.
  void start(Model<float>& model, const Tokenizer& tokenizer, const ModelConfig& config, AdamW& optimizer,
             StepTrainer& trainer, int64_t total_steps);

  // For the trainer's records: the completed steps, the learning rate of the last step, the bad-step counts, and the
  // interval since the last record (its seconds and the share of them in collectives), which a record restarts.
  struct Interval {
    double seconds = 0, comm_share = 0, elapsed_s = 0;
  };
  int64_t step() const { return step_; }
  int64_t total_steps() const { return total_steps_; }
  double lr() const { return lr_; }
  const BadStepGuard& guard() const { return guard_; }
  Interval take_interval();
  // Appends a record to metrics.jsonl (rank 0), with step, lr, bad_steps, reloads, elapsed_s and, with several ranks,
  // comm_share added.
  void write_metrics(nlohmann::json record, const Interval& interval) const;
  void info(const std::string& line) const;
  const TrainerOptions& options() const { return o_; }
  dist::Comm* comm() const { return comm_; }
  int rank() const { return rank_; }
  int ranks() const { return ranks_; }

 private:
  void reload();
  void save();

  const TrainerOptions& o_;
  TrainingRun run_;
  nlohmann::json recorded_;
  std::function<void(const std::string&)> info_, on_checkpoint_;
  std::optional<TrainerState> state_;
  dist::Comm* comm_ = nullptr;  // several ranks only
  int rank_ = 0, ranks_ = 1;
  BadStepGuard guard_;
  int64_t step_ = 0, total_steps_ = 0;
  double lr_ = 0;
  std::string config_hash_;
  Model<float>* model_ = nullptr;
  const Tokenizer* tokenizer_ = nullptr;
  AdamW* optimizer_ = nullptr;
  StepTrainer* trainer_ = nullptr;
  std::chrono::steady_clock::time_point start_, interval_start_;
  double interval_comm_ = 0;
};

}  // namespace ds
