// ds-pretrain: pretrain a DeepSeek-V3-architecture model into a run directory.
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "common.h"
#include "ds/checkpoint.h"
#include "ds/config.h"
#include "ds/generate.h"
#include "ds/jsonl.h"
#include "ds/pretrain.h"

int main(int argc, char** argv) {
  CLI::App app{
      "Pretrain a DeepSeek-V3-architecture model (MLA, DeepSeekMoE, MTP) into a run directory.\n"
      "With no data it trains on builtin:arith, the built-in arithmetic corpus.",
      "ds-pretrain"};
  ds::tool::add_version_flag(app);
  ds::tool::add_config_option(app);
  ds::PretrainOptions o;
  std::string run_positional, resume_dir, schedule = "cosine";
  int64_t samples = 0;
  ds::tool::ComputeOptions compute;
  app.add_option("run", run_positional, "run directory to create");
  app.add_option("--resume", resume_dir, "continue the run in this directory from its latest checkpoint");
  app.add_option("--model-config", o.model_config, "preset (tiny, demo, small) or config.json")->capture_default_str();
  app.add_option("--tokenizer", o.tokenizer,
                 "tokenizer.json (or a directory with one) the --data shards were encoded with; new runs only. "
                 "Default: byte-level")
      ->check(CLI::ExistingPath);
  app.add_option("--data", o.data, "token shards (.tok, .tok.zst, - for stdin); default builtin:arith");
  app.add_option("--batch", o.batch, "sequences per micro-batch")
      ->capture_default_str()
      ->check(ds::tool::in(ds::tool::kPositiveCount));
  app.add_option("--seq-len", o.seq_len, "tokens per sequence")
      ->capture_default_str()
      ->check(ds::tool::in(ds::tool::kPositiveCount));
  app.add_option("--grad-accum", o.grad_accum, "micro-batches per optimizer step")
      ->capture_default_str()
      ->check(ds::tool::in(ds::tool::kPositiveCount));
  ds::tool::add_training_options(app, o, schedule, ds::tool::kPositiveCount, "total optimizer steps of the run",
                                 "seed of the initial weights and the built-in corpus");
  app.add_option("--mtp-weight", o.loss.mtp_weight, "MTP loss weight lambda")
      ->capture_default_str()
      ->check(ds::tool::in(ds::tool::kNonNegative));
  app.add_option("--balance-alpha", o.loss.balance_alpha, "sequence-wise balance loss weight")
      ->capture_default_str()
      ->check(ds::tool::in(ds::tool::kNonNegative));
  app.add_option("--bias-gamma", o.bias_gamma, "aux-loss-free router bias update speed")
      ->capture_default_str()
      ->check(ds::tool::in(ds::tool::kNonNegative));
  app.add_option("--samples", samples,
                 "after training, print N greedy completions of held-out builtin:arith "
                 "problems as JSONL on stdout")
      ->check(ds::tool::in(ds::tool::kCount));
  ds::tool::add_compute_options(app, compute);
  ds::tool::DistOptions dist;
  ds::tool::add_dist_options(app, dist, true, true);

  return ds::tool::run(app, argc, argv, [&] {
    if (!resume_dir.empty() && !run_positional.empty() && resume_dir != run_positional)
      throw CLI::ValidationError("run", "give the run directory once: either positionally or with --resume");
    if (resume_dir.empty() && run_positional.empty()) throw CLI::RequiredError("run directory");
    o.run_dir = resume_dir.empty() ? run_positional : resume_dir;
    o.resume = !resume_dir.empty();
    o.schedule.kind = ds::parse_schedule(schedule);
    if (o.data.size() == 1 && o.data[0] == "builtin:arith") o.data.clear();
    if (o.resume) ds::adopt_run_options(ds::run_options(o), o.run_dir, ds::tool::given_options(app));
    compute.device = ds::tool::local_device(compute.device);
    o.device = ds::tool::apply_compute_options(compute, true);
    const auto comm = ds::tool::make_comm(dist, o.device);  // data parallel under mpirun or srun
    o.comm = comm.get(), o.expert_parallel = dist.expert_parallel, o.bucket_mb = dist.bucket_mb;

    const auto& stop = ds::tool::install_stop_signals();
    ds::PretrainEvents events;
    events.info = [](const std::string& line) { fmt::print(stderr, "{}\n", line); };
    events.log = [&](const ds::StepRecord& r) {
      fmt::print(stderr, "step {:>6}/{} loss {:.4f}", r.step, o.steps, r.main_loss);
      if (r.mtp_loss > 0) fmt::print(stderr, " mtp {:.4f}", r.mtp_loss);
      fmt::print(stderr, " lr {:.2e} gnorm {:.3f} tok/s {:.0f}", r.lr, r.grad_norm, r.tokens_per_s);
      if (r.load_imbalance > 0) fmt::print(stderr, " imbalance {:.2f}", r.load_imbalance);
      if (r.comm_share > 0) fmt::print(stderr, " comm {:.0f}%", 100 * r.comm_share);
      if (r.bad_steps > 0) fmt::print(stderr, " bad {}", r.bad_steps);
      if (r.reloads > 0) fmt::print(stderr, " reloads {}", r.reloads);
      fmt::print(stderr, "\n");
    };
    events.checkpoint = [](const std::string& dir) { fmt::print(stderr, "saved {}\n", dir); };
    ds::pretrain(o, stop, events);

    if (samples > 0 && comm->rank() == 0) {
      ds::LoadedModel m = ds::load_model_dir(o.run_dir);
      size_t correct = 0;
      for (const auto& s : ds::sample_arith(m.model, m.tokenizer, size_t(samples))) {
        correct += s.correct;
        const nlohmann::json record = {{"id", s.problem.id},
                                       {"prompt", s.problem.prompt},
                                       {"completion", s.completion},
                                       {"answer", s.problem.answer},
                                       {"correct", s.correct}};
        fmt::print("{}\n", ds::to_jsonl(record));
      }
      fmt::print(stderr, "held-out exact match: {}/{}\n", correct, samples);
    }
  });
}
