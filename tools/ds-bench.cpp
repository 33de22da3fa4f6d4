// ds-bench: GEMM and training-step throughput, as ratios to the peak measured in the same run (sgemm on the CPU,
// BF16 GEMMs on a GPU), decode throughput, the all-reduce bandwidth of an mpirun or srun launch, and the training
// step on N threads against 1 with and without competing processes.
#include <fmt/core.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "common.h"
#include "ds/bench.h"
#include "ds/config.h"
#include "ds/cuda.h"
#include "ds/error.h"
#include "ds/ops.h"

namespace {

using Row = std::vector<std::string>;

// Prints rows (the first is the header) with the first column left-aligned, the others right-aligned.
void print_table(const std::vector<Row>& rows) {
  std::vector<size_t> width(rows[0].size(), 0);
  for (const Row& row : rows)
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  for (const Row& row : rows) {
    fmt::print("{:<{}}", row[0], width[0]);
    for (size_t i = 1; i < row.size(); ++i) fmt::print("  {:>{}}", row[i], width[i]);
    fmt::print("\n");
  }
}

std::string percent(double fraction) { return fmt::format("{:.1f}%", 100 * fraction); }

// The all-reduce between the ranks of the launch at each size: MPI over host memory, or NCCL over device memory
// with --device cuda (each rank on its local GPU). Rank 0 prints.
void run_all_reduce(const ds::Device& device, const std::vector<double>& sizes_mb, double min_time, bool json) {
  const auto comm = ds::tool::make_comm({}, device);
  if (comm->size() < 2)
    throw CLI::ValidationError("--only",
                               "allreduce measures the collectives between ranks: launch ds-bench with "
                               "mpirun -np N or srun");
  nlohmann::json out = {{"device", device.name()},
                        {"backend", comm->backend()},
                        {"ranks", comm->size()},
                        {"allreduce", nlohmann::json::array()}};
  std::vector<Row> rows = {{"all-reduce MiB", "calls", "us", "median us", "algbw GB/s", "busbw GB/s"}};
  for (const double mb : sizes_mb) {
    const int64_t bytes = std::max<int64_t>(int64_t(mb * 1024 * 1024 / 4), 1) * 4;
    if (comm->rank() == 0) fmt::print(stderr, "all-reduce of {} bytes over {} ranks\n", bytes, comm->size());
#ifdef DS_CUDA
    const ds::bench::AllReduceResult r =
        device.cuda ? ds::bench::gpu_all_reduce(*comm, bytes, min_time) : ds::bench::all_reduce(*comm, bytes, min_time);
#else
    const ds::bench::AllReduceResult r = ds::bench::all_reduce(*comm, bytes, min_time);
#endif
    out["allreduce"].push_back({{"bytes", r.bytes},
                                {"repeats", r.repeats},
                                {"best_us", r.best_us},
                                {"median_us", r.median_us},
                                {"algbw_gb_per_s", r.algbw_gb_per_s},
                                {"busbw_gb_per_s", r.busbw_gb_per_s}});
    rows.push_back({fmt::format("{:g}", double(bytes) / (1024 * 1024)), std::to_string(r.repeats),
                    fmt::format("{:.1f}", r.best_us), fmt::format("{:.1f}", r.median_us),
                    fmt::format("{:.2f}", r.algbw_gb_per_s), fmt::format("{:.2f}", r.busbw_gb_per_s)});
  }
  if (comm->rank() != 0) return;
  if (json) {
    fmt::print("{}\n", out.dump());
    return;
  }
  fmt::print("all-reduce of float32 sums in place over {} ranks ({}, {})\n\n", comm->size(), comm->backend(),
             device.name());
  print_table(rows);
}

// The training step on 1 thread, on --threads (0: every core) and on the default count, first with `busy` competing
// processes, then quiet.
void run_contention(const std::string& model_config, const ds::ModelConfig& config, int64_t batch, int64_t seq_len,
                    int steps, int threads, int busy, bool json) {
  if (threads == 0) threads = ds::usable_cores();
  if (busy == 0) busy = threads;
  fmt::print(stderr, "training step of {} on {} x {} tokens, 1 and {} threads: with {} busy processes, then quiet\n",
             model_config, batch, seq_len, threads, busy);
  const auto started = [](const std::vector<int>& pids) {
    fmt::print(stderr, "busy processes: {}\n", fmt::join(pids, " "));
  };
  const auto runs = ds::bench::contention(config, batch, seq_len, steps, threads, busy, started);
  nlohmann::json out = {{"threads", threads},
                        {"device", "cpu"},
                        {"contention",
                         {{"config", model_config},
                          {"batch", batch},
                          {"seq_len", seq_len},
                          {"steps", steps},
                          {"busy", busy},
                          {"runs", nlohmann::json::array()}}}};
  std::vector<Row> rows = {{"load", "busy", "threads", "step ms", "tokens/s", "vs 1 thread"}};
  for (const ds::bench::ContentionRun& r : runs) {
    const std::string load = r.busy > 0 ? "contended" : "quiet";
    out["contention"]["runs"].push_back({{"load", load},
                                         {"busy", r.busy},
                                         {"threads", r.threads},
                                         {"automatic", r.automatic},
                                         {"step_ms", r.step.step_ms},
                                         {"tokens_per_s", r.step.tokens_per_s},
                                         {"vs_one_thread", r.vs_one_thread}});
    rows.push_back({load, std::to_string(r.busy), fmt::format("{}{}", r.threads, r.automatic ? " (default)" : ""),
                    fmt::format("{:.1f}", r.step.step_ms), fmt::format("{:.0f}", r.step.tokens_per_s),
                    fmt::format("{:.2f}", r.vs_one_thread)});
  }
  if (json) {
    fmt::print("{}\n", out.dump());
    return;
  }
  fmt::print("training step of {} on {} x {} tokens, {} threads against 1, {} busy processes\n\n", model_config, batch,
             seq_len, threads, busy);
  print_table(rows);
}

#ifdef DS_CUDA
// The model a GPU run measures: the training step's sequences and the engine's decode.
struct GpuModel {
  std::string name;
  ds::ModelConfig config;
  int64_t batch, seq_len;
  int steps;
  std::vector<int64_t> decode_batches;
  int64_t context;
  int decode_steps;
};

// On a GPU: the BF16 dense peak of a large cuBLASLt GEMM and the model's training step in BF16 and in FP8 with its
// MFU against it, cuBLASLt BF16 and FP8 block-scaled GEMMs on DeepSeek-V3's shapes (FP8 as a ratio to BF16
// measured in the same run), MLA decode over the latent cache at V3's 128 heads and 4096 cached tokens, and the
// inference engine's prefill and decode of the model.
void run_gpu(const ds::Device& device, const std::string& only, double min_time, bool json, const GpuModel& m) {
  nlohmann::json out = {{"device", device.name()}, {"gpu", ds::bench::gpu_name()}};
  std::vector<Row> gemm_rows = {{"gemm", "M", "N", "K", "BF16 TFLOP/s", "FP8 TFLOP/s", "FP8/BF16"}};
  std::vector<Row> mla_rows = {{"mla decode", "batch", "context", "heads", "ms", "median ms", "GB/s"}};
  std::vector<Row> engine_rows = {{"engine", "batch", "context", "prefill tok/s", "step ms", "decode tok/s"}};
  std::vector<Row> step_rows = {{"train step", "GEMMs", "batch x seq", "step ms", "tokens/s", "TFLOP/s", "MFU"}};
  double peak = 0;
  if (only.empty() || only == "step") {
    fmt::print(stderr, "measuring the BF16 dense peak\n");
    peak = ds::bench::gpu_bf16_peak(min_time);
    out["bf16_peak_tflops"] = peak;
    out["step"] = nlohmann::json::array();
    for (const bool fp8 : {false, true}) {
      const std::string gemms = fp8 ? "fp8" : "bf16";
      fmt::print(stderr, "training step of {} in {} on {} x {} tokens: 1 warm-up and {} timed steps\n", m.name, gemms,
                 m.batch, m.seq_len, m.steps);
      const ds::bench::StepResult r = ds::bench::gpu_train_step(m.config, m.batch, m.seq_len, 1, m.steps, fp8, peak);
      out["step"].push_back({{"config", m.name},
                             {"gemms", gemms},
                             {"batch", m.batch},
                             {"seq_len", m.seq_len},
                             {"steps", m.steps},
                             {"step_ms", r.step_ms},
                             {"tokens_per_s", r.tokens_per_s},
                             {"flops_per_token", r.flops_per_token},
                             {"tflops", r.gflops * 1e-3},
                             {"mfu", r.mfu}});
      step_rows.push_back({m.name, gemms, fmt::format("{} x {}", m.batch, m.seq_len), fmt::format("{:.1f}", r.step_ms),
                           fmt::format("{:.0f}", r.tokens_per_s), fmt::format("{:.1f}", r.gflops * 1e-3),
                           percent(r.mfu)});
    }
  }
  if (only.empty() || only == "decode") {
    out["decode"] = nlohmann::json::array();
    for (const int64_t batch : m.decode_batches) {
      fmt::print(stderr, "engine decode of {}: batch {}, context {}\n", m.name, batch, m.context);
      const ds::bench::DecodeResult r = ds::bench::decode(m.config, batch, m.context, m.decode_steps, false, device);
      out["decode"].push_back({{"model", m.name},
                               {"batch", batch},
                               {"context", m.context},
                               {"prefill_tokens_per_s", r.prefill_tokens_per_s},
                               {"step_ms", r.step_ms},
                               {"tokens_per_s", r.tokens_per_s}});
      engine_rows.push_back({m.name, std::to_string(batch), std::to_string(m.context),
                             fmt::format("{:.0f}", r.prefill_tokens_per_s), fmt::format("{:.2f}", r.step_ms),
                             fmt::format("{:.0f}", r.tokens_per_s)});
    }
  }
  if (only.empty() || only == "gemm") {
    out["gemm"] = nlohmann::json::array();
    for (const int64_t M : ds::bench::kGpuGemmTokens)
      for (const auto& s : ds::bench::deepseek_v3_gemm_shapes(M)) {
        fmt::print(stderr, "gemm {} {}x{}x{}\n", s.name, s.M, s.N, s.K);
        const ds::bench::GpuGemmResult r = ds::bench::gpu_gemm(s.M, s.N, s.K, min_time);
        out["gemm"].push_back({{"name", s.name},
                               {"M", s.M},
                               {"N", s.N},
                               {"K", s.K},
                               {"bf16_tflops", r.bf16_tflops},
                               {"bf16_median_tflops", r.bf16_median_tflops},
                               {"fp8_tflops", r.fp8_tflops},
                               {"fp8_median_tflops", r.fp8_median_tflops},
                               {"fp8_over_bf16", r.fp8_tflops / r.bf16_tflops}});
        gemm_rows.push_back({s.name, std::to_string(s.M), std::to_string(s.N), std::to_string(s.K),
                             fmt::format("{:.1f}", r.bf16_tflops), fmt::format("{:.1f}", r.fp8_tflops),
                             fmt::format("{:.2f}", r.fp8_tflops / r.bf16_tflops)});
      }
  }
  if (only.empty() || only == "mla") {
    out["mla_decode"] = nlohmann::json::array();
    for (const int64_t batch : {64, 128}) {
      const int64_t context = 4096, heads = 128;
      fmt::print(stderr, "mla decode batch {} context {} heads {}\n", batch, context, heads);
      const ds::bench::MlaDecodeResult r = ds::bench::gpu_mla_decode(batch, context, heads, min_time);
      out["mla_decode"].push_back({{"batch", batch},
                                   {"context", context},
                                   {"heads", heads},
                                   {"ms", r.best_ms},
                                   {"median_ms", r.median_ms},
                                   {"gbytes_per_s", r.gbytes_per_s}});
      mla_rows.push_back({"v3", std::to_string(batch), std::to_string(context), std::to_string(heads),
                          fmt::format("{:.3f}", r.best_ms), fmt::format("{:.3f}", r.median_ms),
                          fmt::format("{:.0f}", r.gbytes_per_s)});
    }
  }
  if (json) {
    fmt::print("{}\n", out.dump());
    return;
  }
  fmt::print("{} ({})\n", out["gpu"].get<std::string>(), device.name());
  if (peak > 0) fmt::print("\nBF16 dense peak {:.1f} TFLOP/s (cuBLASLt, square GEMMs of 4096 and 8192)\n", peak);
  for (const auto* rows : {&step_rows, &gemm_rows, &mla_rows, &engine_rows})
    if (rows->size() > 1) {
      fmt::print("\n");
      print_table(*rows);
    }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Measure sgemm, training-step and decode throughput on this machine. GEMMs are reported against the\n"
      "sgemm peak measured in the same run, the training step's model FLOP utilisation (MFU) likewise, and\n"
      "decode's bytes read per second against the copy bandwidth measured in the same run.",
      "ds-bench"};
  ds::tool::add_version_flag(app);
  ds::tool::add_config_option(app);
  bool json = false;
  std::string model_config = "demo", only;
  int64_t batch = 8, seq_len = 256, context = 0;
  int steps = 5, decode_steps = 16;
  std::vector<int64_t> decode_batches = {1, 64};
  std::vector<std::string> decode_weights = {"f32", "fp8"};
  std::vector<double> allreduce_mb = {1, 4, 16, 64, 256};
  double min_time = 0.5;
  int busy = 0;
  std::vector<std::string> shape_specs = {"default"};
  ds::tool::ComputeOptions compute;
  const CLI::Validator shape_check(
      [](std::string& spec) -> std::string {
        if (spec == "default") return {};
        try {
          ds::bench::parse_gemm_shape(spec);
          return {};
        } catch (const ds::Error& e) {
          return e.what();
        }
      },
      "MxNxK");
  app.add_flag("--json", json, "print one JSON object instead of a table");
  app.add_option("--model-config", model_config, "preset (tiny, demo, small) or config.json of the model to time")
      ->capture_default_str();
  app.add_option("--batch", batch, "sequences per training step")
      ->check(ds::tool::in(ds::tool::kPositiveCount))
      ->capture_default_str();
  app.add_option("--seq-len", seq_len, "tokens per sequence")
      ->check(ds::tool::in(ds::tool::kPositiveCount))
      ->capture_default_str();
  app.add_option("--steps", steps, "timed training steps, after one warm-up step")
      ->check(ds::tool::in(ds::tool::kPositiveCount))
      ->capture_default_str();
  app.add_option("--gemm-shapes", shape_specs,
                 "comma-separated MxNxK list; default: the model's GEMMs at batch x seq-len tokens and "
                 "DeepSeek-V3's at 128 tokens")
      ->delimiter(',')
      ->check(shape_check)
      ->capture_default_str();
  app.add_option("--min-time", min_time, "seconds to time each GEMM shape for, at least")
      ->check(ds::tool::in(ds::tool::kPositive))
      ->capture_default_str();
  app.add_option("--decode-batch", decode_batches, "comma-separated sequences decoded together")
      ->delimiter(',')
      ->check(ds::tool::in(ds::tool::kPositiveCount))
      ->capture_default_str();
  app.add_option("--context", context, "decode: cached tokens per sequence (default: half the model's context)")
      ->check(ds::tool::in(ds::tool::kPositiveCount));
  app.add_option("--decode-weights", decode_weights,
                 "decode: comma-separated weight formats, f32 and/or fp8 (quantized in memory as ds-quantize does, "
                 "and kept FP8)")
      ->delimiter(',')
      ->check(CLI::IsMember({"f32", "fp8"}))
      ->capture_default_str();
  app.add_option("--decode-steps", decode_steps, "decode: timed steps")
      ->check(ds::tool::in(ds::tool::kPositiveCount))
      ->capture_default_str();
  app.add_option("--allreduce-mb", allreduce_mb, "allreduce: comma-separated sizes in MiB")
      ->delimiter(',')
      ->check(ds::tool::in(ds::tool::kPositive))
      ->capture_default_str();
  app.add_option("--busy", busy, "contention: competing busy processes (0: as many as threads)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--only", only,
                 "measure only one part: gemm, step, decode, mla (CUDA), allreduce (the ranks of an mpirun or srun "
                 "launch), contention (the step on N threads against 1, with busy processes and quiet); the last two "
                 "are not part of the default run")
      ->check(CLI::IsMember({"gemm", "step", "decode", "mla", "allreduce", "contention"}));
  ds::tool::add_compute_options(app, compute);

  return ds::tool::run(app, argc, argv, [&] {
    compute.device = ds::tool::local_device(compute.device);
    const ds::Device device = ds::tool::apply_compute_options(compute, true);
    if (only == "allreduce") return run_all_reduce(device, allreduce_mb, min_time, json);
    if (only == "mla" && !device.cuda)
      throw CLI::ValidationError("--only", "mla is measured on a CUDA device (--device cuda)");
    const ds::ModelConfig config = ds::resolve_model_config(model_config);
    const bool run_step = only.empty() || only == "step" || only == "contention";
    const bool run_gemm = only.empty() || only == "gemm";
    const bool run_decode = only.empty() || only == "decode";
    if (context == 0) context = config.max_position_embeddings / 2;
    if (run_decode && context + decode_steps > config.max_position_embeddings)
      throw CLI::ValidationError("--context", fmt::format("{} + {} decode steps exceeds the model's "
                                                          "max_position_embeddings {}",
                                                          context, decode_steps, config.max_position_embeddings));
    if (run_step && seq_len > config.max_position_embeddings)
      throw CLI::ValidationError("--seq-len", fmt::format("{} exceeds the model's max_position_embeddings {}", seq_len,
                                                          config.max_position_embeddings));
    if (only == "contention") {
      if (device.cuda) throw CLI::ValidationError("--only", "contention is measured on the CPU (--device cpu)");
      return run_contention(model_config, config, batch, seq_len, steps, compute.threads, busy, json);
    }
#ifdef DS_CUDA
    if (device.cuda)
      return run_gpu(device, only, min_time, json,
                     {model_config, config, batch, seq_len, steps, decode_batches, context, decode_steps});
#endif
    std::vector<ds::bench::GemmShape> shapes;
    if (run_gemm)
      for (const std::string& spec : shape_specs) {
        if (spec != "default") {
          shapes.push_back(ds::bench::parse_gemm_shape(spec));
          continue;
        }
        for (const auto& s : ds::bench::model_gemm_shapes(config, batch, seq_len)) shapes.push_back(s);
        for (const auto& s : ds::bench::deepseek_v3_gemm_shapes(128)) shapes.push_back(s);
      }

    const int threads = ds::get_threads();
    fmt::print(stderr, "measuring the sgemm peak on {} threads\n", threads);
    const double peak = run_gemm || run_step ? ds::bench::sgemm_peak(min_time) : 0;
    std::vector<ds::bench::GemmResult> gemms;
    for (const auto& s : shapes) {
      fmt::print(stderr, "gemm {} {}x{}x{}\n", s.name, s.M, s.N, s.K);
      gemms.push_back(ds::bench::gemm(s.M, s.N, s.K, min_time));
    }
    std::optional<ds::bench::StepResult> step;
    if (run_step) {
      fmt::print(stderr, "training step of {} on {} x {} tokens: 1 warm-up and {} timed steps\n", model_config, batch,
                 seq_len, steps);
      step = ds::bench::train_step(config, batch, seq_len, 1, steps, peak);
    }
    double bandwidth = 0;
    struct Decode {
      std::string weights;
      int64_t batch;
      ds::bench::DecodeResult result;
    };
    std::vector<Decode> decodes;
    if (run_decode) {
      fmt::print(stderr, "measuring copy bandwidth\n");
      bandwidth = ds::bench::copy_bandwidth(min_time);
      for (const std::string& format : decode_weights)
        for (const int64_t b : decode_batches) {
          fmt::print(stderr, "decode of {} ({} weights): {} sequences of {} tokens, {} timed steps\n", model_config,
                     format, b, context, decode_steps);
          decodes.push_back({format, b, ds::bench::decode(config, b, context, decode_steps, format == "fp8")});
        }
    }

    if (json) {
      nlohmann::json out = {{"threads", threads}, {"device", compute.device}};
      if (peak > 0) out["sgemm_peak_gflops"] = peak;
      if (run_gemm) {
        out["gemm"] = nlohmann::json::array();
        for (size_t i = 0; i < shapes.size(); ++i)
          out["gemm"].push_back({{"name", shapes[i].name},
                                 {"M", shapes[i].M},
                                 {"N", shapes[i].N},
                                 {"K", shapes[i].K},
                                 {"repeats", gemms[i].repeats},
                                 {"gflops", gemms[i].best_gflops},
                                 {"median_gflops", gemms[i].median_gflops},
                                 {"of_peak", gemms[i].best_gflops / peak}});
      }
      if (step)
        out["step"] = {{"config", model_config},
                       {"batch", batch},
                       {"seq_len", seq_len},
                       {"steps", steps},
                       {"step_ms", step->step_ms},
                       {"tokens_per_s", step->tokens_per_s},
                       {"flops_per_token", step->flops_per_token},
                       {"gflops", step->gflops},
                       {"mfu", step->mfu}};
      if (run_decode) {
        out["copy_gb_per_s"] = bandwidth;
        out["decode"] = nlohmann::json::array();
        for (const Decode& run : decodes) {
          const ds::bench::DecodeResult& d = run.result;
          out["decode"].push_back({{"config", model_config},
                                   {"weights", run.weights},
                                   {"batch", run.batch},
                                   {"context", context},
                                   {"weight_bytes", d.weight_bytes},
                                   {"rss_bytes", d.rss_bytes},
                                   {"prefill_tokens_per_s", d.prefill_tokens_per_s},
                                   {"step_ms", d.step_ms},
                                   {"tokens_per_s", d.tokens_per_s},
                                   {"bytes_per_step", d.bytes_per_step},
                                   {"gb_per_s", d.gb_per_s},
                                   {"of_copy", d.gb_per_s / bandwidth},
                                   {"cache_bytes_per_token", d.cache_bytes_per_token},
                                   {"naive_cache_bytes_per_token", d.naive_cache_bytes_per_token}});
        }
      }
      fmt::print("{}\n", out.dump());
      return;
    }
    if (peak > 0) fmt::print("sgemm peak {:.1f} GFLOP/s ({} threads, {})\n", peak, threads, compute.device);
    if (!shapes.empty()) {
      std::vector<Row> rows = {{"gemm", "M", "N", "K", "GFLOP/s", "median", "of peak"}};
      for (size_t i = 0; i < shapes.size(); ++i)
        rows.push_back({shapes[i].name, std::to_string(shapes[i].M), std::to_string(shapes[i].N),
                        std::to_string(shapes[i].K), fmt::format("{:.1f}", gemms[i].best_gflops),
                        fmt::format("{:.1f}", gemms[i].median_gflops), percent(gemms[i].best_gflops / peak)});
      fmt::print("\n");
      print_table(rows);
    }
    if (step) {
      fmt::print("\n");
      print_table(
          {{"config", "batch x seq", "step ms", "tokens/s", "GFLOP/s", "MFU"},
           {model_config, fmt::format("{} x {}", batch, seq_len), fmt::format("{:.1f}", step->step_ms),
            fmt::format("{:.0f}", step->tokens_per_s), fmt::format("{:.1f}", step->gflops), percent(step->mfu)}});
    }
    if (run_decode) {
      fmt::print("\ncopy bandwidth {:.1f} GB/s ({} threads)\n\n", bandwidth, threads);
      std::vector<Row> rows = {{"decode", "batch", "context", "weights", "weight MB", "RSS MB", "prefill tok/s",
                                "step ms", "tokens/s", "GB/s", "of copy", "cache B/token"}};
      for (const Decode& run : decodes) {
        const ds::bench::DecodeResult& d = run.result;
        rows.push_back(
            {model_config, std::to_string(run.batch), std::to_string(context), run.weights,
             fmt::format("{:.1f}", double(d.weight_bytes) * 1e-6), fmt::format("{:.1f}", double(d.rss_bytes) * 1e-6),
             fmt::format("{:.0f}", d.prefill_tokens_per_s), fmt::format("{:.2f}", d.step_ms),
             fmt::format("{:.0f}", d.tokens_per_s), fmt::format("{:.2f}", d.gb_per_s), percent(d.gb_per_s / bandwidth),
             fmt::format("{} (naive {})", d.cache_bytes_per_token, d.naive_cache_bytes_per_token)});
      }
      print_table(rows);
    }
  });
}
