#include "ds/checkpoint.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/safetensors.h"

namespace fs = std::filesystem;

namespace ds {

namespace {
// Pieces of the moments gathered over the ranks: 16 MiB, few enough collectives and little memory.
constexpr int64_t kStateChunk = int64_t(1) << 22;
constexpr std::pair<const char*, AdamW::Moment> kMoments[] = {{"exp_avg", AdamW::Moment::First},
                                                              {"exp_avg_sq", AdamW::Moment::Second}};

// One moment of optimizer.safetensors as a view of the mapped file, checked to hold `size` F32 values.
Tensor optimizer_tensor(const safetensors::File& file, const std::string& dir, const char* name, size_t size) {
  const Tensor t = file.get(name);
  if (t.dtype() != DType::F32 || size_t(t.numel()) != size)
    fail("{}/optimizer.safetensors: '{}' does not match the model", dir, name);
  return t;
}
std::span<const float> values(const Tensor& t) { return {t.data<float>(), size_t(t.numel())}; }
}  // namespace

void write_optimizer_state(const std::string& dir, const AdamW& optimizer) {
  std::optional<safetensors::Writer> writer;
  if (optimizer.rank() == 0) {
    std::vector<safetensors::TensorSpec> specs;
    for (const auto& moment : kMoments) specs.push_back({moment.first, DType::F32, {optimizer.size()}});
    writer.emplace(dir + "/optimizer.safetensors", specs);
  }
  for (const auto& [name, moment] : kMoments) {
    const char* tensor = name;  // a lambda may not capture a structured binding
    optimizer.gather_state(moment, kStateChunk, [&](std::span<const float> piece) {
      if (writer) writer->write(tensor, std::as_bytes(piece));
    });
  }
  if (writer) writer->commit();
}

std::pair<std::vector<float>, std::vector<float>> read_optimizer_state(const std::string& dir, size_t size) {
  const safetensors::File file(dir + "/optimizer.safetensors");
  auto read = [&](const char* name) {
    const Tensor t = optimizer_tensor(file, dir, name, size);
    return std::vector<float>(t.data<float>(), t.data<float>() + size);
  };
  return {read("exp_avg"), read("exp_avg_sq")};
}

void load_optimizer_state(const std::string& dir, AdamW& optimizer) {
  const safetensors::File file(dir + "/optimizer.safetensors");
  const auto size = size_t(optimizer.size());
  optimizer.load_state(values(optimizer_tensor(file, dir, "exp_avg", size)),
                       values(optimizer_tensor(file, dir, "exp_avg_sq", size)));
}

std::string config_hash(const ModelConfig& config) {
  // FNV-1a over the canonical JSON: stable across runs and platforms.
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : config_to_json(config).dump()) h = (h ^ ch) * 1099511628211ull;
  return fmt::format("{:016x}", h);
}

RunDir::RunDir(std::string path) : path_(std::move(path)) {}

void RunDir::prepare() const {
  std::error_code ec;
  fs::create_directories(path_ + "/checkpoints", ec);
  if (ec) fail("{}: cannot create run directory: {}", path_, ec.message());
  if (access((path_ + "/checkpoints").c_str(), W_OK) != 0 || access(path_.c_str(), W_OK) != 0)
    fail("{}: run directory is not writable", path_);
}

std::optional<std::string> RunDir::latest() const {
  std::error_code ec;
  if (!fs::is_symlink(path_ + "/latest", ec)) return std::nullopt;
  const fs::path target = fs::canonical(path_ + "/latest", ec);
  if (ec) fail("{}/latest: dangling link", path_);
  return target.string();
}

std::string RunDir::save(int64_t step, int keep, const std::function<void(const std::string&)>& write_files) const {
  const std::string name = fmt::format("step-{:08d}", step);
  const std::string checkpoints = path_ + "/checkpoints";
  const std::string tmp = fmt::format("{}/.tmp-{}-{}", checkpoints, name, getpid());
  const std::string final_dir = checkpoints + "/" + name;
  std::error_code ec;
  // Those of writers killed mid-checkpoint are removed when a run is opened (ds/run.h).
  fs::create_directories(tmp);
  try {
    write_files(tmp);  // every file is written with AtomicFile, so it is fsynced
    fsync_dir(tmp);
  } catch (...) {  // a full disk, say: latest still points at the last complete checkpoint
    fs::remove_all(tmp, ec);
    throw;
  }
  if (fs::exists(final_dir)) {  // a checkpoint of the same step (a resumed run saving again) is replaced
    const std::string old = tmp + ".old";
    fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fs::remove_all(old);
  } else {
    fs::rename(tmp, final_dir);
  }
  fsync_dir(checkpoints);

  const std::string link_tmp = fmt::format("{}/.latest.tmp.{}", path_, getpid());
  fs::remove(link_tmp, ec);
  fs::create_directory_symlink("checkpoints/" + name, link_tmp);
  fs::rename(link_tmp, path_ + "/latest");
  fsync_dir(path_);

  if (keep > 0) {
    std::vector<std::string> steps;
    for (const auto& entry : fs::directory_iterator(checkpoints)) {
      const std::string n = entry.path().filename().string();
      if (n.starts_with("step-")) steps.push_back(n);
    }
    std::sort(steps.begin(), steps.end());
    for (size_t i = 0; i + size_t(keep) < steps.size(); ++i)
      if (steps[i] != name) fs::remove_all(checkpoints + "/" + steps[i]);
  }
  return final_dir;
}

std::string save_checkpoint(const RunDir& run, int64_t step, int keep, const Model<float>& model,
                            const Tokenizer& tokenizer, const AdamW& optimizer,
                            const std::function<void(const std::string&)>& write_state) {
  if (optimizer.rank() != 0) {
    write_optimizer_state("", optimizer);  // this rank's part of rank 0's file
    return "";
  }
  return run.save(step, keep, [&](const std::string& tmp) {
    // The moments first: the other ranks wait in their collectives only until they are written.
    write_optimizer_state(tmp, optimizer);
    write_model_dir(tmp, model, tokenizer);
    write_state(tmp);
  });
}

void RunDir::append_metrics(const nlohmann::json& record) const {
  std::ofstream out(path_ + "/metrics.jsonl", std::ios::app);
  out << record.dump() << "\n";
  if (!out) fail("{}/metrics.jsonl: write failed", path_);
}

}  // namespace ds
