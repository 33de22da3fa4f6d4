#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>
#include "address_limit.h"
#include "temp_dir.h"

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "ds/error.h"
#include "ds/fsutil.h"

using namespace ds;
namespace fs = std::filesystem;

TEST_CASE("write_file_atomic writes and replaces, leaving no temporary file") {
  TempDir dir;
  const std::string path = dir / "a.json";
  write_file_atomic(path, "first");
  CHECK(read_file(path) == "first");
  write_file_atomic(path, "second");
  CHECK(read_file(path) == "second");
  CHECK(dir.count() == 1);
}

TEST_CASE("AtomicFile destroyed before commit leaves the target as it was") {
  TempDir dir;
  const std::string path = dir / "state.json";
  {
    AtomicFile file(path);
    file.write("never seen");
  }
  CHECK_FALSE(fs::exists(path));
  CHECK(dir.count() == 0);

  write_file_atomic(path, "old");
  {
    AtomicFile file(path);
    file.write("new");
    CHECK(dir.count() == 2);  // the target and the temporary file
  }
  CHECK(read_file(path) == "old");
  CHECK(dir.count() == 1);
}

TEST_CASE("AtomicFile streams many writes") {
  TempDir dir;
  const std::string path = dir / "big";
  std::string expected;
  AtomicFile file(path);
  for (int i = 0; i < 1000; ++i) {
    const std::string piece = fmt::format("line {}\n", i);
    file.write(piece);
    expected += piece;
  }
  CHECK_FALSE(fs::exists(path));
  file.commit();
  CHECK(read_file(path) == expected);  // larger than read_file's first buffer
  CHECK(dir.count() == 1);
}

TEST_CASE("file errors name the file") {
  TempDir dir;
  CHECK_THROWS_WITH_AS(read_file(dir / "missing"), doctest::Contains("missing: cannot open"), Error);
  CHECK_THROWS_WITH_AS(read_file(dir.path.string()), doctest::Contains("read failed"), Error);
  CHECK_THROWS_WITH_AS(write_file_atomic(dir / "no/such/dir/x", "x"), doctest::Contains("x: cannot create"), Error);
  CHECK_THROWS_WITH_AS(fsync_dir(dir / "missing"), doctest::Contains("missing: cannot open directory"), Error);
  fsync_dir(dir.path.string());
}

TEST_CASE("AtomicFile writes into a device or FIFO instead of replacing it") {
  TempDir dir;
  write_file_atomic("/dev/null", "discarded");
  CHECK(fs::is_character_file("/dev/null"));

  const std::string fifo = dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  std::string received;
  std::thread reader([&] { received = read_file(fifo); });
  {
    AtomicFile file(fifo);  // opens once the reader has
    file.write("through ");
    file.write("the pipe");
    file.commit();
  }
  reader.join();
  CHECK(received == "through the pipe");
  CHECK(fs::is_fifo(fifo));
  CHECK(dir.count() == 1);  // no temporary file beside it
  CHECK_THROWS_WITH_AS(write_file_atomic(dir.path.string(), "x"), doctest::Contains("cannot open"), Error);
}

TEST_CASE("read_regular_file refuses a FIFO, a device or a directory without blocking") {
  TempDir dir;
  const std::string fifo = dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // No writer ever opens the FIFO: a plain open would wait forever.
  CHECK_THROWS_WITH_AS(read_regular_file(fifo), doctest::Contains("fifo: not a regular file"), Error);
  CHECK_THROWS_WITH_AS(read_regular_file("/dev/zero"), "/dev/zero: not a regular file", Error);
  CHECK_THROWS_WITH_AS(read_regular_file(dir.path.string()), doctest::Contains("not a regular file"), Error);
  CHECK_THROWS_WITH_AS(read_regular_file(dir / "missing"), doctest::Contains("missing: cannot open"), Error);
  write_file_atomic(dir / "a", "text");
  CHECK(read_regular_file(dir / "a") == "text");
}

TEST_CASE("read_file refuses a file larger than memory can hold before reading it") {
  TempDir dir;
  const std::string path = dir / "huge.txt";
  std::ofstream(path).put('x');
  fs::resize_file(path, uint64_t(1) << 30);  // sparse: no disk used
  const AddressSpaceLimit limit(uint64_t(256) << 20);
  CHECK_THROWS_WITH_AS(read_file(path), doctest::Contains((path + ": the whole file needs 1.00 GiB of memory").c_str()),
                       Error);
}
