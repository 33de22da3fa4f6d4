#pragma once
// The GRPO training loop (R1-Zero: reinforcement learning from rule-based rewards alone). Each step:
//   1. takes P prompts from the task set (shuffled each epoch by the seed) and samples G completions of each from the
//      current policy with the inference engine; sampler seeds derive from (seed, step), so resume is bit-exact;
//   2. scores them: accuracy + format_weight * format from the verifiers, or the reward command's number;
//   3. computes group advantages; with dynamic sampling, groups whose rewards are all equal are dropped and new
//      prompts sampled in their place, up to max_sampling_rounds rounds;
//   4. runs `iterations` (mu) AdamW updates over the batch against the log-probabilities the policy had when it
//      sampled (taken from the first update's forward, where the policy is still the old one), with the reference
//      model's log-probabilities when beta > 0. Only completion tokens carry loss.
// The run directory is ds-pretrain's: checkpoints (model dir + optimizer.safetensors + trainer_state.json), latest,
// metrics.jsonl.
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ds/bad_steps.h"
#include "ds/comm.h"
#include "ds/cuda.h"
#include "ds/grpo.h"
#include "ds/optim.h"
#include "ds/run.h"
#include "ds/sampler.h"

namespace ds {

// TrainerOptions as GRPO reads them: fp8 covers the updates and the KL reference (a Model then, not the engine) while
// sampling stays f32; the device runs the rollouts, the KL reference and the updates; a reload with no checkpoint yet
// goes back to the base; under comm each rank samples, scores and computes the advantages of its share of the
// prompts, the loss is normalised over the whole batch, and every rank appends its rollouts.
struct GrpoTrainOptions : TrainerOptions {
  GrpoTrainOptions() { steps = 100, log_every = 1; }
  std::string model;                          // the base: a model or run directory (new runs; resume reads the state)
  std::string tasks = "builtin:arith:train";  // JSONL or builtin:* (ds/tasks.h)
  std::string prompt_template = "r1-zero";    // a ds/chat.h format: r1, r1-zero, plain, none
  int64_t group_size = 8;                     // G completions per prompt
  int64_t prompts_per_step = 8;               // P prompts per step
  SamplingOptions sampling;                   // max_new_tokens is also dr_grpo's constant
  grpo::Options loss;
  grpo::Aggregation aggregation = grpo::Aggregation::grpo;
  grpo::ScaleRewards scale_rewards = grpo::ScaleRewards::group;
  int64_t iterations = 1;   // mu
  int64_t micro_batch = 0;  // sequences per forward; 0 = the whole batch at once
  bool dynamic_sampling = false;
  int64_t max_sampling_rounds = 4;
  double format_weight = 0.5;  // reward = accuracy + format_weight * format
  std::string reward_cmd;      // replaces the verifiers when set (ds/reward_cmd.h)
  double reward_timeout = 60;
  std::string rollouts;     // append every rollout as JSONL here ("-" = stdout); "" = nowhere
  double bias_gamma = 0.0;  // aux-loss-free router bias updates; 0 keeps the base's routing bias
};

struct GrpoRecord {
  int64_t step = 0;  // completed steps
  double loss = 0, lr = 0, grad_norm = 0;
  double reward_mean = 0, reward_std = 0, accuracy = 0, format = 0;  // over every completion sampled this step
  double length_mean = 0;
  int64_t length_max = 0;
  double kl = 0, clip_fraction = 0, entropy = 0;  // token means over the updates
  int64_t groups = 0, zero_variance_groups = 0;   // sampled; with dynamic sampling only the others are trained on
  double rollout_tokens_per_s = 0;                // completion tokens generated per second
  double update_tokens_per_s = 0;                 // prompt + completion tokens per second, counted once per update
  double elapsed_s = 0;
  int64_t bad_steps = 0;  // non-finite steps of this invocation
  int64_t reloads = 0;    // returns to the last checkpoint after too many bad steps in a row (ds/bad_steps.h)
  bool skipped = false;   // no update: a non-finite loss or gradient, or nothing left to train on
};

struct GrpoEvents {
  std::function<void(const std::string&)> info;
  std::function<void(const GrpoRecord&)> log;
  std::function<void(const std::string&)> checkpoint;
};

// The options a run keeps for its whole life (ds/run.h), bound to o's fields.
RunOptions run_options(GrpoTrainOptions& o);

// Runs until options.steps, options.stop_after, or stop becomes true (then saves and returns). Throws ds::Error;
// rollouts sampled before a failure are appended to options.rollouts first (unscored ones with "reward": null).
void grpo_train(const GrpoTrainOptions& options, const std::atomic<bool>& stop, const GrpoEvents& events);

class Engine;  // ds/engine.h
// The KL reference's log-probabilities: log p(target) at each completion row of p (p.rows), a log-softmax in double
// of the engine's logits divided by temperature. Model::target_logprobs at those rows (with LossOptions::temperature
// the same) up to float rounding, but with the weights as the engine holds them, so that an FP8 base stays FP8 in
// memory.
std::vector<double> reference_logprobs(Engine& engine, const grpo::Packed& p, double temperature);

}  // namespace ds
