#include "ds/pretrain.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "ds/checkpoint.h"
#include "ds/data.h"
#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/ops.h"
#include "ds/run.h"
#include "ds/safetensors.h"
#include "step_trainer.h"
#include "training_loop.h"

namespace ds {

namespace {

double load_imbalance(const std::vector<std::vector<int64_t>>& loads) {
  double worst = 0;
  for (const auto& layer : loads) {
    double sum = 0, mx = 0;
    for (int64_t x : layer) sum += double(x), mx = std::max(mx, double(x));
    if (sum > 0) worst = std::max(worst, mx / (sum / double(layer.size())));
  }
  return worst;
}

void add_into(std::vector<std::vector<int64_t>>& total, const std::vector<std::vector<int64_t>>& part) {
  if (total.empty()) {
    total = part;
    return;
  }
  for (size_t l = 0; l < total.size(); ++l)
    for (size_t e = 0; e < total[l].size(); ++e) total[l][e] += part[l][e];
}

// A preset's vocabulary grows to fit the tokenizer (rounded up to a multiple of 128, as DeepSeek's 129,280); a
// config file is taken as written and checked below.
ModelConfig new_model_config(const std::string& name_or_path, const Tokenizer& tokenizer) {
  ModelConfig config = resolve_model_config(name_or_path);
  const auto needed = int64_t(tokenizer.vocab_size());
  if (is_preset(name_or_path) && needed > config.vocab_size) config.vocab_size = (needed + 127) / 128 * 128;
  return config;
}

// One all-reduce per step (sum, over ranks) for what every rank must agree on: the losses (each rank's is the mean
// over its equal share of the tokens, so their mean is the global mean) and the expert loads the router biases follow.
void average_over_ranks(dist::Comm& comm, ForwardStats& s, std::vector<std::vector<int64_t>>& loads) {
  std::vector<double> x = {s.loss, s.main_loss, s.mtp_loss, s.balance_loss};
  for (const auto& layer : loads) x.insert(x.end(), layer.begin(), layer.end());
  comm.all_reduce_host(x);
  const double R = comm.size();
  s.loss = x[0] / R, s.main_loss = x[1] / R, s.mtp_loss = x[2] / R, s.balance_loss = x[3] / R;
  size_t i = 4;
  for (auto& layer : loads)
    for (int64_t& n : layer) n = int64_t(x[i++]);
}

const PretrainOptions& validated(const PretrainOptions& o) {
  if (o.batch <= 0 || o.seq_len <= 0 || o.grad_accum <= 0) fail("batch, seq-len and grad-accum must be positive");
  if (o.steps <= 0) fail("--steps must be positive");
  const int ranks = o.comm ? o.comm->size() : 1;
  if (o.batch % ranks != 0)
    fail("--batch {} is the global batch: it must be a multiple of the {} ranks", o.batch, ranks);
  if (o.device.cuda && o.expert_parallel > 1)
    fail("--device {} splits no experts over ranks: expert parallelism (--ep {}) trains on the CPU", o.device.name(),
         o.expert_parallel);
  return o;
}

class Pretrainer : public TrainingLoop {
 public:
  Pretrainer(const PretrainOptions& o, const PretrainEvents& events);

 private:
  StepOutcome train_step(double lr) override;
  void end_step(bool due, bool last) override;
  void restore(const TrainerState& state) override;
  void restart() override;
  void save_state(nlohmann::json& state) const override;
  double comm_seconds() const override;

  const PretrainOptions& o_;
  const PretrainEvents& events_;
  int64_t local_batch_ = 0;
  std::optional<LoadedModel> loaded_;  // a resumed run's checkpoint
  Tokenizer tokenizer_ = Tokenizer::byte_level();
  ModelConfig config_;
  std::optional<Model<float>> model_;
  std::unique_ptr<dist::Comm> ep_comm_;
  std::optional<TokenSource> data_;
  std::optional<AdamW> optimizer_;
  std::unique_ptr<StepTrainer> trainer_;
  uint64_t tokens_seen_ = 0, interval_tokens_ = 0;
  // The last step's losses, gradient norm and expert loads, for its record.
  ForwardStats stats_;
  double grad_norm_ = 0;
  std::vector<std::vector<int64_t>> loads_;
  std::vector<int32_t> inputs_, targets_;
};

Pretrainer::Pretrainer(const PretrainOptions& o, const PretrainEvents& events)
    : TrainingLoop(validated(o), recorded_options(o), events.info, events.checkpoint), o_(o), events_(events) {
  local_batch_ = o.batch / ranks();
  if (o.resume) {
    loaded_.emplace(load_model_dir(*resumed_from()));
    tokenizer_ = std::move(loaded_->tokenizer);
    config_ = loaded_->config;
    model_.emplace(std::move(loaded_->model));
    check_config(config_);
  } else {
    if (!o.tokenizer.empty()) tokenizer_ = Tokenizer::load(o.tokenizer);
    config_ = new_model_config(o.model_config, tokenizer_);
    model_.emplace(config_);
    model_->init_random(o.seed);
  }
  model_->set_fp8(o.fp8);
  ep_comm_ = dist::expert_parallel_comm(o.comm, o.expert_parallel, config_.n_routed_experts);
  if (ep_comm_) model_->set_expert_parallel(ep_comm_.get());
  if (o.seq_len > config_.max_position_embeddings)
    fail("--seq-len {} exceeds the model's max_position_embeddings {}", o.seq_len, config_.max_position_embeddings);
  if (tokenizer_.vocab_size() > size_t(config_.vocab_size))
    fail("the tokenizer has {} tokens but the model config only {}", tokenizer_.vocab_size(), config_.vocab_size);
  data_.emplace(o.data.empty() ? TokenSource::builtin_arith(tokenizer_, o.seed)
                               : TokenSource::from_shards(o.data, uint32_t(config_.vocab_size)));
  optimizer_.emplace(host_optimizer(o.device, *model_, o.adamw, o.comm, o.bucket_mb));
  load_optimizer(*optimizer_);
  if (o.resume) {
    restore(resumed_state());
    info(fmt::format("resumed {} at step {} ({} tokens seen)", *resumed_from(), step(), tokens_seen_));
  } else {
    const ParamCount pc = count_params(config_);
    info(fmt::format("model {}: {} parameters ({} active per token, {} in MTP), data {}", o.model_config, pc.total,
                     pc.active, pc.mtp, data_->description()));
  }
  if (ranks() > 1)
    info(fmt::format("data parallel over {} ranks ({}), {} sequences each{}", ranks(), o.comm->backend(), local_batch_,
                     ep_comm_ ? fmt::format(", experts split over {} ranks", ep_comm_->size()) : ""));
  trainer_ = make_step_trainer(o.device, *model_, *optimizer_, o.adamw, o.fp8, o.comm);
  if (o.device.cuda) info(fmt::format("training on {}", o.device.name()));
  start(*model_, tokenizer_, config_, *optimizer_, *trainer_, o.steps);
}

TrainingLoop::StepOutcome Pretrainer::train_step(double lr) {
  trainer_->begin_step(o_.grad_accum, true);
  stats_ = {};
  loads_.clear();
  for (int64_t micro = 0; micro < o_.grad_accum; ++micro) {
    data_->next_batch(o_.batch, o_.seq_len, inputs_, targets_);  // the global batch; this rank takes its rows
    const int64_t first = rank() * local_batch_ * o_.seq_len;
    const ForwardStats s =
        trainer_->forward(inputs_.data() + first, targets_.data() + first, local_batch_, o_.seq_len, o_.loss);
    trainer_->backward();
    stats_.loss += s.loss / double(o_.grad_accum);
    stats_.main_loss += s.main_loss / double(o_.grad_accum);
    stats_.mtp_loss += s.mtp_loss / double(o_.grad_accum);
    stats_.balance_loss += s.balance_loss / double(o_.grad_accum);
    add_into(loads_, s.expert_load);
  }
  if (ranks() > 1) average_over_ranks(*o_.comm, stats_, loads_);
  grad_norm_ = trainer_->reduce_grads(o_.clip);
  // The loss and the norm are the same on every rank (all-reduced), so every rank takes the same decision.
  const bool bad = !std::isfinite(stats_.loss) || !std::isfinite(grad_norm_);
  if (!bad) trainer_->step(lr, loads_, o_.bias_gamma);
  const uint64_t step_tokens = uint64_t(o_.batch * o_.seq_len * o_.grad_accum);
  tokens_seen_ += step_tokens, interval_tokens_ += step_tokens;
  return {.trained = true, .bad = bad};
}

void Pretrainer::end_step(bool due, bool) {
  if (!due) return;
  const Interval interval = take_interval();
  StepRecord r;
  r.step = step(), r.loss = stats_.loss, r.main_loss = stats_.main_loss, r.mtp_loss = stats_.mtp_loss;
  r.balance_loss = stats_.balance_loss, r.lr = lr(), r.grad_norm = grad_norm_, r.tokens = tokens_seen_;
  r.tokens_per_s = double(interval_tokens_) / interval.seconds;
  r.load_imbalance = load_imbalance(loads_);
  r.elapsed_s = interval.elapsed_s, r.comm_share = interval.comm_share;
  r.bad_steps = guard().bad_total(), r.reloads = guard().reloads();
  r.skipped = !std::isfinite(stats_.loss) || !std::isfinite(grad_norm_);
  interval_tokens_ = 0;
  nlohmann::json record = {{"loss", r.loss},
                           {"main_loss", r.main_loss},
                           {"grad_norm", r.grad_norm},
                           {"tokens_per_s", r.tokens_per_s},
                           {"tokens", r.tokens}};
  if (config_.num_nextn_predict_layers > 0) record["mtp_loss"] = r.mtp_loss;
  if (o_.loss.balance_alpha > 0) record["balance_loss"] = r.balance_loss;
  if (config_.n_routed_experts > 0) record["load_imbalance"] = r.load_imbalance;
  write_metrics(record, interval);
  if (rank() == 0 && events_.log) events_.log(r);
}

void Pretrainer::restore(const TrainerState& state) {
  tokens_seen_ = uint64_t(state.count("tokens_seen"));
  data_->seek(uint64_t(state.count("data_cursor")));
}

void Pretrainer::restart() {
  tokens_seen_ = 0;
  data_->seek(0);
  model_->init_random(o_.seed);
}

void Pretrainer::save_state(nlohmann::json& state) const {
  state["tokens_seen"] = tokens_seen_;
  state["data_cursor"] = data_->cursor();
}

double Pretrainer::comm_seconds() const {
  return TrainingLoop::comm_seconds() + (ep_comm_ ? ep_comm_->seconds() : 0.0);
}

}  // namespace

RunOptions run_options(PretrainOptions& o) {
  RunOptions r;
  r.add_path("model-config", o.model_config).add_path("tokenizer", o.tokenizer).add_paths("data", o.data);
  r.add("batch", o.batch).add("seq-len", o.seq_len).add("grad-accum", o.grad_accum);
  r.add_training(o.schedule, o.adamw, o.clip, o.seed);
  r.add("mtp-weight", o.loss.mtp_weight).add("balance-alpha", o.loss.balance_alpha).add("bias-gamma", o.bias_gamma);
  return r.add("fp8", o.fp8);
}

void pretrain(const PretrainOptions& options, const std::atomic<bool>& stop, const PretrainEvents& events) {
  Pretrainer(options, events).run(stop);
}

}  // namespace ds
