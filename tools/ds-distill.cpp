// ds-distill: train a small (dense) student on a teacher's reasoning: SFT on records, logit distillation, or the
// teacher's own verified samples.
#include <fmt/core.h>

#include "common.h"
#include "ds/distill.h"

int main(int argc, char** argv) {
  CLI::App app{
      "Distil a teacher into a student model into a run directory (DeepSeek-R1's distillation).\n"
      "--data FILE: supervised fine-tuning on {\"prompt\", \"completion\"} or {\"messages\"} records, with\n"
      "logit distillation from --teacher when given (--alpha). --teacher with --prompts and no --data:\n"
      "sample the teacher, keep the completions the verifiers accept, and train on those.",
      "ds-distill"};
  ds::tool::add_version_flag(app);
  ds::tool::add_config_option(app);
  using ds::tool::in;
  ds::distill::DistillOptions o;
  o.schedule.lr = 1e-3;
  o.sample.sampling.max_new_tokens = 128;
  std::string run_positional, resume_dir, schedule = "cosine", divergence = "forward-kl";
  ds::tool::ComputeOptions compute;
  app.add_option("run", run_positional, "run directory to create");
  app.add_option("--resume", resume_dir, "continue the run in this directory from its latest checkpoint");
  app.add_option("--student", o.student, "continue this model or run directory (default: a new model)");
  app.add_option("--student-config", o.student_config,
                 "a new student: preset (tiny-dense, demo-dense, ...) or "
                 "config.json")
      ->capture_default_str();
  app.add_option("--tokenizer", o.tokenizer, "a new student's tokenizer.json (default: the teacher's, else byte-level)")
      ->check(CLI::ExistingPath);
  app.add_option("--data", o.data, "SFT records, JSONL (- = stdin)");
  app.add_option("--template", o.prompt_template, "chat template of the records and prompts: r1, r1-zero, plain, none")
      ->capture_default_str()
      ->check(ds::tool::chat_format_validator());
  app.add_option("--epochs", o.epochs, "passes over the data (when --steps is 0)")
      ->capture_default_str()
      ->check(in(ds::tool::kPositiveCount));
  app.add_option("--val-fraction", o.val_fraction, "share of the records held out for the validation loss")
      ->capture_default_str()
      ->check(in({.lo = 0, .hi = 1, .hi_open = true}));
  app.add_option("--eval-every", o.eval_every, "validation loss every N steps (0 = at the end only)")
      ->check(in(ds::tool::kCount));
  app.add_option("--teacher", o.teacher, "teacher model or run directory (same tokenizer as the student)");
  auto* alpha = app.add_option("--alpha", o.alpha,
                               "loss = alpha * KD + (1 - alpha) * cross-entropy (default 0.5 with --data and "
                               "--teacher, else 0)")
                    ->check(in(ds::tool::kFraction));
  app.add_option("--divergence", divergence, "KD loss: forward-kl, reverse-kl or jsd")
      ->capture_default_str()
      ->check(ds::tool::parsed_by([](const std::string& name) { ds::kd::parse_divergence(name); },
                                  "forward-kl|reverse-kl|jsd"));
  app.add_option("--jsd-beta", o.kd.beta, "generalised JSD mixture weight, in (0, 1)")
      ->capture_default_str()
      ->check(in({.lo = 0, .hi = 1, .lo_open = true, .hi_open = true}));
  app.add_option("--kd-temperature", o.kd.temperature, "softmax temperature of both distributions")
      ->capture_default_str()
      ->check(in(ds::tool::kPositive));
  app.add_option("--kd-top-k", o.kd.top_k, "compare the teacher's top k tokens and one bucket for the rest (0 = all)")
      ->capture_default_str()
      ->check(in(ds::tool::kCount));
  app.add_option("--prompts", o.prompts, "tasks to sample the teacher on: JSONL or builtin:arith[:train|:test]");
  app.add_option("--limit", o.limit, "sample only the first N prompts (0 = all)")->check(in(ds::tool::kCount));
  app.add_option("-k,--samples-per-prompt", o.sample.k, "completions sampled per prompt")
      ->capture_default_str()
      ->check(in(ds::tool::kPositiveCount));
  app.add_option("--temperature", o.sample.sampling.temperature, "teacher sampling temperature")
      ->capture_default_str()
      ->check(in(ds::tool::kTemperature));
  app.add_option("--top-p", o.sample.sampling.top_p, "teacher nucleus sampling (1 = off)")
      ->capture_default_str()
      ->check(in(ds::tool::kTopP));
  app.add_option("--max-new-tokens", o.sample.sampling.max_new_tokens, "teacher completion length limit")
      ->capture_default_str()
      ->check(in(ds::tool::kMaxNewTokens));
  app.add_option("--emit", o.emit, "also write the accepted samples to this JSONL file (- = stdout)");
  app.add_option("--batch", o.batch, "rows per step, over all ranks")
      ->capture_default_str()
      ->check(in(ds::tool::kPositiveCount));
  app.add_option("--seq-len", o.seq_len, "positions per row (short examples are packed)")
      ->capture_default_str()
      ->check(in(ds::tool::kPositiveCount));
  ds::tool::add_training_options(app, o, schedule, ds::tool::kCount,
                                 "total steps of the run (0 = --epochs passes over the data)",
                                 "seed of a new student's weights, the data order and the validation split");
  ds::tool::add_compute_options(app, compute);
  ds::tool::DistOptions dist;
  ds::tool::add_dist_options(app, dist, false, false);

  return ds::tool::run(app, argc, argv, [&] {
    if (!resume_dir.empty() && !run_positional.empty() && resume_dir != run_positional)
      throw CLI::ValidationError("run", "give the run directory once: either positionally or with --resume");
    if (resume_dir.empty() && run_positional.empty()) throw CLI::RequiredError("run directory");
    o.run_dir = resume_dir.empty() ? run_positional : resume_dir;
    o.resume = !resume_dir.empty();
    o.schedule.kind = ds::parse_schedule(schedule);
    o.kd.divergence = ds::kd::parse_divergence(divergence);
    if (o.resume) ds::adopt_run_options(ds::distill::run_options(o), o.run_dir, ds::tool::given_options(app));
    if (!o.resume && o.data.empty() && (o.teacher.empty() || o.prompts.empty()))
      throw CLI::ValidationError("--data", "give --data FILE, or --teacher MODEL with --prompts TASKS to sample it");
    if (!o.resume && alpha->count() == 0) o.alpha = !o.data.empty() && !o.teacher.empty() ? 0.5 : 0.0;
    if (o.alpha > 0 && o.teacher.empty()) throw CLI::ValidationError("--alpha", "logit distillation needs --teacher");
    o.sample.seed = o.seed;
    compute.device = ds::tool::local_device(compute.device);  // each rank on its node's GPU
    o.device = o.sample.device = ds::tool::apply_compute_options(compute, true);
    // Data parallel under mpirun or srun. Over MPI even on GPUs: samples and records meet in host memory.
    const auto comm = ds::tool::make_comm(dist);
    o.comm = comm.get();
    o.bucket_mb = dist.bucket_mb;

    const auto& stop = ds::tool::install_stop_signals();
    ds::distill::DistillEvents events;
    events.info = [](const std::string& line) { fmt::print(stderr, "{}\n", line); };
    events.log = [&](const ds::distill::DistillRecord& r) {
      fmt::print(stderr, "step {:>6}/{} loss {:.4f}", r.step, r.total_steps, r.loss);
      if (o.alpha > 0) fmt::print(stderr, " ce {:.4f} kd {:.4f}", r.ce, r.kd);
      if (r.val_loss) fmt::print(stderr, " val {:.4f}", *r.val_loss);
      fmt::print(stderr, " lr {:.2e} gnorm {:.3f} tok/s {:.0f} epoch {:.2f}", r.lr, r.grad_norm, r.tokens_per_s,
                 r.epoch);
      if (r.comm_share > 0) fmt::print(stderr, " comm {:.0f}%", 100 * r.comm_share);
      if (r.bad_steps > 0) fmt::print(stderr, " bad {}", r.bad_steps);
      if (r.reloads > 0) fmt::print(stderr, " reloads {}", r.reloads);
      fmt::print(stderr, "\n");
    };
    events.checkpoint = [](const std::string& dir) { fmt::print(stderr, "saved {}\n", dir); };
    ds::distill::distill(o, stop, events);
  });
}
