// ds-grpo: R1-Zero reinforcement learning with Group Relative Policy Optimization.
#include <fmt/core.h>

#include "common.h"
#include "ds/grpo_train.h"

int main(int argc, char** argv) {
  CLI::App app{
      "Reinforcement learning from rule-based rewards (R1-Zero) with Group Relative Policy Optimization.\n"
      "Samples --group-size completions of each prompt, rewards them with the verifiers (or --reward-cmd),\n"
      "and moves the policy toward the completions that beat their group's mean.",
      "ds-grpo"};
  ds::tool::add_version_flag(app);
  ds::tool::add_config_option(app);
  using ds::tool::in;
  ds::GrpoTrainOptions o;
  o.schedule.kind = ds::Schedule::Constant;
  o.schedule.lr = 5e-5;
  o.adamw.weight_decay = 0.0;
  o.sampling.temperature = 1.0;
  o.sampling.top_p = 1.0;
  o.sampling.max_new_tokens = 128;
  std::string run_positional, resume_dir, schedule = "constant", loss = "grpo", scale_rewards = "group";
  ds::tool::ComputeOptions compute;
  app.add_option("run", run_positional, "run directory to create");
  app.add_option("--resume", resume_dir, "continue the run in this directory from its latest checkpoint");
  app.add_option("--model", o.model, "base model: a model directory or a run directory (its latest checkpoint)");
  app.add_option("--tasks", o.tasks, "tasks JSONL ({\"id\", \"prompt\", \"answer\"}) or builtin:arith[:train|:test]")
      ->capture_default_str();
  app.add_option("--template", o.prompt_template,
                 "chat template: r1, r1-zero, none, or plain (\"User: ... Assistant:\", as in builtin:arith)")
      ->capture_default_str()
      ->check(ds::tool::chat_format_validator());
  app.add_option("--group-size", o.group_size, "completions per prompt (G)")
      ->capture_default_str()
      ->check(in(ds::tool::at_least(2)));  // advantages compare the completions of one prompt
  app.add_option("--prompts-per-step", o.prompts_per_step, "prompts per step (P)")
      ->capture_default_str()
      ->check(in(ds::tool::kPositiveCount));
  ds::tool::add_training_options(app, o, schedule, ds::tool::kPositiveCount, "total steps of the run",
                                 "seed of the task order and the sampler");
  app.add_option("--max-new-tokens", o.sampling.max_new_tokens, "completion length limit (also dr_grpo's constant)")
      ->capture_default_str()
      ->check(in(ds::tool::kMaxNewTokens));
  app.add_option("--temperature", o.sampling.temperature,
                 "sampling temperature (positive), also that of the log-probabilities the loss compares")
      ->capture_default_str()
      ->check(in(ds::tool::kPositive));  // greedy completions of one prompt are all the same
  app.add_option("--top-p", o.sampling.top_p, "nucleus sampling (1 = off)")
      ->capture_default_str()
      ->check(in(ds::tool::kTopP));
  app.add_option("--top-k", o.sampling.top_k, "top-k sampling (0 = off)")
      ->capture_default_str()
      ->check(in(ds::tool::kTopK));
  app.add_option("--stop", o.sampling.stop, "end a completion at this string (repeatable)");
  app.add_option("--epsilon", o.loss.epsilon, "clip the ratio below at 1 - epsilon")
      ->capture_default_str()
      ->check(in({.lo = 0, .hi = 1, .lo_open = true, .hi_open = true}));
  auto* eps_high = app.add_option("--epsilon-high", o.loss.epsilon_high,
                                  "clip the ratio above at 1 + epsilon-high (DAPO uses 0.28; default --epsilon)")
                       ->check(in(ds::tool::kPositive));
  app.add_option("--beta", o.loss.beta, "k3 KL weight to the base model (0: no reference model)")
      ->capture_default_str()
      ->check(in(ds::tool::kNonNegative));
  app.add_option("--loss", loss, "aggregation: grpo (per sequence), dapo (per token), dr_grpo (constant)")
      ->capture_default_str()
      ->check(
          ds::tool::parsed_by([](const std::string& name) { ds::grpo::parse_aggregation(name); }, "grpo|dapo|dr_grpo"));
  app.add_option("--scale-rewards", scale_rewards, "group (divide advantages by the group std) or none (Dr. GRPO)")
      ->capture_default_str()
      ->check(ds::tool::parsed_by([](const std::string& name) { ds::grpo::parse_scale_rewards(name); }, "group|none"));
  app.add_option("--iterations", o.iterations, "updates per batch of rollouts (mu)")
      ->capture_default_str()
      ->check(in(ds::tool::kPositiveCount));
  app.add_option("--micro-batch", o.micro_batch, "sequences per forward pass (0 = the whole batch)")
      ->check(in(ds::tool::kCount));
  app.add_flag("--dynamic-sampling", o.dynamic_sampling,
               "drop groups whose rewards are all equal and sample more prompts");
  app.add_option("--max-sampling-rounds", o.max_sampling_rounds, "dynamic sampling: rounds per step at most")
      ->capture_default_str()
      ->check(in(ds::tool::kPositiveCount));
  app.add_option("--format-weight", o.format_weight, "reward = accuracy + format-weight * format")
      ->capture_default_str()
      ->check(in(ds::tool::kAnyNumber));
  app.add_option("--reward-cmd", o.reward_cmd, "reward with this shell command (JSON lines in, a reward per line out)");
  app.add_option("--reward-timeout", o.reward_timeout, "seconds to wait for each reward line")
      ->capture_default_str()
      ->check(in(ds::tool::kPositive));
  app.add_option("--rollouts", o.rollouts, "append every rollout to this JSONL file (- = stdout)");
  app.add_option("--bias-gamma", o.bias_gamma, "aux-loss-free router bias update speed (0 = frozen)")
      ->capture_default_str()
      ->check(in(ds::tool::kNonNegative));
  ds::tool::add_compute_options(app, compute);
  ds::tool::DistOptions dist;
  ds::tool::add_dist_options(app, dist, false, false);

  return ds::tool::run(app, argc, argv, [&] {
    if (!resume_dir.empty() && !run_positional.empty() && resume_dir != run_positional)
      throw CLI::ValidationError("run", "give the run directory once: either positionally or with --resume");
    if (resume_dir.empty() && run_positional.empty()) throw CLI::RequiredError("run directory");
    if (resume_dir.empty() && o.model.empty()) throw CLI::RequiredError("--model");
    o.run_dir = resume_dir.empty() ? run_positional : resume_dir;
    o.resume = !resume_dir.empty();
    if (eps_high->count() == 0) o.loss.epsilon_high = o.loss.epsilon;
    o.schedule.kind = ds::parse_schedule(schedule);
    o.aggregation = ds::grpo::parse_aggregation(loss);
    o.scale_rewards = ds::grpo::parse_scale_rewards(scale_rewards);
    if (o.resume) ds::adopt_run_options(ds::run_options(o), o.run_dir, ds::tool::given_options(app));
    compute.device = ds::tool::local_device(compute.device);  // each rank on its node's GPU
    o.device = ds::tool::apply_compute_options(compute, true);
    // Data parallel under mpirun or srun. Over MPI even on GPUs: rollouts and rewards meet in host memory.
    const auto comm = ds::tool::make_comm(dist);
    o.comm = comm.get(), o.bucket_mb = dist.bucket_mb;

    const auto& stop = ds::tool::install_stop_signals();
    ds::GrpoEvents events;
    events.info = [](const std::string& line) { fmt::print(stderr, "{}\n", line); };
    events.log = [&](const ds::GrpoRecord& r) {
      fmt::print(stderr, "step {:>5}/{} reward {:.3f}±{:.3f} acc {:.3f} fmt {:.3f} len {:.1f}/{}", r.step, o.steps,
                 r.reward_mean, r.reward_std, r.accuracy, r.format, r.length_mean, r.length_max);
      if (o.loss.beta > 0) fmt::print(stderr, " kl {:.4f}", r.kl);
      fmt::print(stderr, " clip {:.3f} ent {:.3f} flat {}/{} rollout {:.0f} tok/s update {:.0f} tok/s", r.clip_fraction,
                 r.entropy, r.zero_variance_groups, r.groups, r.rollout_tokens_per_s, r.update_tokens_per_s);
      if (r.reloads > 0) fmt::print(stderr, " reloads {}", r.reloads);
      if (r.skipped) fmt::print(stderr, " (no update)");
      fmt::print(stderr, "\n");
    };
    events.checkpoint = [](const std::string& dir) { fmt::print(stderr, "saved {}\n", dir); };
    ds::grpo_train(o, stop, events);
  });
}
