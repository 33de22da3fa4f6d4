#pragma once
// File helpers with the guarantees checkpoints and tools rely on: whole or nothing writes, and "-" as stdin/stdout.
// Every failure throws ds::Error naming the file and the system's reason.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace ds {

// Opens `path` for reading where only a regular file will do (it is mapped, sized or must not block): a FIFO, a
// device or a directory is refused with "PATH: not a regular file", without waiting for a FIFO's writer. Returns
// the descriptor, for the caller to close.
int open_regular(const std::string& path);

// A file read front to back; "-" is stdin. Works on pipes, so nothing here seeks or maps, unless `regular_only`
// (see open_regular; "-" is then no file either).
class InputFile {
 public:
  explicit InputFile(const std::string& path, bool regular_only = false);
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
// `path` is untouched. "-" writes straight to stdout, and a `path` that exists but is not a regular file (a device
// such as /dev/null, a FIFO) is written into, never replaced: there is nothing to undo.
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
  std::string tmp_;  // empty for stdout, for a file written in place, and once renamed
  int fd_ = -1;
  bool direct_ = false;  // written in place: not a regular file
};

// The whole file as bytes; "-" reads stdin.
std::string read_file(const std::string& path);
// The whole of a regular file (see open_regular): for files such as configs that have no business being a pipe.
std::string read_regular_file(const std::string& path);

// Replaces `path` atomically with `data` (see AtomicFile).
void write_file_atomic(const std::string& path, std::span<const std::byte> data);
inline void write_file_atomic(const std::string& path, std::string_view text) {
  write_file_atomic(path, std::as_bytes(std::span(text.data(), text.size())));
}

// Makes a rename or unlink inside `dir` durable.
void fsync_dir(const std::string& dir);

}  // namespace ds
