#include "ds/pretrain.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>

#include "ds/checkpoint.h"
#include "ds/data.h"
#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/ops.h"
#include "ds/run.h"
#include "ds/safetensors.h"
#include "step_trainer.h"

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

double comm_seconds(const dist::Comm* comm, const dist::Comm* ep_comm) {
  return (comm ? comm->seconds() : 0.0) + (ep_comm ? ep_comm->seconds() : 0.0);
}

// One all-reduce per step (sum, over ranks) for what every rank must agree on: the losses (each rank's is the mean
// over its equal share of the tokens, so their mean is the global mean), the expert loads the router biases follow,
// and whether any rank was asked to stop (so all stop at the same step).
void average_over_ranks(dist::Comm& comm, ForwardStats& s, std::vector<std::vector<int64_t>>& loads, bool& stop) {
  std::vector<double> x = {s.loss, s.main_loss, s.mtp_loss, s.balance_loss, stop ? 1.0 : 0.0};
  for (const auto& layer : loads) x.insert(x.end(), layer.begin(), layer.end());
  comm.all_reduce_host(x);
  const double R = comm.size();
  s.loss = x[0] / R, s.main_loss = x[1] / R, s.mtp_loss = x[2] / R, s.balance_loss = x[3] / R, stop = x[4] > 0;
  size_t i = 5;
  for (auto& layer : loads)
    for (int64_t& n : layer) n = int64_t(x[i++]);
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

void pretrain(const PretrainOptions& o, const std::atomic<bool>& stop, const PretrainEvents& events) {
  if (o.batch <= 0 || o.seq_len <= 0 || o.grad_accum <= 0) fail("batch, seq-len and grad-accum must be positive");
  if (o.steps <= 0) fail("--steps must be positive");
  const int ranks = o.comm ? o.comm->size() : 1, rank = o.comm ? o.comm->rank() : 0;
  if (o.batch % ranks != 0)
    fail("--batch {} is the global batch: it must be a multiple of the {} ranks", o.batch, ranks);
  const int64_t local_batch = o.batch / ranks;
  if (o.device.cuda && o.expert_parallel > 1)
    fail("--device {} splits no experts over ranks: expert parallelism (--ep {}) trains on the CPU", o.device.name(),
         o.expert_parallel);
  TrainingRun training_run(o.run_dir, o.resume, o.comm);
  const RunDir& run = training_run.dir();
  const std::optional<std::string>& latest = training_run.resumed_from();
  PretrainOptions recorded = o;  // the options as the checkpoints record them
  const nlohmann::json options = run_options(recorded).to_json();
  auto info = [&](const std::string& line) {
    if (rank == 0 && events.info) events.info(line);
  };

  int64_t step = 0;
  uint64_t tokens_seen = 0;
  std::optional<LoadedModel> loaded;
  if (o.resume) loaded.emplace(load_model_dir(*latest));
  Tokenizer tokenizer = loaded              ? std::move(loaded->tokenizer)
                        : o.tokenizer.empty() ? Tokenizer::byte_level()
                                              : Tokenizer::load(o.tokenizer);
  const ModelConfig config = loaded ? loaded->config : new_model_config(o.model_config, tokenizer);
  Model<float> model = loaded ? std::move(loaded->model) : Model<float>(config);
  if (!loaded) model.init_random(o.seed);
  model.set_fp8(o.fp8);
  const std::unique_ptr<dist::Comm> ep_comm =
      dist::expert_parallel_comm(o.comm, o.expert_parallel, config.n_routed_experts);
  if (ep_comm) model.set_expert_parallel(ep_comm.get());
  if (o.seq_len > config.max_position_embeddings)
    fail("--seq-len {} exceeds the model's max_position_embeddings {}", o.seq_len, config.max_position_embeddings);
  if (tokenizer.vocab_size() > size_t(config.vocab_size))
    fail("the tokenizer has {} tokens but the model config only {}", tokenizer.vocab_size(), config.vocab_size);

  TokenSource data = o.data.empty() ? TokenSource::builtin_arith(tokenizer, o.seed)
                                    : TokenSource::from_shards(o.data, uint32_t(config.vocab_size));
  AdamW optimizer = host_optimizer(o.device, model, o.adamw, o.comm, o.bucket_mb);
  BadStepGuard guard(o.max_bad_steps, o.bad_steps);

  // The step, tokens seen, data position and AdamW state of checkpoint dir (the weights are loaded apart), or of the
  // start of the run when there is none. Returns the checkpoint's trainer state.
  auto restore = [&](const std::optional<std::string>& dir) {
    nlohmann::json state;
    if (!dir) {
      step = 0, tokens_seen = 0;
      data.seek(0);
      optimizer.reset();
      return state;
    }
    const TrainerState saved(*dir);
    step = saved.step();
    tokens_seen = uint64_t(saved.count("tokens_seen"));
    if (saved.text("config_hash") != config_hash(config))
      fail("{}: config hash does not match config.json", saved.path());
    run_options(recorded).check(saved.json()["options"], saved.path());
    load_optimizer_state(*dir, optimizer);
    optimizer.set_steps(step);
    data.seek(uint64_t(saved.count("data_cursor")));
    return saved.json();
  };

  if (o.resume) {
    guard.load(restore(latest), *latest + "/trainer_state.json");
    info(fmt::format("resumed {} at step {} ({} tokens seen)", *latest, step, tokens_seen));
  } else {
    const ParamCount pc = count_params(config);
    info(fmt::format("model {}: {} parameters ({} active per token, {} in MTP), data {}", o.model_config, pc.total,
                     pc.active, pc.mtp, data.description()));
  }
  if (ranks > 1)
    info(fmt::format("data parallel over {} ranks ({}), {} sequences each{}", ranks, o.comm->backend(), local_batch,
                     ep_comm ? fmt::format(", experts split over {} ranks", ep_comm->size()) : ""));
  training_run.started();
  if (step >= o.steps) {
    info(fmt::format("the run is already at step {} of {}", step, o.steps));
    return;
  }

  const std::unique_ptr<StepTrainer> trainer =
      make_step_trainer(o.device, model, optimizer, o.adamw, o.fp8, o.comm);
  if (o.device.cuda) info(fmt::format("training on {}", o.device.name()));

  ScheduleOptions schedule = o.schedule;
  schedule.total = o.steps;
  auto save = [&] {
    const std::string dir = save_trained(*trainer, o.comm, run, step, o.keep, model, tokenizer, optimizer,
                                         [&](const std::string& tmp) {
      nlohmann::json state = {{"step", step},
                              {"tokens_seen", tokens_seen},
                              {"data_cursor", data.cursor()},
                              {"config_hash", config_hash(config)},
                              {"options", options},
                              {"schedule", {{"lr", schedule.lr}, {"warmup", schedule.warmup},
                                            {"total", schedule.total}}},
                              {"threads", get_threads()},
                              {"ranks", ranks}};
      guard.save(state);
      write_file_atomic(tmp + "/trainer_state.json", state.dump(2) + "\n");
    });
    if (rank == 0 && events.checkpoint) events.checkpoint(dir);
  };

  std::vector<int32_t> inputs, targets;
  int64_t steps_this_run = 0;
  const auto start = std::chrono::steady_clock::now();
  auto interval_start = start;
  uint64_t interval_tokens = 0;
  double interval_comm = comm_seconds(o.comm, ep_comm.get());
  while (step < o.steps) {
    trainer->begin_step(o.grad_accum, true);
    ForwardStats sum;
    std::vector<std::vector<int64_t>> loads;
    for (int64_t micro = 0; micro < o.grad_accum; ++micro) {
      data.next_batch(o.batch, o.seq_len, inputs, targets);  // the global batch; this rank takes its rows
      const int64_t first = rank * local_batch * o.seq_len;
      const ForwardStats s =
          trainer->forward(inputs.data() + first, targets.data() + first, local_batch, o.seq_len, o.loss);
      trainer->backward();
      sum.loss += s.loss / double(o.grad_accum);
      sum.main_loss += s.main_loss / double(o.grad_accum);
      sum.mtp_loss += s.mtp_loss / double(o.grad_accum);
      sum.balance_loss += s.balance_loss / double(o.grad_accum);
      add_into(loads, s.expert_load);
    }
    bool stopping = stop;
    if (ranks > 1) average_over_ranks(*o.comm, sum, loads, stopping);
    const double lr = learning_rate(schedule, step) * guard.lr_scale();
    const double norm = trainer->reduce_grads(o.clip);
    StepRecord r;
    // The loss and the norm are the same on every rank (all-reduced), so every rank takes the same decision.
    r.skipped = !std::isfinite(sum.loss) || !std::isfinite(norm);
    if (guard.count(r.skipped)) {
      const std::optional<std::string> dir = run.latest();
      restore(dir);
      if (dir)
        load_weights(*dir, model);
      else
        model.init_random(o.seed);
      trainer->host_loaded();
      info(fmt::format("{} steps in a row had a non-finite loss or gradient: back to {} (step {}) with the learning "
                       "rate scaled by {:g} (reload {} of at most {})",
                       o.max_bad_steps + 1, dir ? *dir : "the start of the run", step, guard.lr_scale(),
                       guard.reloads(), o.bad_steps.max_reloads));
      continue;
    }
    if (!r.skipped) trainer->step(lr, loads, o.bias_gamma);
    ++step, ++steps_this_run;
    const uint64_t step_tokens = uint64_t(o.batch * o.seq_len * o.grad_accum);
    tokens_seen += step_tokens;
    interval_tokens += step_tokens;

    const bool last = step == o.steps || stopping || (o.stop_after > 0 && steps_this_run >= o.stop_after);
    if (step % std::max<int64_t>(o.log_every, 1) == 0 || last) {
      const auto now = std::chrono::steady_clock::now();
      r.step = step, r.loss = sum.loss, r.main_loss = sum.main_loss, r.mtp_loss = sum.mtp_loss;
      r.balance_loss = sum.balance_loss, r.lr = lr, r.grad_norm = norm, r.tokens = tokens_seen;
      r.tokens_per_s = double(interval_tokens) / std::chrono::duration<double>(now - interval_start).count();
      r.load_imbalance = load_imbalance(loads);
      r.elapsed_s = std::chrono::duration<double>(now - start).count();
      r.bad_steps = guard.bad_total(), r.reloads = guard.reloads();
      const double comm_now = comm_seconds(o.comm, ep_comm.get());
      r.comm_share = (comm_now - interval_comm) / std::chrono::duration<double>(now - interval_start).count();
      interval_start = now, interval_tokens = 0, interval_comm = comm_now;
      nlohmann::json record = {{"step", r.step}, {"loss", r.loss}, {"main_loss", r.main_loss}, {"lr", r.lr},
                               {"grad_norm", r.grad_norm}, {"tokens_per_s", r.tokens_per_s}, {"tokens", r.tokens},
                               {"bad_steps", r.bad_steps}, {"reloads", r.reloads}, {"elapsed_s", r.elapsed_s}};
      if (config.num_nextn_predict_layers > 0) record["mtp_loss"] = r.mtp_loss;
      if (o.loss.balance_alpha > 0) record["balance_loss"] = r.balance_loss;
      if (config.n_routed_experts > 0) record["load_imbalance"] = r.load_imbalance;
      if (ranks > 1) record["comm_share"] = r.comm_share;
      if (rank == 0) run.append_metrics(record);
      if (rank == 0 && events.log) events.log(r);
    }
    if (last || (o.save_every > 0 && step % o.save_every == 0)) save();
    if (last) break;
  }
}

}  // namespace ds
