#include <doctest/doctest.h>

#include <unistd.h>
#include <zstd.h>
#include "address_limit.h"
#include "temp_dir.h"

#include <filesystem>
#include <random>

#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/shards.h"

using namespace ds;
namespace fs = std::filesystem;

namespace {

// Random ids compress poorly, so a few hundred thousand of them span several read chunks even compressed.
std::vector<uint32_t> random_ids(size_t n) {
  std::mt19937 rng(7);
  std::vector<uint32_t> ids(n);
  for (auto& id : ids) id = rng() % 129280;
  return ids;
}
}  // namespace

TEST_CASE("raw token shards round trip as little-endian uint32") {
  TempDir dir;
  const std::vector<uint32_t> ids = {1, 2, 0xfffffffe, 0, 70000};
  write_tokens(dir / "a.tok", ids);
  CHECK(fs::file_size(dir / "a.tok") == 20);
  CHECK(read_file(dir / "a.tok").substr(0, 4) == std::string("\x01\0\0\0", 4));
  CHECK(read_tokens(dir / "a.tok") == ids);

  write_tokens(dir / "empty.tok", {});
  CHECK(read_tokens(dir / "empty.tok").empty());

  const auto many = random_ids(700'000);  // several read chunks
  write_tokens(dir / "many.tok", many);
  CHECK(read_tokens(dir / "many.tok") == many);
  CHECK(dir.count() == 3);
}

TEST_CASE("zstd token shards round trip, detected by magic rather than name") {
  TempDir dir;
  const auto ids = random_ids(700'000);
  for (int threads : {1, 3}) {
    const std::string path = dir / fmt::format("t{}.tok", threads);  // no .zst: the content decides
    write_tokens(path, ids, 3, threads);
    const std::string bytes = read_file(path);
    CHECK(bytes.size() < ids.size() * 4);
    CHECK(bytes.substr(0, 4) == "\x28\xb5\x2f\xfd");
    CHECK(read_tokens(path) == ids);
  }
  write_tokens(dir / "empty.tok.zst", {}, 19);
  CHECK(read_tokens(dir / "empty.tok.zst").empty());

  // Concatenated frames (as from `cat a.zst b.zst`) read as one stream.
  write_tokens(dir / "a.zst", std::vector<uint32_t>{1, 2}, 1);
  write_tokens(dir / "b.zst", std::vector<uint32_t>{3}, 1);
  write_file_atomic(dir / "ab.zst", read_file(dir / "a.zst") + read_file(dir / "b.zst"));
  CHECK(read_tokens(dir / "ab.zst") == std::vector<uint32_t>{1, 2, 3});
}

TEST_CASE("token shards whose length is not a multiple of 4 are rejected") {
  TempDir dir;
  write_file_atomic(dir / "odd.tok", std::string(10, 'x'));
  CHECK_THROWS_WITH_AS(read_tokens(dir / "odd.tok"), doctest::Contains("odd.tok: 10 bytes is not a whole number"),
                       Error);
  write_file_atomic(dir / "short.tok", "ab");
  CHECK_THROWS_AS(read_tokens(dir / "short.tok"), Error);

  std::string compressed(ZSTD_compressBound(10), '\0');
  compressed.resize(ZSTD_compress(compressed.data(), compressed.size(), "0123456789", 10, 1));
  write_file_atomic(dir / "odd.zst", compressed);
  CHECK_THROWS_WITH_AS(read_tokens(dir / "odd.zst"), doctest::Contains("10 bytes"), Error);
}

TEST_CASE("corrupt zstd token shards are rejected") {
  TempDir dir;
  write_tokens(dir / "good.zst", random_ids(10'000), 3);
  const std::string good = read_file(dir / "good.zst");

  std::string flipped = good;
  for (size_t i = good.size() / 2; i < good.size() / 2 + 16; ++i) flipped[i] = char(~flipped[i]);
  write_file_atomic(dir / "flipped.zst", flipped);
  CHECK_THROWS_WITH_AS(read_tokens(dir / "flipped.zst"), doctest::Contains("flipped.zst: corrupt zstd data"), Error);

  write_file_atomic(dir / "truncated.zst", good.substr(0, good.size() - 7));
  CHECK_THROWS_WITH_AS(read_tokens(dir / "truncated.zst"), doctest::Contains("middle of a frame"), Error);

  write_file_atomic(dir / "junk.zst", good + "junk");
  CHECK_THROWS_WITH_AS(read_tokens(dir / "junk.zst"), doctest::Contains("corrupt zstd data"), Error);

  write_file_atomic(dir / "magic-only.zst", good.substr(0, 4) + std::string(64, '\xff'));
  CHECK_THROWS_AS(read_tokens(dir / "magic-only.zst"), Error);
}

TEST_CASE("a zstd bomb is refused before it outgrows memory") {
  TempDir dir;
  // One frame of 64 MiB of zero ids, 256 times: 16 GiB decompressed from a file of about half a MiB.
  write_tokens(dir / "frame.zst", std::vector<uint32_t>(size_t(16) << 20), 1);
  const std::string frame = read_file(dir / "frame.zst");
  {
    AtomicFile bomb(dir / "bomb.tok.zst");
    for (int i = 0; i < 256; ++i) bomb.write(frame);
    bomb.commit();
  }
  CHECK(fs::file_size(dir / "bomb.tok.zst") < (size_t(1) << 20));
  const AddressSpaceLimit limit(size_t(512) << 20);
  CHECK_THROWS_WITH_AS(read_tokens(dir / "bomb.tok.zst"),
                       doctest::Contains((dir / "bomb.tok.zst: holding the shard needs ").c_str()), Error);
}

TEST_CASE("check_token_range names the first id outside the vocabulary") {
  const std::vector<uint32_t> ids = {5, 9, 10, 11};
  check_token_range("x.tok", ids, 12);
  CHECK_THROWS_WITH_AS(check_token_range("x.tok", ids, 10),
                       "x.tok: token id 10 at position 2 is outside the vocabulary of 10", Error);
}
