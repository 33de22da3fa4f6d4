#include "ds/fsutil.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "ds/error.h"
#include "ds/memory.h"

namespace ds {

namespace {
[[noreturn]] void fail_errno(const std::string& name, std::string_view what) {
  fail("{}: {}: {}", name, what, std::strerror(errno));
}

std::string parent_dir(const std::string& path) {
  const std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}
}  // namespace

int open_regular(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer before it can be refused.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) fail_errno(path, "cannot open");
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || ::fcntl(fd, F_SETFL, 0) != 0) {
    ::close(fd);
    fail("{}: not a regular file", path);
  }
  return fd;
}

InputFile::InputFile(const std::string& path, bool regular_only) {
  if (regular_only) {
    name_ = path;
    fd_ = open_regular(path);
  } else if (path == "-") {
    name_ = "<stdin>";
    fd_ = STDIN_FILENO;
  } else {
    name_ = path;
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail_errno(name_, "cannot open");
  }
  struct stat st;
  if (::fstat(fd_, &st) == 0 && S_ISREG(st.st_mode)) size_hint_ = uint64_t(st.st_size);
}

InputFile::~InputFile() {
  if (fd_ != STDIN_FILENO) ::close(fd_);
}

size_t InputFile::read(std::span<std::byte> buf) {
  size_t done = 0;
  while (done < buf.size()) {
    const ssize_t n = ::read(fd_, buf.data() + done, buf.size() - done);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno(name_, "read failed");
    }
    done += size_t(n);
  }
  return done;
}

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  if (path == "-") {
    path_ = "<stdout>";
    fd_ = STDOUT_FILENO;
    return;
  }
  if (struct stat st; ::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);  // a directory fails here, with EISDIR
    if (fd_ < 0) fail_errno(path_, "cannot open");
    direct_ = true;
    return;
  }
  tmp_ = fmt::format("{}.tmp.{}", path, ::getpid());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd_ < 0) {
    tmp_.clear();  // nothing to remove
    fail_errno(path_, "cannot create");
  }
}

AtomicFile::~AtomicFile() {
  if (direct_ && fd_ >= 0) ::close(fd_);
  if (tmp_.empty()) return;
  if (fd_ >= 0) ::close(fd_);
  ::unlink(tmp_.c_str());
}

void AtomicFile::write(std::span<const std::byte> data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd_, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno(path_, "write failed");
    }
    data = data.subspan(size_t(n));
  }
}

void AtomicFile::commit() {
  if (direct_) {
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail_errno(path_, "close failed");
  }
  if (tmp_.empty()) return;  // stdout, or written in place
  if (::fsync(fd_) != 0) fail_errno(path_, "fsync failed");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail_errno(path_, "close failed");
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail_errno(path_, "cannot replace");
  tmp_.clear();
  fsync_dir(parent_dir(path_));
}

namespace {
std::string read_all(InputFile& in) {
  std::string out;
  auto grow = [&](uint64_t size) {  // checked first: a pipe or file too large to hold is an error, not bad_alloc
    require_memory(double(size), fmt::format("{}: the whole file", in.name()));
    out.resize(size_t(size));
  };
  grow(std::max<uint64_t>(in.size_hint() + 1, 4096));  // a spare byte: a regular file ends in one read
  size_t size = 0;
  for (;;) {
    size += in.read(std::as_writable_bytes(std::span(out.data() + size, out.size() - size)));
    if (size < out.size()) break;
    grow(out.size() * 2);
  }
  out.resize(size);
  return out;
}
}  // namespace

std::string read_file(const std::string& path) {
  InputFile in(path);
  return read_all(in);
}

std::string read_regular_file(const std::string& path) {
  InputFile in(path, true);
  return read_all(in);
}

void write_file_atomic(const std::string& path, std::span<const std::byte> data) {
  AtomicFile file(path);
  file.write(data);
  file.commit();
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail_errno(dir, "cannot open directory");
  // Some filesystems cannot fsync a directory (EINVAL); their renames are as durable as they get.
  const bool ok = ::fsync(fd) == 0 || errno == EINVAL;
  const int saved = errno;
  ::close(fd);
  errno = saved;
  if (!ok) fail_errno(dir, "fsync failed");
}

}  // namespace ds
