#pragma once
// File helpers with the guarantees checkpoints and tools rely on: whole or nothing writes, and "-" as stdin/stdout.
// Every failure throws ds::Error naming the file and the system's reason.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace ds {

// A file read front to back; "-" is stdin. Works on pipes, so nothing here seeks or maps.
class InputFile {
 public:
  explicit InputFile(const std::string& path);
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  const std::string& name() const { return name_; }  // for messages: the path, or "<stdin>"
  uint64_t size_hint() const { return size_hint_; }  // bytes of a regular file; 0 for a pipe or terminal
  // Fills `buf`; returns fewer bytes only at the end of the file.
  size_t read(std::span<std::byte> buf);

 private:
  std::string name_;
  int fd_ = -1;
  uint64_t size_hint_ = 0;
};

// A file that appears at `path` complete or not at all. Bytes go to `path.tmp.<pid>` in the same directory (so the
// rename stays on one filesystem); commit() fsyncs it, renames it over `path` and fsyncs the directory, so after a
// crash `path` holds either the old or the new contents. Destroyed without commit(), the temporary file is removed and
// `path` is untouched. "-" writes straight to stdout, where there is nothing to undo.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(std::span<const std::byte> data);
  void write(std::string_view text) { write(std::as_bytes(std::span(text.data(), text.size()))); }
  void commit();

 private:
  std::string path_;
  std::string tmp_;  // empty for stdout and once renamed
  int fd_ = -1;
};

// The whole file as bytes; "-" reads stdin.
std::string read_file(const std::string& path);

// Replaces `path` atomically with `data` (see AtomicFile).
void write_file_atomic(const std::string& path, std::span<const std::byte> data);
inline void write_file_atomic(const std::string& path, std::string_view text) {
  write_file_atomic(path, std::as_bytes(std::span(text.data(), text.size())));
}

// Makes a rename or unlink inside `dir` durable.
void fsync_dir(const std::string& dir);

}  // namespace ds
