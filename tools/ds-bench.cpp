// ds-bench: sgemm and training-step throughput, as ratios to the sgemm peak measured in the same run.
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "common.h"
#include "ds/bench.h"
#include "ds/config.h"
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Measure sgemm and training-step throughput on this machine. GEMMs are reported against the sgemm\n"
               "peak measured in the same run; the training step's model FLOP utilisation (MFU) likewise.",
               "ds-bench"};
  ds::tool::add_version_flag(app);
  app.set_config("--config", "", "read options from a TOML/INI file");
  bool json = false;
  std::string model_config = "demo", only;
  int64_t batch = 8, seq_len = 256;
  int steps = 5;
  double min_time = 0.5;
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
  app.add_option("--batch", batch, "sequences per training step")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seq-len", seq_len, "tokens per sequence")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--steps", steps, "timed training steps, after one warm-up step")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--gemm-shapes", shape_specs,
                 "comma-separated MxNxK list; default: the model's GEMMs at batch x seq-len tokens and "
                 "DeepSeek-V3's at 128 tokens")
      ->delimiter(',')
      ->check(shape_check)
      ->capture_default_str();
  app.add_option("--min-time", min_time, "seconds to time each GEMM shape for, at least")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--only", only, "measure only the GEMMs or only the training step (gemm, step)")
      ->check(CLI::IsMember({"gemm", "step"}));
  ds::tool::add_compute_options(app, compute);

  return ds::tool::run(app, argc, argv, [&] {
    ds::tool::apply_compute_options(compute);
    const ds::ModelConfig config = ds::resolve_model_config(model_config);
    const bool run_step = only != "gemm";
    if (run_step && seq_len > config.max_position_embeddings)
      throw CLI::ValidationError("--seq-len", fmt::format("{} exceeds the model's max_position_embeddings {}",
                                                          seq_len, config.max_position_embeddings));
    std::vector<ds::bench::GemmShape> shapes;
    if (only != "step")
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
    const double peak = ds::bench::sgemm_peak(min_time);
    std::vector<ds::bench::GemmResult> gemms;
    for (const auto& s : shapes) {
      fmt::print(stderr, "gemm {} {}x{}x{}\n", s.name, s.M, s.N, s.K);
      gemms.push_back(ds::bench::gemm(s.M, s.N, s.K, min_time));
    }
    std::optional<ds::bench::StepResult> step;
    if (run_step) {
      fmt::print(stderr, "training step of {} on {} x {} tokens: 1 warm-up and {} timed steps\n", model_config,
                 batch, seq_len, steps);
      step = ds::bench::train_step(config, batch, seq_len, 1, steps, peak);
    }

    if (json) {
      nlohmann::json out = {{"threads", threads}, {"device", compute.device}, {"sgemm_peak_gflops", peak}};
      if (only != "step") {
        out["gemm"] = nlohmann::json::array();
        for (size_t i = 0; i < shapes.size(); ++i)
          out["gemm"].push_back({{"name", shapes[i].name}, {"M", shapes[i].M}, {"N", shapes[i].N}, {"K", shapes[i].K},
                                 {"repeats", gemms[i].repeats}, {"gflops", gemms[i].best_gflops},
                                 {"median_gflops", gemms[i].median_gflops}, {"of_peak", gemms[i].best_gflops / peak}});
      }
      if (step)
        out["step"] = {{"config", model_config}, {"batch", batch}, {"seq_len", seq_len}, {"steps", steps},
                       {"step_ms", step->step_ms}, {"tokens_per_s", step->tokens_per_s},
                       {"flops_per_token", step->flops_per_token}, {"gflops", step->gflops}, {"mfu", step->mfu}};
      fmt::print("{}\n", out.dump());
      return;
    }
    fmt::print("sgemm peak {:.1f} GFLOP/s ({} threads, {})\n", peak, threads, compute.device);
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
      print_table({{"config", "batch x seq", "step ms", "tokens/s", "GFLOP/s", "MFU"},
                   {model_config, fmt::format("{} x {}", batch, seq_len), fmt::format("{:.1f}", step->step_ms),
                    fmt::format("{:.0f}", step->tokens_per_s), fmt::format("{:.1f}", step->gflops),
                    percent(step->mfu)}});
    }
  });
}
