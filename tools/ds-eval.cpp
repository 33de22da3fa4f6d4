// ds-eval: measure a model as the R1 paper does (pass@1 over k samples, pass@k, cons@k, format) on a task set, or its
// perplexity and bits per byte on text.
#include <fmt/core.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include "common.h"
#include "ds/error.h"
#include "ds/eval.h"
#include "ds/fsutil.h"
#include "ds/inference_model.h"
#include "ds/shards.h"
#include "ds/tasks.h"

namespace {

using json = nlohmann::ordered_json;

struct Options {
  std::string model, tasks, template_name = "plain", samples_path;
  std::vector<std::string> text;
  int64_t limit = 0, seq_len = 0;
  bool greedy = false;
  ds::eval::TaskRunOptions run;
};

void eval_tasks(const Options& o, const ds::InferenceModel& m) {
  std::vector<ds::Task> tasks = ds::load_tasks(o.tasks);
  if (o.limit > 0 && size_t(o.limit) < tasks.size()) tasks.resize(size_t(o.limit));
  const bool tty = ::isatty(STDERR_FILENO);
  const ds::eval::TaskRun run =
      ds::eval::run_tasks(m.weights, m.tokenizer, tasks, o.run, o.tasks, [&](size_t done, size_t total, double rate) {
        fmt::print(stderr, "{}ds-eval: {}/{} completions, {:.0f} tokens/s{}", tty ? "\r" : "", done, total, rate,
                   tty && done < total ? "" : "\n");
      });

  std::string records;
  for (const ds::eval::TaskSample& sample : run.samples) {
    const ds::Task& task = tasks[sample.task];
    const ds::eval::SampleScore& s = sample.score;
    const json record = {{"id", task.id},
                         {"sample", sample.index},
                         {"prompt", task.prompt},
                         {"completion", sample.completion.text},
                         {"answer", task.answer},
                         {"extracted", s.answer ? json(*s.answer) : json(nullptr)},
                         {"reward", double(s.correct) + double(s.format)},
                         {"correct", s.correct},
                         {"format", s.format},
                         {"tokens", s.tokens},
                         {"finish", sample.completion.finish_reason}};
    records += record.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  }
  if (!o.samples_path.empty()) {
    ds::AtomicFile file(o.samples_path);
    file.write(records);
    file.commit();
  }

  const ds::eval::Summary& s = run.summary;
  const json summary = {{"model", o.model},
                        {"tasks", o.tasks},
                        {"n", s.tasks},
                        {"k", s.k},
                        {"pass@1", s.pass_at_1},
                        {"pass@k", s.pass_at_k},
                        {"cons@k", s.cons_at_k},
                        {"format", s.format},
                        {"mean_tokens", s.mean_tokens},
                        {"greedy", o.greedy},
                        {"temperature", o.run.sampling.temperature},
                        {"top_p", o.run.sampling.top_p},
                        {"top_k", o.run.sampling.top_k},
                        {"min_p", o.run.sampling.min_p},
                        {"max_new_tokens", o.run.sampling.max_new_tokens},
                        {"seed", o.run.seed},
                        {"template", o.template_name}};
  fmt::print("{}\n", summary.dump());
  fmt::print(stderr, "{:<12} {}\n{:<12} {:.1f} MB{}\n{:<12} {} tasks x {} samples\n", "model", m.dir, "weights",
             double(m.weights.bytes()) * 1e-6, m.weights.fp8() ? " (FP8 in memory)" : "", "tasks", s.tasks, s.k);
  fmt::print(stderr, "{:<12} {:.4f}\n{:<12} {:.4f}\n{:<12} {:.4f}\n{:<12} {:.4f}\n{:<12} {:.1f}\n", "pass@1",
             s.pass_at_1, fmt::format("pass@{}", s.k), s.pass_at_k, fmt::format("cons@{}", s.k), s.cons_at_k, "format",
             s.format, "mean tokens", s.mean_tokens);
}

bool is_shard(const std::string& path) { return path.ends_with(".tok") || path.ends_with(".tok.zst"); }

void eval_text(const Options& o, const ds::InferenceModel& m) {
  const int64_t context = m.weights.config().max_position_embeddings, window = o.seq_len > 0 ? o.seq_len : context;
  if (window > context) ds::fail("--seq-len {} is longer than the model's context of {}", window, context);
  ds::eval::TextScore total;
  for (const std::string& path : o.text) {
    ds::eval::TextScore score;
    if (is_shard(path)) {
      const std::vector<uint32_t> ids = ds::read_tokens(path);
      ds::check_token_range(path, ids, uint32_t(m.weights.config().vocab_size));
      score = ds::eval::score_tokens(m.weights, m.tokenizer, ids, window, o.run.batch, o.run.device);
    } else {
      score = ds::eval::score_text(m.weights, m.tokenizer, ds::read_file(path), window, o.run.batch, o.run.device);
    }
    if (score.tokens == 0) ds::fail("{}: no tokens to score", path);
    total += score;
  }
  const json summary = {{"model", o.model},
                        {"text", o.text},
                        {"tokens", total.tokens},
                        {"bytes", total.bytes},
                        {"nll", total.nll / double(total.tokens)},
                        {"ppl", total.perplexity()},
                        {"bits_per_byte", total.bits_per_byte()},
                        {"seq_len", window}};
  fmt::print("{}\n", summary.dump());
  fmt::print(stderr, "{:<14} {}\n{:<14} {:.1f} MB{}\n{:<14} {}\n{:<14} {:.4f}\n{:<14} {:.4f}\n{:<14} {:.4f}\n", "model",
             m.dir, "weights", double(m.weights.bytes()) * 1e-6, m.weights.fp8() ? " (FP8 in memory)" : "", "tokens",
             total.tokens, "nll/token", total.nll / double(total.tokens), "perplexity", total.perplexity(), "bits/byte",
             total.bits_per_byte());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Evaluate a model: pass@1 (mean over k samples), pass@k, cons@k and format compliance on a task set,\n"
      "or perplexity and bits per byte on text. JSON summary on stdout, a table on stderr.",
      "ds-eval"};
  ds::tool::add_version_flag(app);
  ds::tool::add_config_option(app);
  using ds::tool::in;
  Options o;
  ds::tool::ComputeOptions compute;
  app.add_option("--model", o.model, "model directory, or run directory (its latest checkpoint)")->required();
  auto* tasks = app.add_option("--tasks", o.tasks,
                               "tasks JSONL (- for stdin) or builtin:arith[:test|:train]; "
                               "default builtin:arith");
  auto* text = app.add_option("--text", o.text, "text files, or token shards (.tok, .tok.zst), to score");
  tasks->excludes(text);
  auto* k =
      app.add_option("-k", o.run.k, "samples per task")->capture_default_str()->check(in(ds::tool::kPositiveCount));
  app.add_option("--temperature", o.run.sampling.temperature, "sampling temperature")
      ->capture_default_str()
      ->check(in(ds::tool::kTemperature));
  app.add_option("--top-p", o.run.sampling.top_p, "nucleus sampling mass (1 = off)")
      ->capture_default_str()
      ->check(in(ds::tool::kTopP));
  app.add_option("--top-k", o.run.sampling.top_k, "keep the k most likely tokens (0 = off)")
      ->capture_default_str()
      ->check(in(ds::tool::kTopK));
  app.add_option("--min-p", o.run.sampling.min_p, "keep tokens with p >= min-p * p_max (0 = off)")
      ->capture_default_str()
      ->check(in(ds::tool::kMinP));
  app.add_option("--repetition-penalty", o.run.sampling.repetition_penalty, "penalty on tokens already in the sequence")
      ->capture_default_str()
      ->check(in(ds::tool::kRepetitionPenalty));
  app.add_option("--max-new-tokens", o.run.sampling.max_new_tokens, "tokens generated per completion at most")
      ->capture_default_str()
      ->check(in(ds::tool::kMaxNewTokens));
  app.add_option("--stop", o.run.sampling.stop, "end a completion at this string (repeatable)");
  app.add_option("--seed", o.run.seed, "sampling seed; completion f of the run samples with seed + f")
      ->capture_default_str()
      ->check(ds::tool::in(ds::tool::kCount));
  app.add_flag("--greedy", o.greedy, "decode greedily, one sample per task");
  app.add_option("--limit", o.limit, "evaluate only the first N tasks")->check(in(ds::tool::kPositiveCount));
  app.add_option("--samples", o.samples_path, "write every sample as JSONL to this file");
  app.add_option("--batch", o.run.batch, "completions decoded together (text: windows per forward pass)")
      ->capture_default_str()
      ->check(in(ds::tool::kPositiveCount));
  app.add_option("--seq-len", o.seq_len, "text: tokens per window (default: the model's context)")
      ->check(in(ds::tool::kPositiveCount));
  app.add_option("--template", o.template_name, "chat template: plain (User: ... Assistant:), r1, r1-zero or none")
      ->capture_default_str()
      ->check(ds::tool::chat_format_validator());
  ds::tool::add_compute_options(app, compute);

  return ds::tool::run(app, argc, argv, [&] {
    if (o.greedy) {
      if (k->count() > 0 && o.run.k != 1)
        throw CLI::ValidationError("--greedy", "greedy decoding gives one sample per task");
      o.run.k = 1;
      o.run.sampling.temperature = 0;
    }
    if (o.samples_path == "-") throw CLI::ValidationError("--samples", "stdout holds the summary; give a file");
    if (o.text.empty() && o.tasks.empty()) o.tasks = "builtin:arith";
    if (!o.text.empty() && !o.samples_path.empty()) throw CLI::ValidationError("--samples", "only with --tasks");
    o.run.format = ds::parse_chat_format(o.template_name);
    o.run.device = ds::tool::apply_compute_options(compute, true);
    // Both run on the inference engine, which keeps FP8 weights FP8.
    const ds::InferenceModel m = ds::load_inference_model(o.model);
    if (o.text.empty()) {
      eval_tasks(o, m);
    } else {
      eval_text(o, m);
    }
  });
}
