#include "ds/grpo_train.h"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>

#include "../train/step_trainer.h"
#include "../train/training_loop.h"
#include "ds/chat.h"
#include "ds/checkpoint.h"
#include "ds/engine.h"
#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/inference_model.h"
#include "ds/jsonl.h"
#include "ds/ops.h"
#include "ds/reward_cmd.h"
#include "ds/run.h"
#include "ds/safetensors.h"
#include "ds/tasks.h"
#include "ds/verify.h"

namespace ds {

namespace grpo {  // --loss and --scale-rewards as a run records them
NLOHMANN_JSON_SERIALIZE_ENUM(Aggregation, {{Aggregation::grpo, "grpo"},
                                           {Aggregation::dapo, "dapo"},
                                           {Aggregation::dr_grpo, "dr_grpo"}})
NLOHMANN_JSON_SERIALIZE_ENUM(ScaleRewards, {{ScaleRewards::group, "group"}, {ScaleRewards::none, "none"}})
}  // namespace grpo

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// splitmix64's finaliser: seeds and shuffles that are the same on every platform.
uint64_t mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Tasks in a fresh seeded order each epoch, addressed by a cursor (prompts consumed), which is all resume needs.
class TaskStream {
 public:
  TaskStream(std::vector<Task> tasks, uint64_t seed) : tasks_(std::move(tasks)), seed_(seed) {}
  size_t size() const { return tasks_.size(); }
  const Task& at(uint64_t cursor) {
    const uint64_t epoch = cursor / tasks_.size();
    if (epoch != epoch_) {
      order_.resize(tasks_.size());
      std::iota(order_.begin(), order_.end(), size_t(0));
      uint64_t state = mix(seed_ ^ mix(epoch + 1));
      for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[(state = mix(state + 1)) % i]);
      epoch_ = epoch;
    }
    return tasks_[order_[cursor % tasks_.size()]];
  }

 private:
  std::vector<Task> tasks_;
  uint64_t seed_;
  uint64_t epoch_ = UINT64_MAX;
  std::vector<size_t> order_;
};

struct Rollout {
  const Task* task = nullptr;
  std::vector<uint32_t> prompt;
  Completion completion;
  verify::Reward verified;       // always computed, for the accuracy and format metrics
  std::optional<double> reward;  // what training uses; none until scored
  bool correct = false;
};

// The verifiers' weighted sum, or the reward command's replies (its "correct" when it gives one).
void score(std::vector<Rollout>& rollouts, RewardCommand* command, double format_weight, const ChatTemplate& chat) {
  for (Rollout& r : rollouts) {
    r.verified = verify::reward(std::string(chat.opened_reply()) + r.completion.text, r.task->answer);
    r.correct = r.verified.accuracy > 0;
  }
  if (!command) {
    for (Rollout& r : rollouts) r.reward = r.verified.accuracy + format_weight * r.verified.format;
    return;
  }
  std::vector<RewardSample> samples;
  for (const Rollout& r : rollouts) samples.push_back({r.task->id, r.task->prompt, r.completion.text, r.task->answer});
  const std::vector<RewardReply> replies = command->score(samples);
  for (size_t i = 0; i < rollouts.size(); ++i) {
    rollouts[i].reward = replies[i].reward;
    rollouts[i].correct = replies[i].correct.value_or(rollouts[i].correct);
  }
}

// Appends to a JSONL file ("-" = stdout) in one write per call, so a crash never leaves half a step's records.
void append_rollouts(const std::string& path, const std::vector<Rollout>& rollouts, int64_t step) {
  if (path.empty()) return;
  std::string text;
  for (const Rollout& r : rollouts) {
    const nlohmann::json j = {{"id", r.task->id},
                              {"prompt", r.task->prompt},
                              {"completion", r.completion.text},
                              {"answer", r.task->answer},
                              {"reward", r.reward ? nlohmann::json(*r.reward) : nlohmann::json(nullptr)},
                              {"correct", r.correct},
                              {"tokens", r.completion.tokens.size()},
                              {"step", step}};
    text += to_jsonl(j) + "\n";
  }
  const int fd = path == "-" ? STDOUT_FILENO : open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot open for appending: {}", path, std::strerror(errno));
  for (size_t done = 0; done < text.size();) {
    const ssize_t k = write(fd, text.data() + done, text.size() - done);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) {
      const int err = errno;
      if (fd != STDOUT_FILENO) close(fd);
      fail("{}: write failed: {}", path, std::strerror(err));
    }
    done += size_t(k);
  }
  if (fd != STDOUT_FILENO) close(fd);
}

const GrpoTrainOptions& validated(const GrpoTrainOptions& o) {
  if (o.group_size < 2) fail("--group-size must be at least 2 (advantages compare completions of one prompt)");
  if (o.prompts_per_step < 1 || o.steps < 1 || o.iterations < 1 || o.micro_batch < 0 || o.max_sampling_rounds < 1)
    fail("--prompts-per-step, --steps, --iterations and --max-sampling-rounds must be positive");
  if (o.sampling.max_new_tokens < 1) fail("--max-new-tokens must be positive");
  if (!(o.sampling.temperature > 0))
    fail("--temperature must be positive: greedy completions of one prompt are all the same, and GRPO compares them");
  if (!(o.loss.epsilon > 0 && o.loss.epsilon < 1) || !(o.loss.epsilon_high > 0))
    fail("--epsilon must be in (0, 1) and --epsilon-high positive");
  if (o.loss.beta < 0) fail("--beta must not be negative");
  return o;
}

// A micro-batch: sequences [begin, end) of the batch, packed, and where their completion tokens start in the flat
// per-token arrays.
struct MicroBatch {
  size_t begin = 0, end = 0, first_token = 0;
  grpo::Packed packed;
};

std::vector<double> gather(const std::vector<double>& per_row, const std::vector<int64_t>& rows) {
  std::vector<double> out;
  out.reserve(rows.size());
  for (int64_t row : rows) out.push_back(per_row[size_t(row)]);
  return out;
}

// One step's rollouts, and the sums its metrics need.
struct Sampled {
  std::vector<Rollout> batch;  // the groups trained on
  double reward = 0, reward_sq = 0, accuracy = 0, format = 0;
  int64_t completions = 0, tokens = 0, max_tokens = 0, groups = 0, zero_variance_groups = 0;
  int64_t trained = 0;  // completions trained on by all ranks (batch holds this rank's)
};

// The shape of ForwardStats::expert_load without MTP (RL's forward skips the MTP modules), all zero.
std::vector<std::vector<int64_t>> no_load(const ModelConfig& c) {
  std::vector<std::vector<int64_t>> loads;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (c.is_moe_layer(l)) loads.emplace_back(size_t(c.n_routed_experts), 0);
  return loads;
}

class Trainer : public TrainingLoop {
 public:
  Trainer(const GrpoTrainOptions& o, const GrpoEvents& events);

 private:
  StepOutcome train_step(double lr) override;
  void end_step(bool due, bool last) override;
  void restore(const TrainerState& state) override;
  void restart() override;
  void save_state(nlohmann::json& state) const override;
  Sampled sample();
  bool update(const std::vector<Rollout>& batch, GrpoRecord& r);  // false: a non-finite loss or gradient

  const GrpoTrainOptions& o_;
  const GrpoEvents& events_;
  uint64_t cursor_ = 0;  // tasks consumed
  std::string base_;     // the base model directory: the reference, and the record of where the run started
  std::optional<LoadedModel> policy_;
  // The frozen base, only when the KL term is on: as inference holds it (an FP8 base stays FP8 in memory), scored
  // by an engine; with --fp8 a Scorer in the policy's FP8 training numerics instead (on the policy's device), which
  // the engine does not have, so that either way the KL starts at zero (up to float rounding).
  std::optional<InferenceModel> reference_;
  std::optional<Engine> reference_engine_;
  std::unique_ptr<Scorer> fp8_reference_;
  std::optional<TaskStream> tasks_;
  std::optional<ChatTemplate> chat_;
  std::unique_ptr<RewardCommand> command_;
  std::optional<AdamW> optimizer_;
  std::unique_ptr<StepTrainer> trainer_;  // the updates: on the host policy itself, or on a copy on the device
  std::optional<Engine> engine_;  // samples from the policy: its weights in place, or a GPU copy reloaded each step
  LossOptions no_aux_;            // RL trains the next-token policy only
  GrpoRecord record_;             // of the last step
};

Trainer::Trainer(const GrpoTrainOptions& o, const GrpoEvents& events)
    : TrainingLoop(validated(o), recorded_options(o), events.info, events.checkpoint), o_(o), events_(events) {
  if (!o.resume && o.model.empty()) fail("--model: the base model to start from is required");
  if (o.resume) {
    restore(resumed_state());
    base_ = resumed_state().text("base_model");
  } else {
    base_ = resolve_model_dir(o.model);
  }
  policy_.emplace(load_model_dir(o.resume ? *resumed_from() : base_));
  check_config(policy_->config);
  policy_->model.set_fp8(o.fp8);
  if (o.loss.beta > 0 && o.fp8) {
    fp8_reference_ = make_scorer(o.device, std::move(load_model_dir(base_).model), true);
  } else if (o.loss.beta > 0) {
    reference_.emplace(load_inference_model(base_));
    reference_engine_.emplace(reference_->weights, reference_->tokenizer, o.device);
  }
  tasks_.emplace(load_tasks(o.tasks), o.seed);
  if (tasks_->size() == 0) fail("{}: no tasks", o.tasks);
  chat_.emplace(policy_->tokenizer, parse_chat_format(o.prompt_template));
  if (!o.reward_cmd.empty()) command_ = std::make_unique<RewardCommand>(o.reward_cmd, o.reward_timeout);

  Model<float>& model = policy_->model;
  optimizer_.emplace(host_optimizer(o.device, model, o.adamw, comm(), o.bucket_mb));
  load_optimizer(*optimizer_);
  if (o.resume) {
    info(fmt::format("resumed {} at step {}", *resumed_from(), step()));
  } else {
    info(fmt::format(
        "GRPO from {}: {} prompts x {} completions per step, tasks {} ({}), reward {}", base_, o.prompts_per_step,
        o.group_size, o.tasks, tasks_->size(),
        command_ ? fmt::format("command '{}'", o.reward_cmd) : fmt::format("accuracy + {} * format", o.format_weight)));
  }
  if (reference_ && reference_->weights.fp8())
    info(fmt::format("KL reference {}: FP8 in memory, {:.1f} MB", reference_->dir,
                     double(reference_->weights.bytes()) * 1e-6));
  trainer_ = make_step_trainer(o.device, model, *optimizer_, o.adamw, o.fp8, comm());
  engine_.emplace(model, policy_->tokenizer, o.device);
  no_aux_.mtp_weight = 0, no_aux_.balance_alpha = 0;
  // The ratio and the KL term compare the probabilities of the distribution the completions were sampled from.
  no_aux_.temperature = o.sampling.temperature;
  start(model, policy_->tokenizer, policy_->config, *optimizer_, *trainer_, o.steps);
}

TrainingLoop::StepOutcome Trainer::train_step(double lr) {
  GrpoRecord& r = record_ = {};
  const auto rollout_start = Clock::now();
  const Sampled s = sample();
  const double n = double(s.completions);
  r.reward_mean = s.reward / n;
  r.reward_std = std::sqrt(std::max(0.0, s.reward_sq / n - r.reward_mean * r.reward_mean));
  r.accuracy = s.accuracy / n, r.format = s.format / n;
  r.length_mean = double(s.tokens) / n, r.length_max = s.max_tokens;
  r.groups = s.groups, r.zero_variance_groups = s.zero_variance_groups;
  r.rollout_tokens_per_s = double(s.tokens) / seconds_since(rollout_start);
  r.lr = lr;
  // A step with nothing to train on neither counts as bad nor ends a run of bad ones.
  r.skipped = s.trained == 0;
  if (r.skipped) return {.trained = false};
  return {.trained = true, .bad = !update(s.batch, r)};
}

// G completions of each prompt, scored and appended to the rollouts file; with dynamic sampling, more rounds until
// P groups have rewards that differ.
Sampled Trainer::sample() {
  const size_t G = size_t(o_.group_size);
  const int64_t context = policy_->config.max_position_embeddings;
  Sampled s;
  // This rank's share of the prompts; each round the ranks take consecutive runs of the task stream, in rank order.
  const int64_t share = dist::split_evenly(o_.prompts_per_step, ranks())[size_t(rank())];
  trainer_->sync_params();
  engine_->reload_weights();  // the policy as the last update (or a reload) left it, for every round
  for (int64_t round = 0; round < (o_.dynamic_sampling ? o_.max_sampling_rounds : 1); ++round) {
    const size_t want = size_t(share) - s.batch.size() / G;
    std::vector<int64_t> wants(size_t(ranks()), 0);
    wants[size_t(rank())] = int64_t(want);
    if (comm()) comm()->all_gather(wants.data(), std::vector<int64_t>(size_t(ranks()), 1));
    const int64_t before = std::accumulate(wants.begin(), wants.begin() + rank(), int64_t(0));
    const int64_t all = std::accumulate(wants.begin(), wants.end(), int64_t(0));
    if (all == 0) break;
    uint64_t at = cursor_ + uint64_t(before);
    cursor_ += uint64_t(all);
    if (want == 0) continue;
    std::vector<Rollout> rollouts(want * G);
    std::vector<std::vector<uint32_t>> prompts;
    for (size_t p = 0; p < want; ++p) {
      const Task& task = tasks_->at(at++);
      const std::vector<uint32_t> ids = chat_->encode_prompt(task.prompt);
      if (int64_t(ids.size()) >= context)
        fail("task '{}': the prompt is {} tokens with --template {}, leaving no room in the model's context of {}",
             task.id, ids.size(), o_.prompt_template, context);
      for (size_t g = 0; g < G; ++g) rollouts[p * G + g].task = &task, rollouts[p * G + g].prompt = ids;
      prompts.insert(prompts.end(), G, ids);
    }
    // Completion i of the round samples with seed + i, counted over all ranks, as one process would.
    const uint64_t seed = mix(mix(o_.seed) + uint64_t(step()) * 1024 + uint64_t(round)) + uint64_t(before) * G;
    std::vector<Completion> completions = engine_->generate(prompts, o_.sampling, seed);
    for (size_t i = 0; i < rollouts.size(); ++i) rollouts[i].completion = std::move(completions[i]);
    try {
      score(rollouts, command_.get(), o_.format_weight, *chat_);
    } catch (const Error&) {
      append_rollouts(o_.rollouts, rollouts, step() + 1);  // keep what was sampled, unscored
      throw;
    }
    append_rollouts(o_.rollouts, rollouts, step() + 1);
    for (size_t g = 0; g < rollouts.size(); g += G) {
      std::vector<double> rewards;
      for (size_t i = g; i < g + G; ++i) {
        const Rollout& x = rollouts[i];
        const int64_t tokens = int64_t(x.completion.tokens.size());
        rewards.push_back(*x.reward);
        s.reward += *x.reward, s.reward_sq += *x.reward * *x.reward;
        s.accuracy += x.correct, s.format += x.verified.format;
        s.tokens += tokens, s.max_tokens = std::max(s.max_tokens, tokens);
      }
      const bool flat = grpo::zero_variance_groups(rewards, o_.group_size) > 0;
      s.zero_variance_groups += flat, ++s.groups;
      if (!(o_.dynamic_sampling && flat))
        s.batch.insert(s.batch.end(), std::make_move_iterator(rollouts.begin() + long(g)),
                       std::make_move_iterator(rollouts.begin() + long(g + G)));
    }
    s.completions += int64_t(rollouts.size());
  }
  s.trained = int64_t(s.batch.size());
  if (comm()) {  // the step's metrics cover every rank's rollouts
    std::vector<double> x = {s.reward,
                             s.reward_sq,
                             s.accuracy,
                             s.format,
                             double(s.completions),
                             double(s.tokens),
                             double(s.groups),
                             double(s.zero_variance_groups),
                             double(s.trained)};
    comm()->all_reduce(x.data(), int64_t(x.size()));
    s.reward = x[0], s.reward_sq = x[1], s.accuracy = x[2], s.format = x[3], s.completions = int64_t(x[4]);
    s.tokens = int64_t(x[5]), s.groups = int64_t(x[6]), s.zero_variance_groups = int64_t(x[7]);
    s.trained = int64_t(x[8]);
    std::vector<int64_t> longest(size_t(ranks()), 0);
    longest[size_t(rank())] = s.max_tokens;
    comm()->all_gather(longest.data(), std::vector<int64_t>(size_t(ranks()), 1));
    s.max_tokens = *std::max_element(longest.begin(), longest.end());
  }
  return s;
}

// mu AdamW steps over the batch. The log-probabilities the policy had when it sampled come from the first update's
// forward, where the policy is still that policy.
bool Trainer::update(const std::vector<Rollout>& batch, GrpoRecord& r) {
  const auto start = Clock::now();
  std::vector<double> rewards;
  std::vector<int64_t> lengths;
  for (const Rollout& x : batch) {
    rewards.push_back(*x.reward);
    lengths.push_back(int64_t(x.completion.tokens.size()));
  }
  const std::vector<double> adv = grpo::advantages(rewards, o_.group_size, o_.scale_rewards);
  std::vector<double> all_scales = grpo::token_scales(lengths, o_.aggregation, o_.sampling.max_new_tokens);
  if (comm()) {
    // Normalise over the whole batch, not this rank's part (times the ranks, as reduce_grads averages over them).
    double counts[2] = {double(batch.size()), double(all_scales.size())};
    comm()->all_reduce(counts, 2);
    const double mine = o_.aggregation == grpo::Aggregation::dapo ? double(all_scales.size()) / counts[1]
                                                                  : double(batch.size()) / counts[0];
    for (double& x : all_scales) x *= double(ranks()) * mine;
  }
  // Without a KL term a completion whose advantage is 0 (every completion of a group with equal rewards) has zero
  // loss and gradient at every iteration, so only the others go through the model. The scales above still count
  // every completion, so the update is the one of the whole batch. The first completion always goes through (with
  // zero weight when its advantage is 0), so a diverged policy shows its non-finite loss even when every group is flat.
  std::vector<double> advantage, scale;  // per completion token of the updated completions
  std::vector<grpo::Sequence> sequences;
  int64_t batch_tokens = 0;
  for (size_t i = 0, first = 0; i < batch.size(); first += size_t(lengths[i]), ++i) {
    if (o_.loss.beta == 0 && adv[i] == 0.0 && i > 0) continue;
    sequences.push_back({batch[i].prompt, batch[i].completion.tokens});
    batch_tokens += int64_t(batch[i].prompt.size()) + lengths[i];
    advantage.insert(advantage.end(), size_t(lengths[i]), adv[i]);
    scale.insert(scale.end(), all_scales.begin() + long(first), all_scales.begin() + long(first) + lengths[i]);
  }

  std::vector<MicroBatch> micro;
  const size_t per = o_.micro_batch > 0 ? size_t(o_.micro_batch) : sequences.size();
  for (size_t b = 0, first = 0; b < sequences.size(); b += per) {
    MicroBatch mb{b, std::min(sequences.size(), b + per), first, {}};
    mb.packed = grpo::pack(std::span(sequences).subspan(b, mb.end - b), int32_t(policy_->tokenizer.pad_id()));
    first += mb.packed.rows.size();
    micro.push_back(std::move(mb));
  }
  std::vector<double> ref_logp, old_logp(scale.size());
  if (o_.loss.beta > 0)
    for (const MicroBatch& mb : micro) {
      const grpo::Packed& p = mb.packed;
      std::vector<double> lp;
      if (fp8_reference_) {
        fp8_reference_->forward(p.inputs.data(), p.targets.data(), p.B, p.Tn, no_aux_);
        lp = gather(fp8_reference_->target_logprobs(), p.rows);
      } else {
        lp = reference_logprobs(*reference_engine_, p, no_aux_.temperature);
      }
      ref_logp.insert(ref_logp.end(), lp.begin(), lp.end());
    }

  grpo::Stats stats;
  double loss_sum = 0, entropy_sum = 0;
  for (int64_t k = 0; k < o_.iterations; ++k) {
    trainer_->begin_step(int64_t(micro.size()), false);  // the weights normalise over the whole batch
    std::vector<std::vector<int64_t>> loads = no_load(policy_->config);
    double loss = 0;
    for (const MicroBatch& mb : micro) {
      const grpo::Packed& p = mb.packed;
      auto slice = [&](const std::vector<double>& v) {
        return v.empty() ? std::span<const double>() : std::span(v).subspan(mb.first_token, p.rows.size());
      };
      // Model::forward takes the weights, which depend on logp through the ratio and the KL term. In the first
      // update without KL they do not (rho = 1, so w_t = s_t A_t) and one forward does; otherwise a first forward
      // measures logp and a second carries the weights.
      std::vector<float> weights(p.inputs.size(), 0.0f);
      const bool known = k == 0 && o_.loss.beta == 0;
      if (known)
        for (size_t i = 0; i < p.rows.size(); ++i)
          weights[size_t(p.rows[i])] = float(scale[mb.first_token + i] * advantage[mb.first_token + i]);
      auto forward = [&](const float* w) {
        return trainer_->forward(p.inputs.data(), p.targets.data(), p.B, p.Tn, no_aux_, w);
      };
      ForwardStats f = forward(known ? weights.data() : nullptr);
      const std::vector<double> logp = gather(trainer_->target_logprobs(), p.rows);
      if (k == 0) {
        std::copy(logp.begin(), logp.end(), old_logp.begin() + long(mb.first_token));
        for (double h : gather(trainer_->entropies(), p.rows)) entropy_sum += h;
      }
      const grpo::Result res =
          grpo::policy_loss({logp, slice(old_logp), slice(ref_logp), slice(advantage), slice(scale)}, o_.loss);
      if (!known) {
        for (size_t i = 0; i < p.rows.size(); ++i) weights[size_t(p.rows[i])] = float(res.weights[i]);
        f = forward(weights.data());
      }
      trainer_->backward();  // the last one starts the gradients' reduction over the ranks while it goes on
      for (size_t l = 0; l < loads.size(); ++l)
        for (size_t e = 0; e < loads[l].size(); ++e) loads[l][e] += f.expert_load[l][e];
      loss += res.loss;
      stats += res.stats;
    }
    if (comm()) {
      comm()->all_reduce(&loss, 1);
      loss /= double(ranks());
    }
    loss_sum += loss;
    r.grad_norm = trainer_->reduce_grads(o_.clip);
    r.skipped = !std::isfinite(loss) || !std::isfinite(r.grad_norm);
    if (r.skipped) break;
    if (comm() && o_.bias_gamma != 0)
      for (auto& layer : loads) comm()->all_reduce(layer.data(), int64_t(layer.size()));
    trainer_->step(r.lr, loads, o_.bias_gamma);
  }
  double token_count = double(scale.size());
  if (comm()) {
    std::vector<double> x = {
        double(stats.tokens), double(stats.clipped_low), double(stats.clipped_high), stats.kl, entropy_sum,
        token_count,          double(batch_tokens)};
    comm()->all_reduce(x.data(), int64_t(x.size()));
    stats.tokens = int64_t(x[0]), stats.clipped_low = int64_t(x[1]), stats.clipped_high = int64_t(x[2]);
    stats.kl = x[3], entropy_sum = x[4], token_count = x[5], batch_tokens = int64_t(x[6]);
  }
  const double tokens = double(std::max<int64_t>(stats.tokens, 1));
  r.loss = loss_sum / double(o_.iterations);
  r.kl = stats.kl / tokens;
  r.clip_fraction = double(stats.clipped_low + stats.clipped_high) / tokens;
  r.entropy = entropy_sum / std::max(token_count, 1.0);
  r.update_tokens_per_s = double(batch_tokens * o_.iterations) / seconds_since(start);
  return !r.skipped;
}

void Trainer::restore(const TrainerState& state) { cursor_ = uint64_t(state.count("task_cursor")); }

// No checkpoint yet: back to the base, whose weights are copied in place, where the engine reads them.
void Trainer::restart() {
  cursor_ = 0;
  load_weights(resolve_model_dir(base_), policy_->model);
}

void Trainer::save_state(nlohmann::json& state) const {
  state["task_cursor"] = cursor_;
  state["base_model"] = base_;
}

void Trainer::end_step(bool due, bool) {
  if (!due) return;
  GrpoRecord& r = record_;
  const Interval interval = take_interval();
  r.step = step(), r.bad_steps = guard().bad_total(), r.reloads = guard().reloads(), r.elapsed_s = interval.elapsed_s;
  nlohmann::json record = {{"loss", r.loss},
                           {"grad_norm", r.grad_norm},
                           {"reward_mean", r.reward_mean},
                           {"reward_std", r.reward_std},
                           {"accuracy", r.accuracy},
                           {"format", r.format},
                           {"completion_len_mean", r.length_mean},
                           {"completion_len_max", r.length_max},
                           {"clip_fraction", r.clip_fraction},
                           {"entropy", r.entropy},
                           {"groups", r.groups},
                           {"zero_variance_groups", r.zero_variance_groups},
                           {"rollout_tokens_per_s", r.rollout_tokens_per_s},
                           {"update_tokens_per_s", r.update_tokens_per_s},
                           {"skipped", r.skipped}};
  if (o_.loss.beta > 0) record["kl"] = r.kl;
  write_metrics(record, interval);
  if (rank() == 0 && events_.log) events_.log(r);
}

}  // namespace

RunOptions run_options(GrpoTrainOptions& o) {
  RunOptions r;
  r.add_path("model", o.model).add_path("tasks", o.tasks).add("template", o.prompt_template);
  r.add("group-size", o.group_size).add("prompts-per-step", o.prompts_per_step);
  r.add("max-new-tokens", o.sampling.max_new_tokens).add("temperature", o.sampling.temperature);
  r.add("top-p", o.sampling.top_p).add("top-k", o.sampling.top_k).add("stop", o.sampling.stop);
  r.add("epsilon", o.loss.epsilon).add("epsilon-high", o.loss.epsilon_high).add("beta", o.loss.beta);
  r.add("loss", o.aggregation).add("scale-rewards", o.scale_rewards).add("iterations", o.iterations);
  r.add("micro-batch", o.micro_batch).add("dynamic-sampling", o.dynamic_sampling);
  r.add("max-sampling-rounds", o.max_sampling_rounds).add("format-weight", o.format_weight);
  r.add("reward-cmd", o.reward_cmd).add("bias-gamma", o.bias_gamma).add("fp8", o.fp8);
  return r.add_training(o.schedule, o.adamw, o.clip, o.seed);
}

void grpo_train(const GrpoTrainOptions& options, const std::atomic<bool>& stop, const GrpoEvents& events) {
  Trainer(options, events).run(stop);
}

std::vector<double> reference_logprobs(Engine& engine, const grpo::Packed& p, double temperature) {
  const int64_t V = engine.config().vocab_size;
  const std::vector<float> logits = engine.forward(p.inputs.data(), p.B, p.Tn);
  std::vector<double> out(p.rows.size());
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < p.rows.size(); ++i) {
    const float* z = logits.data() + p.rows[i] * V;
    const double top = double(*std::max_element(z, z + V)) / temperature;
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(z[v]) / temperature - top);
    out[i] = double(z[p.targets[size_t(p.rows[i])]]) / temperature - top - std::log(sum);
  }
  return out;
}

}  // namespace ds
