// ds-quantize: convert a model directory to FP8 (DeepSeek's 128x128 block-scaled e4m3), BF16 or F32; list tensors.
#include <fmt/core.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "common.h"
#include "ds/checkpoint.h"
#include "ds/error.h"
#include "ds/quantize.h"
#include "ds/regex.h"
#include "ds/safetensors.h"

namespace {

using nlohmann::json;

json shape_json(const ds::Shape& shape) { return json(shape); }

// Prints rows as columns padded to their widest cell; the first column left-aligned, the others right-aligned.
void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) {
      width.resize(std::max(width.size(), row.size()));
      width[i] = std::max(width[i], row[i].size());
    }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      if (i == 0)
        line += fmt::format("{:<{}}", row[i], width[i]);
      else
        line += fmt::format("  {:>{}}", row[i], width[i]);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    fmt::print("{}\n", line);
  }
}

void list_model(const std::string& model, bool as_json) {
  const std::string dir = ds::resolve_model_dir(model);
  const ds::safetensors::ModelFiles files(dir);
  json out = json::array();
  std::vector<std::vector<std::string>> rows = {{"name", "dtype", "shape", "bytes"}};
  uint64_t total = 0;
  for (const std::string& name : files.names()) {
    const auto* t = files.find(name);
    const uint64_t bytes = t->end - t->begin;
    total += bytes;
    out.push_back(
        {{"name", name}, {"dtype", ds::dtype_name(t->dtype)}, {"shape", shape_json(t->shape)}, {"bytes", bytes}});
    rows.push_back({name, std::string(ds::dtype_name(t->dtype)), ds::shape_str(t->shape), std::to_string(bytes)});
  }
  if (as_json) {
    fmt::print("{}\n", out.dump());
    return;
  }
  rows.push_back({fmt::format("total ({} tensors)", files.names().size()), "", "", std::to_string(total)});
  print_table(rows);
}

std::string error_str(double x) { return fmt::format("{:.3e}", x); }

void print_report(const ds::quant::ConvertReport& r, double seconds, bool as_json) {
  if (as_json) {
    json tensors = json::array();
    for (const auto& t : r.tensors)
      tensors.push_back({{"name", t.name},
                         {"from", ds::dtype_name(t.from)},
                         {"to", ds::dtype_name(t.to)},
                         {"shape", shape_json(t.shape)},
                         {"bytes_in", t.bytes_in},
                         {"bytes_out", t.bytes_out},
                         {"rel_rms_error", t.error.rel_rms()},
                         {"max_abs_error", t.error.max_abs_error}});
    const json total = {{"bytes_in", r.bytes_in},
                        {"bytes_out", r.bytes_out},
                        {"rel_rms_error", r.error.rel_rms()},
                        {"max_abs_error", r.error.max_abs_error},
                        {"shards", r.shards},
                        {"seconds", seconds}};
    fmt::print("{}\n", json{{"tensors", tensors}, {"total", total}}.dump());
    return;
  }
  std::vector<std::vector<std::string>> rows = {
      {"tensor", "from", "to", "shape", "bytes in", "bytes out", "rel rms err", "max abs err"}};
  for (const auto& t : r.tensors)
    rows.push_back({t.name, std::string(ds::dtype_name(t.from)), std::string(ds::dtype_name(t.to)),
                    ds::shape_str(t.shape), std::to_string(t.bytes_in), std::to_string(t.bytes_out),
                    error_str(t.error.rel_rms()), error_str(t.error.max_abs_error)});
  rows.push_back({fmt::format("total ({} tensors, {} shards)", r.tensors.size(), r.shards), "", "", "",
                  std::to_string(r.bytes_in), std::to_string(r.bytes_out), error_str(r.error.rel_rms()),
                  error_str(r.error.max_abs_error)});
  print_table(rows);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Convert a model directory to FP8 (128x128 block-scaled e4m3 with weight_scale_inv, as DeepSeek's "
      "released checkpoints), BF16 or F32, and report the conversion error; or list its tensors.",
      "ds-quantize"};
  ds::tool::add_version_flag(app);
  ds::tool::add_config_option(app);
  std::string model, out, to = "fp8", shard_size = "5GB";
  ds::quant::ConvertOptions options;
  bool list = false, as_json = false;
  ds::tool::ComputeOptions compute;
  app.add_option("model", model, "model directory, or run directory (its latest checkpoint)")->required();
  app.add_option("-o,--output", out, "output model directory (must not exist)");
  app.add_option("--to", to, "fp8, bf16 or f32")->capture_default_str();
  app.add_option("--keep", options.keep, "also keep tensors whose name matches this regex in their input dtype")
      ->allow_extra_args(false);  // one regex per --keep, so a model path after it stays positional
  app.add_option("--max-shard-size", shard_size, "largest shard (5GB, 100MB, 64KiB; 0 = one file)")
      ->capture_default_str();
  app.add_flag("--list", list, "print the model's tensors (name, dtype, shape, bytes) instead of converting");
  app.add_flag("--json", as_json, "print the report or listing as JSON");
  ds::tool::add_compute_options(app, compute);

  return ds::tool::run(app, argc, argv, [&] {
    ds::tool::apply_compute_options(compute);
    if (list) return list_model(model, as_json);
    if (out.empty()) throw CLI::RequiredError("-o,--output");
    for (const std::string& pattern : options.keep) {
      try {
        ds::Regex(pattern, false, "--keep");
      } catch (const ds::Error& e) {
        throw CLI::ValidationError(e.what());  // already names --keep
      }
    }
    if (!ds::quant::parse_target(to, options.to))
      throw CLI::ValidationError("--to", "'" + to + "' is not fp8, bf16 or f32");
    try {
      options.max_shard_bytes = ds::quant::parse_byte_size(shard_size);
    } catch (const ds::Error& e) {
      throw CLI::ValidationError("--max-shard-size", e.what());
    }

    const bool tty = ::isatty(STDERR_FILENO);
    const auto start = std::chrono::steady_clock::now();
    const auto report = ds::quant::convert_model(model, out, options, [&](size_t done, size_t total) {
      if (tty) fmt::print(stderr, "\r{}/{} tensors", done, total);
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (tty) fmt::print(stderr, "\n");
    print_report(report, seconds, as_json);
    fmt::print(stderr, "wrote {}: {:.1f} MB -> {:.1f} MB in {:.2f} s ({:.0f} MB/s of input)\n", out,
               double(report.bytes_in) / 1e6, double(report.bytes_out) / 1e6, seconds,
               double(report.bytes_in) / 1e6 / std::max(seconds, 1e-9));
  });
}
