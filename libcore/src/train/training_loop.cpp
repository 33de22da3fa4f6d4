#include "training_loop.h"

#include <fmt/format.h>

#include <algorithm>

#include "ds/checkpoint.h"
#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/ops.h"

namespace ds {

TrainingLoop::TrainingLoop(const TrainerOptions& o, nlohmann::json recorded,
                           std::function<void(const std::string&)> info,
                           std::function<void(const std::string&)> on_checkpoint)
    : o_(o),
      run_(o.run_dir, o.resume, o.comm),
      recorded_(std::move(recorded)),
      info_(std::move(info)),
      on_checkpoint_(std::move(on_checkpoint)),
      guard_(o.max_bad_steps, o.bad_steps) {
  if (o.comm && o.comm->size() > 1) comm_ = o.comm, rank_ = o.comm->rank(), ranks_ = o.comm->size();
  if (!o.resume) return;
  state_.emplace(*run_.resumed_from());
  check_recorded_options(recorded_, state_->json()["options"], state_->path());
  step_ = state_->step();
  guard_.load(state_->json(), state_->path());
}

void TrainingLoop::check_config(const ModelConfig& config) const {
  if (state_ && state_->text("config_hash") != config_hash(config))
    fail("{}: config hash does not match config.json", state_->path());
}

void TrainingLoop::load_optimizer(AdamW& optimizer) const {
  if (!state_) return;
  load_optimizer_state(*run_.resumed_from(), optimizer);
  optimizer.set_steps(state_->count("optimizer_steps"));
}

void TrainingLoop::start(Model<float>& model, const Tokenizer& tokenizer, const ModelConfig& config, AdamW& optimizer,
                         StepTrainer& trainer, int64_t total_steps) {
  model_ = &model, tokenizer_ = &tokenizer, optimizer_ = &optimizer, trainer_ = &trainer;
  config_hash_ = config_hash(config);
  total_steps_ = total_steps;
  run_.started();
}

double TrainingLoop::comm_seconds() const { return comm_ ? comm_->seconds() : 0.0; }

TrainingLoop::Interval TrainingLoop::take_interval() {
  const auto now = std::chrono::steady_clock::now();
  const double seconds = std::chrono::duration<double>(now - interval_start_).count(), comm_now = comm_seconds();
  const Interval interval{.seconds = seconds,
                          .comm_share = (comm_now - interval_comm_) / seconds,
                          .elapsed_s = std::chrono::duration<double>(now - start_).count()};
  interval_start_ = now, interval_comm_ = comm_now;
  return interval;
}

void TrainingLoop::write_metrics(nlohmann::json record, const Interval& interval) const {
  if (rank_ != 0) return;
  record["step"] = step_, record["lr"] = lr_, record["elapsed_s"] = interval.elapsed_s;
  record["bad_steps"] = guard_.bad_total(), record["reloads"] = guard_.reloads();
  if (ranks_ > 1) record["comm_share"] = interval.comm_share;
  run_.dir().append_metrics(record);
}

void TrainingLoop::info(const std::string& line) const {
  if (rank_ == 0 && info_) info_(line);
}

void TrainingLoop::run(const std::atomic<bool>& stop) {
  if (step_ >= total_steps_) {
    info(fmt::format("the run is already at step {} of {}", step_, total_steps_));
    return;
  }
  ScheduleOptions schedule = o_.schedule;
  schedule.total = total_steps_;
  start_ = interval_start_ = std::chrono::steady_clock::now();
  interval_comm_ = comm_seconds();
  int64_t steps_this_run = 0;
  while (step_ < total_steps_) {
    lr_ = learning_rate(schedule, step_) * guard_.lr_scale();
    const StepOutcome outcome = train_step(lr_);
    if (outcome.trained && guard_.count(outcome.bad)) {
      reload();
      continue;
    }
    ++step_, ++steps_this_run;
    double stopping = stop ? 1 : 0;  // any rank asked to stop: all stop at this step
    if (comm_) comm_->all_reduce(&stopping, 1);
    const bool last = step_ == total_steps_ || stopping > 0 || (o_.stop_after > 0 && steps_this_run >= o_.stop_after);
    end_step(step_ % std::max<int64_t>(o_.log_every, 1) == 0 || last, last);
    if (last || (o_.save_every > 0 && step_ % o_.save_every == 0)) save();
    if (last) break;
  }
}

// Back to the latest checkpoint (weights, AdamW state, step, the trainer's position), or to the start of the run.
void TrainingLoop::reload() {
  const std::optional<std::string> dir = run_.dir().latest();
  if (dir) {
    const TrainerState state(*dir);
    step_ = state.step();
    load_weights(*dir, *model_);
    load_optimizer_state(*dir, *optimizer_);
    optimizer_->set_steps(state.count("optimizer_steps"));
    restore(state);
  } else {
    step_ = 0;
    optimizer_->reset();
    restart();
  }
  trainer_->host_loaded();
  info(
      fmt::format("{} steps in a row had a non-finite loss or gradient: back to {} (step {}) with the learning rate "
                  "scaled by {:g} (reload {} of at most {})",
                  o_.max_bad_steps + 1, dir ? *dir : "the start of the run", step_, guard_.lr_scale(), guard_.reloads(),
                  o_.bad_steps.max_reloads));
}

void TrainingLoop::save() {
  const std::string dir = save_trained(*trainer_, o_.comm, run_.dir(), step_, o_.keep, *model_, *tokenizer_,
                                       *optimizer_, [&](const std::string& tmp) {
                                         nlohmann::json state = {{"step", step_},
                                                                 {"optimizer_steps", optimizer_->steps()},
                                                                 {"config_hash", config_hash_},
                                                                 {"options", recorded_},
                                                                 {"threads", get_threads()},
                                                                 {"ranks", ranks_}};
                                         guard_.save(state);
                                         save_state(state);
                                         write_file_atomic(tmp + "/trainer_state.json", state.dump(2) + "\n");
                                       });
  if (rank_ == 0 && on_checkpoint_) on_checkpoint_(dir);
}

}  // namespace ds
