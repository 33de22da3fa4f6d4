#pragma once
// What a trainer does about steps that fail numerically. A step whose loss or gradient is not finite is skipped (no
// update) and counted; after more than max_bad_steps of them in a row the run either stops with an error, or (reload)
// goes back to its last checkpoint, or to its start when it has none, and trains on with the learning rate
// multiplied by lr_factor, at most max_reloads times. The scale and the reload count are trainer state: a resumed run
// keeps the lowered learning rate. The trainers decide from the all-reduced loss and gradient norm, so every rank of
// a data-parallel run takes the same decision.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace ds {

enum class OnBadSteps { Stop, Reload };

struct BadStepOptions {
  OnBadSteps action = OnBadSteps::Stop;
  double lr_factor = 0.5;   // reload: the learning rate is multiplied by this at every reload
  int64_t max_reloads = 3;  // reload: one more run of bad steps stops the run
};

class BadStepGuard {
 public:
  BadStepGuard(int64_t max_bad_steps, const BadStepOptions& options);
  // Counts one step (bad: its loss or gradient was not finite). Returns true when the trainer must reload now, with
  // lr_scale() and reloads() already updated; throws ds::Error when the run must stop.
  bool count(bool bad);
  double lr_scale() const { return lr_scale_; }  // multiplies the schedule's learning rate
  int64_t reloads() const { return reloads_; }
  int64_t bad_total() const { return bad_total_; }  // bad steps of this invocation
  // trainer_state.json's "lr_scale" and "reloads" (checkpoints written before they existed read as 1 and 0).
  void save(nlohmann::json& state) const;
  void load(const nlohmann::json& state, const std::string& source);  // source names the file in errors

 private:
  int64_t max_bad_steps_;
  BadStepOptions options_;
  int64_t in_a_row_ = 0, bad_total_ = 0, reloads_ = 0;
  double lr_scale_ = 1.0;
};

}  // namespace ds
