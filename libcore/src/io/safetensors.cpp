#include "ds/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <set>

#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/jsonl.h"

namespace ds::safetensors {

namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

static_assert(std::endian::native == std::endian::little, "tensor views assume the file's little-endian byte order");

constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr std::string_view kMetadataKey = "__metadata__";
constexpr std::string_view kSingleFile = "model.safetensors";
constexpr std::string_view kIndexFile = "model.safetensors.index.json";
// Valid safetensors dtypes that DType lacks, so the error can say "unsupported" rather than "unknown".
constexpr std::string_view kUnsupportedDTypes[] = {"F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64",
                                                   "U64",     "F4",      "F6_E2M3",     "F6_E3M2"};

// A name as a JSON string: quoted, with control characters escaped, so a message stays on one line.
std::string quote(std::string_view s) {
  return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

// Parses JSON strictly where nlohmann is lenient: it would silently keep the last of duplicate keys, and it stops at a
// NUL byte as if the text ended there, ignoring whatever follows.
json parse_json(std::string_view text, const std::string& name) {
  if (const size_t nul = text.find('\0'); nul != text.npos) fail("{}: invalid JSON: NUL byte at offset {}", name, nul);
  std::vector<std::set<std::string>> keys;  // one set per open object
  const json::parser_callback_t check = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) keys.emplace_back();
    if (event == json::parse_event_t::object_end) keys.pop_back();
    if (event == json::parse_event_t::key && !keys.back().insert(parsed.get<std::string>()).second)
      fail("{}: duplicate key {}", name, quote(parsed.get<std::string>()));
    return true;
  };
  try {
    return json::parse(text, check);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", name, json_error(e));
  }
}

// Checks one header entry against the dtype, shape and size rules (the tiling is checked across entries later).
TensorInfo parse_entry(const std::string& path, const std::string& name, const json& entry, uint64_t buffer_bytes) {
  const std::string what = fmt::format("{}: tensor {}", path, quote(name));
  if (!entry.is_object()) fail("{} is not an object", what);
  const auto field = [&](const char* key) -> const json& {
    const auto it = entry.find(key);
    if (it == entry.end()) fail("{} has no \"{}\"", what, key);
    return *it;
  };
  TensorInfo t;
  t.name = name;

  const json& dtype = field("dtype");
  if (!dtype.is_string()) fail("{}: dtype {} is not a string", what, dtype.dump());
  const std::string& dtype_str = dtype.get_ref<const std::string&>();
  if (!dtype_from_name(dtype_str, t.dtype)) {
    if (std::ranges::find(kUnsupportedDTypes, dtype_str) != std::end(kUnsupportedDTypes))
      fail("{} has dtype {}, which dskit does not support", what, dtype_str);
    fail("{} has unknown dtype {}", what, quote(dtype_str));
  }

  // Every partial product stays below 2^63, so later int64 shape arithmetic cannot overflow either.
  const json& shape = field("shape");
  if (!shape.is_array()) fail("{}: shape {} is not a list", what, shape.dump());
  uint64_t bytes = dtype_size(t.dtype);
  bool empty = false;
  for (const json& d : shape) {
    if (!d.is_number_unsigned()) fail("{}: shape {} is not a list of non-negative integers", what, shape.dump());
    const uint64_t dim = d.get<uint64_t>();
    empty |= dim == 0;
    if (dim != 0 && (__builtin_mul_overflow(bytes, dim, &bytes) || bytes > uint64_t(INT64_MAX)))
      fail("{}: shape {} is too large", what, shape.dump());
    t.shape.push_back(int64_t(dim));
  }
  if (empty) bytes = 0;

  const json& offsets = field("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    fail("{}: data_offsets {} is not a pair of non-negative integers", what, offsets.dump());
  t.begin = offsets[0].get<uint64_t>();
  t.end = offsets[1].get<uint64_t>();
  if (t.end < t.begin || t.end > buffer_bytes)
    fail("{}: data_offsets [{}, {}) are not a range within the {}-byte data buffer", what, t.begin, t.end,
         buffer_bytes);
  if (t.end - t.begin != bytes)
    fail("{}: data_offsets [{}, {}) do not match {} {} ({} bytes)", what, t.begin, t.end, dtype_str, shape_str(t.shape),
         bytes);
  return t;
}

struct Mapping {
  Mapping(void* addr, size_t size) : addr(addr), size(size) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { ::munmap(addr, size); }
  void* addr;
  size_t size;
};

// Maps a whole regular file read-only.
std::shared_ptr<const Mapping> map_file(const std::string& path) {
  const int fd = open_regular(path);
  struct stat st;
  const size_t size = ::fstat(fd, &st) == 0 ? size_t(st.st_size) : 0;
  // An empty mapping is an error in mmap; a file shorter than the size prefix is rejected below anyway.
  void* addr = size >= 8 ? ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  const int mmap_errno = errno;
  ::close(fd);
  if (size < 8) fail("{}: {} bytes is too short for a safetensors file", path, size);
  if (addr == MAP_FAILED) fail("{}: cannot map: {}", path, std::strerror(mmap_errno));
  return std::make_shared<const Mapping>(addr, size);
}
}  // namespace

File::File(const std::string& path) : path_(path) {
  const auto mapping = map_file(path);
  const auto* bytes = static_cast<const std::byte*>(mapping->addr);
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = header_bytes << 8 | uint64_t(bytes[i]);
  if (header_bytes > kMaxHeaderBytes)
    fail("{}: header size {} exceeds the limit of {} bytes", path, header_bytes, kMaxHeaderBytes);
  if (8 + header_bytes > mapping->size)
    fail("{}: header size {} runs past the end of the {}-byte file", path, header_bytes, mapping->size);
  const std::string_view header(reinterpret_cast<const char*>(bytes + 8), header_bytes);
  if (!header.starts_with('{')) fail("{}: header does not start with '{{'", path);
  const json doc = parse_json(header, path);
  const uint64_t buffer_bytes = mapping->size - 8 - header_bytes;

  // A json object iterates in key order, so tensors_ comes out sorted by name.
  for (const auto& [key, value] : doc.items()) {
    if (key != kMetadataKey) {
      tensors_.push_back(parse_entry(path, key, value, buffer_bytes));
      continue;
    }
    if (!value.is_object()) fail("{}: __metadata__ is not an object", path);
    for (const auto& [k, v] : value.items()) {
      if (!v.is_string()) fail("{}: __metadata__ value for {} is not a string", path, quote(k));
      metadata_.emplace(k, v.get<std::string>());
    }
  }

  // Sorted by offset, the tensors must tile the buffer exactly: no holes, no overlaps, nothing after them.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::ranges::sort(by_offset, {}, [](const TensorInfo* t) { return std::pair(t->begin, t->end); });
  uint64_t covered = 0;
  for (const TensorInfo* t : by_offset) {
    if (t->begin < covered)
      fail("{}: tensor {} at [{}, {}) overlaps the data before byte {}", path, quote(t->name), t->begin, t->end,
           covered);
    if (t->begin > covered)
      fail("{}: tensor {} at [{}, {}) leaves a hole after byte {}", path, quote(t->name), t->begin, t->end, covered);
    covered = t->end;
  }
  if (covered != buffer_bytes)
    fail("{}: the tensors cover {} bytes but the data buffer holds {}", path, covered, buffer_bytes);

  buffer_ = std::shared_ptr<const std::byte>(mapping, bytes + 8 + header_bytes);
}

const TensorInfo* File::find(std::string_view name) const {
  const auto it = std::ranges::lower_bound(tensors_, name, {}, &TensorInfo::name);
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

Tensor File::get(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (!t) fail("{}: no tensor {}", path_, quote(name));
  const std::byte* data = buffer_.get() + t->begin;
  if (reinterpret_cast<uintptr_t>(data) % dtype_size(t->dtype) == 0)
    return Tensor::view(t->dtype, t->shape, data, buffer_);
  Tensor copy = Tensor::empty(t->dtype, t->shape);
  std::memcpy(copy.bytes(), data, t->end - t->begin);
  return copy;
}

void save(const std::string& path, const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  std::map<std::string_view, const Tensor*> by_name;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) fail("{}: tensor {} has no data", path, quote(name));
    specs.push_back({name, t.dtype(), t.shape()});
    by_name.emplace(name, &t);
  }
  Writer writer(path, specs, metadata);
  for (const TensorInfo& info : writer.layout()) {
    const Tensor& t = *by_name.at(info.name);
    writer.write(info.name, {t.bytes(), t.nbytes()});
  }
  writer.commit();
}

Writer::Writer(const std::string& path, const std::vector<TensorSpec>& tensors,
               const std::map<std::string, std::string>& metadata)
    : path_(path) {
  std::vector<const TensorSpec*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::ranges::sort(order, [](const TensorSpec* a, const TensorSpec* b) {
    const size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });

  json header = json::object();
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  uint64_t offset = 0;
  for (const TensorSpec* t : order) {
    if (t->name == kMetadataKey) fail("{}: {} is reserved and cannot name a tensor", path, kMetadataKey);
    if (header.contains(t->name)) fail("{}: duplicate tensor name {}", path, quote(t->name));
    const uint64_t bytes = uint64_t(shape_numel(t->shape)) * dtype_size(t->dtype);
    header[t->name] = {
        {"dtype", std::string(dtype_name(t->dtype))}, {"shape", t->shape}, {"data_offsets", {offset, offset + bytes}}};
    layout_.push_back({t->name, t->dtype, t->shape, offset, offset + bytes});
    offset += bytes;
  }
  std::string text = header.dump(-1, ' ', false, json::error_handler_t::replace);
  text.resize((text.size() + 7) / 8 * 8, ' ');  // so the data, and with the order above every tensor, is aligned
  if (text.size() > kMaxHeaderBytes) fail("{}: header of {} bytes exceeds the safetensors limit", path, text.size());

  std::byte size_prefix[8];
  for (int i = 0; i < 8; ++i) size_prefix[i] = std::byte(uint64_t(text.size()) >> (8 * i));
  file_.emplace(path);
  file_->write(size_prefix);
  file_->write(text);
}

void Writer::write(std::string_view name, std::span<const std::byte> bytes) {
  // Tensors are contiguous in layout order: pass over complete ones (an empty tensor needs no write at all).
  while (current_ < layout_.size() && layout_[current_].name != name && written_ == layout_[current_].end) ++current_;
  if (current_ == layout_.size() || layout_[current_].name != name)
    fail("{}: tensor {} written out of order (or not in the file)", path_, quote(name));
  const TensorInfo& t = layout_[current_];
  if (bytes.size() > t.end - written_)
    fail("{}: {} bytes written to tensor {} past its {} bytes", path_, bytes.size() - (t.end - written_), quote(name),
         t.end - t.begin);
  file_->write(bytes);
  written_ += bytes.size();
}

void Writer::commit() {
  const auto missing = std::ranges::find_if(layout_, [&](const TensorInfo& t) { return t.end > written_; });
  if (missing != layout_.end())
    fail("{}: tensor {} lacks {} of its {} bytes", path_, quote(missing->name),
         missing->end - std::max(written_, missing->begin), missing->end - missing->begin);
  file_->commit();
}

ModelFiles::ModelFiles(const std::string& dir) : dir_(dir) {
  const fs::path root(dir);
  if (fs::exists(root / kSingleFile)) {  // as in transformers, a single file wins over an index
    files_.emplace_back((root / kSingleFile).string());
    for (const auto& t : files_[0].tensors()) shard_of_.emplace(t.name, 0);
    return;
  }
  const std::string index_path = (root / kIndexFile).string();
  if (!fs::exists(index_path)) fail("{}: no {} or {}", dir, kSingleFile, kIndexFile);
  const json index = parse_json(read_regular_file(index_path), index_path);
  const auto weight_map = index.find("weight_map");
  if (weight_map == index.end() || !weight_map->is_object()) fail("{}: no \"weight_map\" object", index_path);

  std::map<std::string, size_t> opened;  // shard file name -> index into files_
  for (const auto& [name, shard] : weight_map->items()) {
    if (!shard.is_string()) fail("{}: shard of tensor {} is not a string", index_path, quote(name));
    const std::string& file = shard.get_ref<const std::string&>();
    if (file.find('/') != std::string::npos)
      fail("{}: shard {} is not a file in the model directory", index_path, quote(file));
    const auto [it, added] = opened.try_emplace(file, files_.size());
    if (added) files_.emplace_back((root / file).string());
    if (!files_[it->second].find(name)) fail("{}: tensor {} is not in shard {}", index_path, quote(name), quote(file));
    shard_of_.emplace(name, it->second);
  }
}

std::vector<std::string> ModelFiles::names() const {
  std::vector<std::string> names;
  for (const auto& [name, shard] : shard_of_) names.push_back(name);
  return names;
}

const TensorInfo* ModelFiles::find(std::string_view name) const {
  const auto it = shard_of_.find(name);
  return it == shard_of_.end() ? nullptr : files_[it->second].find(name);
}

Tensor ModelFiles::get(std::string_view name) const {
  const auto it = shard_of_.find(name);
  if (it == shard_of_.end()) fail("{}: no tensor {}", dir_, quote(name));
  return files_[it->second].get(name);
}

void save_model(const std::string& dir, const NamedTensors& tensors, uint64_t max_shard_bytes,
                const std::map<std::string, std::string>& metadata) {
  const fs::path root(dir);
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) fail("{}: cannot create directory: {}", dir, ec.message());
  auto file_metadata = metadata;
  file_metadata.try_emplace("format", "pt");

  // Fill shards in the given order; a tensor that would overflow a non-empty shard starts the next one.
  std::vector<NamedTensors> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& entry : tensors) {
    const uint64_t bytes = entry.second.nbytes();
    if (max_shard_bytes > 0 && !shards.back().empty() && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(entry);
    shard_bytes += bytes;
    total_bytes += bytes;
  }

  std::string_view stale = kIndexFile;
  if (shards.size() == 1) {
    save((root / kSingleFile).string(), tensors, file_metadata);
  } else {
    // Every name is checked before any shard is written, since save() only sees its own shard.
    json weight_map = json::object();
    std::vector<std::string> files;
    for (size_t i = 0; i < shards.size(); ++i) {
      files.push_back(fmt::format("model-{:05}-of-{:05}.safetensors", i + 1, shards.size()));
      for (const auto& [name, t] : shards[i]) {
        if (weight_map.contains(name)) fail("{}: duplicate tensor name {}", dir, quote(name));
        weight_map[name] = files.back();
      }
    }
    for (size_t i = 0; i < shards.size(); ++i) save((root / files[i]).string(), shards[i], file_metadata);
    const json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    write_file_atomic((root / kIndexFile).string(), index.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
    stale = kSingleFile;
  }
  if (fs::remove(root / stale, ec)) fsync_dir(dir);
  if (ec) fail("{}: cannot remove {}: {}", dir, stale, ec.message());
}

}  // namespace ds::safetensors
