#pragma once
// Safetensors files (man/dskit-formats.5) and Hugging Face model directories made of them.
// Reading maps the file and checks every header rule before handing out a byte, so a corrupt or hostile file is a
// ds::Error naming the file and the rule, never a crash or an out-of-bounds read.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ds/fsutil.h"
#include "ds/tensor.h"

namespace ds::safetensors {

// One header entry. [begin, end) is the tensor's byte range in the data buffer that follows the header.
struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// A validated, memory-mapped .safetensors file. Copies share the mapping.
class File {
 public:
  explicit File(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // sorted by name
  const TensorInfo* find(std::string_view name) const;                 // nullptr when absent
  // The tensor's bytes as a view that keeps the mapping alive. The mapping is read-only: writing through the view
  // faults, so convert or copy first. Data that is not aligned to its element size (a header not padded to 8 by its
  // writer) is copied instead, so every returned tensor is aligned.
  Tensor get(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // "__metadata__"

 private:
  std::string path_;
  std::shared_ptr<const std::byte> buffer_;  // the data buffer inside the mapping, which it owns
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes a .safetensors file atomically, laid out as the reference Rust writer does: tensors ordered by descending
// dtype size then name, contiguous, after a header padded with spaces to a multiple of 8, so each tensor is aligned
// to its element size. Streams tensor bytes to the file; nothing is gathered in memory. Names must be unique.
void save(const std::string& path, const NamedTensors& tensors,
          const std::map<std::string, std::string>& metadata = {});

// A tensor of a file to write: what its header entry says.
struct TensorSpec {
  std::string name;
  DType dtype;
  Shape shape;
};

// Writes the same file as save() with the tensor bytes handed over in pieces, for data that is never whole in memory
// (the optimizer state of several ranks, gathered a piece at a time). The constructor checks the tensors and writes
// the header; write() appends bytes in layout() order; commit() makes the file appear once every byte is there.
// Destroyed without commit(), nothing appears.
class Writer {
 public:
  Writer(const std::string& path, const std::vector<TensorSpec>& tensors,
         const std::map<std::string, std::string>& metadata = {});

  const std::vector<TensorInfo>& layout() const { return layout_; }  // in file order
  // The next bytes of tensor `name`: the one being written, or the next one once it is complete.
  void write(std::string_view name, std::span<const std::byte> bytes);
  void commit();  // throws naming the file and tensor when bytes are missing

 private:
  std::string path_;
  std::vector<TensorInfo> layout_;
  size_t current_ = 0;    // the tensor being written
  uint64_t written_ = 0;  // bytes of the data buffer written so far
  std::optional<AtomicFile> file_;
};

// The weights of a Hugging Face model directory: `model.safetensors`, or (when that is absent) the shards listed by
// `model.safetensors.index.json`. Opening checks that every shard is a valid file holding the tensors the index
// places in it.
class ModelFiles {
 public:
  explicit ModelFiles(const std::string& dir);

  std::vector<std::string> names() const;               // every tensor, sorted
  const TensorInfo* find(std::string_view name) const;  // nullptr when absent
  Tensor get(std::string_view name) const;              // as File::get; throws when absent

 private:
  std::string dir_;
  std::vector<File> files_;
  std::map<std::string, size_t, std::less<>> shard_of_;  // tensor name -> index into files_
};

// Writes `tensors` into `dir` (created when missing) in the layout ModelFiles reads. With max_shard_bytes = 0, or when
// everything fits, one `model.safetensors`; otherwise `model-00001-of-0000N.safetensors` shards of at most
// max_shard_bytes each (a bigger tensor gets a shard of its own), filled in the given order, plus
// `model.safetensors.index.json` with metadata.total_size. Every file carries metadata {"format": "pt"} unless
// `metadata` sets it, since transformers refuses files whose metadata lacks it. The other layout's entry file is
// removed, so the directory reads back as written.
void save_model(const std::string& dir, const NamedTensors& tensors, uint64_t max_shard_bytes = 0,
                const std::map<std::string, std::string>& metadata = {});

}  // namespace ds::safetensors
