// ds-quantize's engine: converts a model directory tensor by tensor into a new one (FP8, BF16 or F32).
//
// Each output shard's header is laid out first (as the reference writer does: descending dtype size, then name), so
// every tensor's offset is known before any data exists; the file is then filled with pwrite as each input tensor is
// converted. A weight and its weight_scale_inv land at different places in the file but come from one quantization
// pass, and only one input tensor and its outputs are in memory at a time.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "ds/config.h"
#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/jsonl.h"
#include "ds/model_dir.h"
#include "ds/quantize.h"
#include "ds/regex.h"

namespace ds::quant {

namespace {
namespace fs = std::filesystem;
using safetensors::TensorInfo;

constexpr std::string_view kScaleSuffix = "_scale_inv";

bool is_float(DType d) {
  return d == DType::F64 || d == DType::F32 || d == DType::BF16 || d == DType::F16 || d == DType::F8_E4M3;
}

std::vector<Regex> compile(const std::vector<std::string>& patterns, const std::string& origin) {
  std::vector<Regex> out;
  for (const std::string& p : patterns) out.emplace_back(p, false, origin);
  return out;
}

bool matches(const std::vector<Regex>& patterns, const std::string& name) {
  return std::ranges::any_of(patterns, [&](const Regex& re) { return re.search(name); });
}

// One output tensor and, once its shard is laid out, where its bytes start in the shard's data buffer.
struct OutputTensor {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t offset = 0;
  uint64_t bytes() const { return uint64_t(shape_numel(shape)) * dtype_size(dtype); }
};

// What becomes of one input tensor (and of the weight_scale_inv of an F8 weight, which travels with it).
struct Item {
  enum Action { Copy, Quantize, Convert } action = Copy;
  const TensorInfo* input = nullptr;
  const TensorInfo* scale = nullptr;
  std::vector<OutputTensor> outputs;  // the converted tensor first, then its scale, if any
};

std::vector<Item> plan(const safetensors::ModelFiles& files, const std::string& dir, const ConvertOptions& options) {
  const auto user_keep = compile(options.keep, "--keep");
  const auto bf16_keep = compile({"e_score_correction_bias"}, "bf16 keep pattern");
  std::vector<Item> items;
  for (const std::string& name : files.names()) {
    const TensorInfo* info = files.find(name);
    if (name.ends_with(kScaleSuffix)) {  // travels with its weight; without an F8 weight the model is broken
      const TensorInfo* weight = files.find(name.substr(0, name.size() - kScaleSuffix.size()));
      if (!weight || weight->dtype != DType::F8_E4M3) fail("{}: tensor '{}' scales no F8_E4M3 weight", dir, name);
      continue;
    }
    Item item;
    item.input = info;
    const std::string scale_name = name + std::string(kScaleSuffix);
    if (info->dtype == DType::F8_E4M3) {
      item.scale = files.find(scale_name);
      if (!item.scale) fail("{}: tensor '{}' is F8_E4M3 but there is no '{}'", dir, name, scale_name);
      if (info->shape.size() != 2 || item.scale->dtype != DType::F32 ||
          item.scale->shape != weight_scale_shape(info->shape))
        fail("{}: tensor '{}' is {} {}, the weight {} needs F32 {}", dir, scale_name, dtype_name(item.scale->dtype),
             shape_str(item.scale->shape), shape_str(info->shape), shape_str(weight_scale_shape(info->shape)));
    }

    DType to = info->dtype;
    if (is_float(info->dtype) && !matches(user_keep, name)) {
      switch (options.to) {
        case Target::FP8:
          if (info->dtype != DType::F8_E4M3 && info->shape.size() == 2 && name.ends_with(".weight") && !fp8_keeps(name))
            item.action = Item::Quantize;
          break;
        case Target::BF16:
          if (!matches(bf16_keep, name)) to = DType::BF16;
          break;
        case Target::F32:
          to = DType::F32;
          break;
      }
      if (to != info->dtype) item.action = Item::Convert;
    }
    if (item.action == Item::Quantize) {
      item.outputs = {{name, DType::F8_E4M3, info->shape}, {scale_name, DType::F32, weight_scale_shape(info->shape)}};
    } else {
      item.outputs = {{name, to, info->shape}};
      if (item.action == Item::Copy && item.scale) item.outputs.push_back({scale_name, DType::F32, item.scale->shape});
    }
    items.push_back(std::move(item));
  }
  return items;
}

// A safetensors file written out of order: the header first, then each tensor's bytes at its offset.
class ShardWriter {
 public:
  ShardWriter(std::string path, std::vector<OutputTensor*> tensors) : path_(std::move(path)) {
    std::ranges::sort(tensors, [](const OutputTensor* a, const OutputTensor* b) {
      const size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
      return sa != sb ? sa > sb : a->name < b->name;
    });
    nlohmann::json header = {{"__metadata__", {{"format", "pt"}}}};
    uint64_t offset = 0;
    for (OutputTensor* t : tensors) {
      t->offset = offset;
      header[t->name] = {{"dtype", std::string(dtype_name(t->dtype))},
                         {"shape", t->shape},
                         {"data_offsets", {offset, offset + t->bytes()}}};
      offset += t->bytes();
    }
    std::string text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    text.resize((text.size() + 7) / 8 * 8, ' ');  // so the data, and with the order above every tensor, is aligned
    data_start_ = 8 + text.size();

    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("{}: cannot create: {}", path_, std::strerror(errno));
    std::string prefix(8, '\0');
    for (int i = 0; i < 8; ++i) prefix[size_t(i)] = char(uint64_t(text.size()) >> (8 * i));
    write_at(0, (prefix + text).data(), data_start_);
    if (::ftruncate(fd_, off_t(data_start_ + offset)) != 0) fail("{}: cannot size: {}", path_, std::strerror(errno));
  }
  ~ShardWriter() {
    if (fd_ >= 0) ::close(fd_);
  }
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void write(const OutputTensor& t, const Tensor& data) { write_at(data_start_ + t.offset, data.bytes(), t.bytes()); }

  void finish() {
    const bool ok = ::fsync(fd_) == 0;
    const int saved = errno;
    ::close(fd_);
    fd_ = -1;
    if (!ok) fail("{}: fsync failed: {}", path_, std::strerror(saved));
  }

 private:
  void write_at(uint64_t offset, const void* data, uint64_t size) {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t n = ::pwrite(fd_, p, std::min<uint64_t>(size, 1u << 30), off_t(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("{}: write failed: {}", path_, n < 0 ? std::strerror(errno) : "no progress");
      p += n, offset += uint64_t(n), size -= uint64_t(n);
    }
  }

  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;
};

// Drops a converted input tensor's pages from this process, so resident memory stays near one tensor however large
// the model. A tensor from ModelFiles is a view of a private, read-only file mapping (dropped pages would simply be
// read again) or, when misaligned in its file, a private copy about to be freed; either way nothing is lost.
void release_pages(const Tensor& t) {
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE)), start = uintptr_t(t.bytes());
  const uintptr_t begin = (start + page - 1) / page * page, end = (start + t.nbytes()) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

TensorReport convert_item(const Item& item, const safetensors::ModelFiles& files, const std::string& dir,
                          ShardWriter& writer) {
  const std::string& name = item.input->name;
  TensorReport report;
  report.name = name, report.from = item.input->dtype, report.to = item.outputs[0].dtype;
  report.shape = item.input->shape;
  report.bytes_in = item.input->end - item.input->begin + (item.scale ? item.scale->end - item.scale->begin : 0);
  for (const OutputTensor& o : item.outputs) report.bytes_out += o.bytes();

  const Tensor input = files.get(name);
  const Tensor scale = item.scale ? files.get(item.scale->name) : Tensor();
  try {
    switch (item.action) {
      case Item::Copy:
        writer.write(item.outputs[0], input);
        if (item.scale) writer.write(item.outputs[1], scale);
        break;
      case Item::Quantize: {
        const QuantizedWeight q = quantize_weight(input, &report.error);
        writer.write(item.outputs[0], q.weight);
        writer.write(item.outputs[1], q.scale_inv);
        break;
      }
      case Item::Convert: {
        const Tensor values = item.scale ? dequantize_weight(input, scale, name) : input;
        // Dequantized values are exact in F32; anything else is measured against the input's values.
        const bool exact = values.dtype() == report.to;
        writer.write(item.outputs[0], exact ? values : convert(values, report.to, &report.error));
        break;
      }
    }
  } catch (const Error& e) {
    fail("{}: tensor '{}': {}", dir, name, e.what());
  }
  release_pages(input);
  if (item.scale) release_pages(scale);
  return report;
}

bool inside(const fs::path& path, const fs::path& base) {
  return std::mismatch(base.begin(), base.end(), path.begin(), path.end()).first == base.end();
}

fs::path absolute_path(const std::string& path) {
  fs::path p = fs::weakly_canonical(fs::absolute(path));
  return p.has_filename() ? p : p.parent_path();  // "out/" names the directory "out"
}

// A directory built next to its final path and renamed there when complete; removed if never committed.
class StagingDir {
 public:
  explicit StagingDir(fs::path final_path) : final_(std::move(final_path)) {
    std::error_code ec;
    fs::create_directories(final_.parent_path(), ec);
    if (ec) fail("{}: cannot create directory: {}", final_.parent_path().string(), ec.message());
    path_ = final_.parent_path() / fmt::format(".{}.tmp-{}", final_.filename().string(), ::getpid());
    fs::remove_all(path_, ec);
    if (!fs::create_directory(path_, ec)) fail("{}: cannot create directory: {}", path_.string(), ec.message());
  }
  ~StagingDir() {
    std::error_code ec;
    if (!committed_) fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

  void commit() {
    fsync_dir(path_.string());
    std::error_code ec;
    fs::rename(path_, final_, ec);
    if (ec) fail("{}: cannot move the finished model into place: {}", final_.string(), ec.message());
    committed_ = true;
    fsync_dir(final_.parent_path().string());
  }

 private:
  fs::path final_, path_;
  bool committed_ = false;
};

// config.json as the input has it (key order kept), with quantization_config and torch_dtype matching the output.
std::string output_config(const std::string& dir, Target to, bool has_fp8) {
  const std::string path = dir + "/config.json";
  nlohmann::ordered_json config;
  try {
    config = nlohmann::ordered_json::parse(read_regular_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid JSON: {}", path, json_error(e));
  }
  if (has_fp8)
    config["quantization_config"] = {{"quant_method", "fp8"},
                                     {"fmt", "e4m3"},
                                     {"activation_scheme", "dynamic"},
                                     {"weight_block_size", {kBlock, kBlock}}};
  else
    config.erase("quantization_config");
  if (to != Target::FP8) config["torch_dtype"] = to == Target::BF16 ? "bfloat16" : "float32";
  return config.dump(2) + "\n";
}

// Files a model directory carries besides its config and weights: tokenizer, generation defaults, model code.
bool is_companion_file(const fs::path& file) {
  static const std::set<std::string> names = {"tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                              "special_tokens_map.json", "generation_config.json"};
  return names.contains(file.filename().string()) || file.extension() == ".py";
}

}  // namespace

bool parse_target(std::string_view name, Target& out) {
  if (name == "fp8")
    out = Target::FP8;
  else if (name == "bf16")
    out = Target::BF16;
  else if (name == "f32")
    out = Target::F32;
  else
    return false;
  return true;
}

const std::vector<std::string>& fp8_keep_patterns() {
  static const std::vector<std::string> patterns = {
      R"(embed_tokens\.)",          R"(^lm_head\.)",  R"(norm\.weight$)",   R"(\.mlp\.gate\.weight$)",
      R"(e_score_correction_bias)", R"(\.eh_proj\.)", R"(\.shared_head\.)",
  };
  return patterns;
}

bool fp8_keeps(const std::string& name) {
  static const std::vector<Regex> patterns = compile(fp8_keep_patterns(), "fp8 keep pattern");
  return matches(patterns, name);
}

ConvertReport convert_model(const std::string& model, const std::string& out, const ConvertOptions& options,
                            const std::function<void(size_t, size_t)>& progress) {
  const std::string dir = resolve_model_dir(model);
  const fs::path target = absolute_path(out);
  for (const fs::path& input : {absolute_path(model), absolute_path(dir)})
    if (inside(target, input)) fail("{}: would overwrite the input model {}", out, model);
  if (fs::exists(fs::symlink_status(target))) fail("{}: already exists; give a new directory", out);
  load_config(dir + "/config.json", 0);  // refuse what is not a model before any work; tensors are streamed
  const safetensors::ModelFiles files(dir);
  std::vector<Item> items = plan(files, dir, options);

  // Shards filled in name order; a weight and its scale stay together.
  std::vector<std::vector<Item*>> shards(1);
  uint64_t shard_bytes = 0;
  for (Item& item : items) {
    uint64_t bytes = 0;
    for (const OutputTensor& o : item.outputs) bytes += o.bytes();
    if (options.max_shard_bytes > 0 && !shards.back().empty() && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&item);
    shard_bytes += bytes;
  }

  StagingDir staging(target);
  ConvertReport report;
  report.shards = shards.size();
  nlohmann::json weight_map = nlohmann::json::object();
  bool has_fp8 = false;
  size_t done = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1 ? "model.safetensors"
                                                : fmt::format("model-{:05}-of-{:05}.safetensors", s + 1, shards.size());
    std::vector<OutputTensor*> outputs;
    for (Item* item : shards[s])
      for (OutputTensor& o : item->outputs) {
        outputs.push_back(&o);
        weight_map[o.name] = file;
        has_fp8 |= o.dtype == DType::F8_E4M3;
      }
    ShardWriter writer(staging / file, outputs);
    for (const Item* item : shards[s]) {
      TensorReport r = convert_item(*item, files, dir, writer);
      report.bytes_in += r.bytes_in;
      report.bytes_out += r.bytes_out;
      report.error.merge(r.error);
      report.tensors.push_back(std::move(r));
      if (progress) progress(++done, items.size());
    }
    writer.finish();
  }
  if (shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", report.bytes_out}}}, {"weight_map", weight_map}};
    write_file_atomic(staging / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  write_file_atomic(staging / "config.json", output_config(dir, options.to, has_fp8));
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file() && is_companion_file(entry.path()))
      write_file_atomic(staging / entry.path().filename().string(), read_file(entry.path().string()));
  staging.commit();
  return report;
}

uint64_t parse_byte_size(std::string_view text) {
  static const Regex pattern(R"((?i)\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?)?b?\s*)", false, "byte size");
  const auto m = pattern.whole_match(text);
  if (!m) fail("'{}' is not a size (examples: 5GB, 100MB, 64KiB, 1000)", text);
  std::string unit((*m)[2]);
  std::ranges::transform(unit, unit.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  const double base = unit.size() == 2 ? 1024.0 : 1000.0;
  const int power = unit.empty() ? 0 : int(std::string_view("kmgt").find(unit[0])) + 1;
  const double bytes = std::stod(std::string((*m)[1])) * std::pow(base, power);
  if (bytes >= 1.8e19) fail("'{}' is too large a size", text);
  return uint64_t(std::round(bytes));
}

}  // namespace ds::quant
