#include <doctest/doctest.h>

#include <fmt/ranges.h>
#include <sys/stat.h>
#include <unistd.h>
#include "temp_dir.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <random>

#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/safetensors.h"

using namespace ds;
using namespace ds::safetensors;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A tensor whose bytes are a pattern that depends on `seed`, so mixed-up tensors are told apart.
Tensor patterned(DType dtype, Shape shape, int seed) {
  Tensor t = Tensor::empty(dtype, std::move(shape));
  for (size_t i = 0; i < t.nbytes(); ++i) t.bytes()[i] = std::byte(i * 7 + size_t(seed) * 31);
  return t;
}

bool same(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.bytes(), b.bytes(), a.nbytes()) == 0;
}

// A safetensors file written by hand: the size prefix (the header's length unless given), the header, the data.
std::string raw_file(const std::string& header, const std::string& data, uint64_t header_size = ~uint64_t(0)) {
  const uint64_t n = header_size == ~uint64_t(0) ? header.size() : header_size;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char(n >> (8 * i));
  return out + header + data;
}

// The header of a file on disk and the byte where its data starts.
std::pair<json, size_t> read_header(const std::string& path) {
  const std::string bytes = read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return {json::parse(bytes.substr(8, n)), 8 + n};
}
}  // namespace

TEST_CASE("safetensors round trip of every dtype, scalars and empty tensors") {
  TempDir dir;
  const DType dtypes[] = {DType::F64, DType::F32, DType::BF16, DType::F16, DType::F8_E4M3, DType::I64, DType::I32,
                          DType::U32, DType::I16, DType::U16,  DType::I8,  DType::U8,      DType::BOOL};
  NamedTensors tensors;
  int seed = 0;
  for (DType d : dtypes) tensors.emplace_back(std::string(dtype_name(d)), patterned(d, {2, 3}, seed++));
  tensors.emplace_back("scalar", Tensor::from_f32(std::vector<float>{3.5f}, {}));
  tensors.emplace_back("empty_rows", Tensor::zeros(DType::F32, {0, 4}));
  tensors.emplace_back("empty_cols", Tensor::zeros(DType::BF16, {3, 0}));
  save(dir / "all.safetensors", tensors, {{"format", "pt"}, {"note", "x"}});

  const File file(dir / "all.safetensors");
  CHECK(file.tensors().size() == tensors.size());
  CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "x"}});
  CHECK(std::ranges::is_sorted(file.tensors(), {}, &TensorInfo::name));
  for (const auto& [name, t] : tensors) {
    CAPTURE(name);
    REQUIRE(file.find(name) != nullptr);
    CHECK(file.find(name)->end - file.find(name)->begin == t.nbytes());
    CHECK(same(file.get(name), t));
    CHECK(reinterpret_cast<uintptr_t>(file.get(name).bytes()) % dtype_size(t.dtype()) == 0);
  }
  CHECK(file.get("scalar").ndim() == 0);
  CHECK(file.get("scalar").to_vector<float>() == std::vector<float>{3.5f});
  CHECK(file.find("nope") == nullptr);
  CHECK_THROWS_WITH_AS(file.get("nope"), doctest::Contains("no tensor \"nope\""), Error);
}

TEST_CASE("safetensors views keep the mapping alive") {
  TempDir dir;
  const Tensor t = patterned(DType::F32, {4, 4}, 1);
  save(dir / "a.safetensors", {{"w", t}});
  Tensor view;
  {
    const File file(dir / "a.safetensors");
    view = file.get("w");
  }
  CHECK(same(view, t));
}

TEST_CASE("safetensors layout: padded header, then tensors by descending dtype size and name") {
  TempDir dir;
  save(dir / "l.safetensors", {{"b", patterned(DType::U8, {3}, 0)},
                               {"a", patterned(DType::F32, {1}, 1)},
                               {"c", patterned(DType::F64, {1}, 2)},
                               {"a8", patterned(DType::U8, {1}, 3)},
                               {"h", patterned(DType::BF16, {3}, 4)}});
  const auto [header, data_start] = read_header(dir / "l.safetensors");
  CHECK(data_start % 8 == 0);
  CHECK(!header.contains("__metadata__"));  // none given, none written

  std::vector<std::pair<uint64_t, std::string>> by_offset;
  uint64_t end = 0;
  for (const auto& [name, entry] : header.items()) {
    by_offset.emplace_back(entry["data_offsets"][0], name);
    end = std::max(end, entry["data_offsets"][1].get<uint64_t>());
  }
  std::ranges::sort(by_offset);
  const std::vector<std::pair<uint64_t, std::string>> expected = {{0, "c"}, {8, "a"}, {12, "h"}, {18, "a8"}, {19, "b"}};
  CHECK(by_offset == expected);
  CHECK(fs::file_size(dir / "l.safetensors") == data_start + end);

  const std::string bytes = read_file(dir / "l.safetensors");
  const std::string padded = bytes.substr(8, data_start - 8);
  CHECK(padded.find_last_not_of(' ') == padded.rfind('}'));
}

TEST_CASE("safetensors save rejects duplicate and reserved names") {
  TempDir dir;
  const Tensor t = patterned(DType::F32, {2}, 0);
  CHECK_THROWS_WITH_AS(save(dir / "d.safetensors", {{"x", t}, {"x", t.to(DType::BF16)}}),
                       doctest::Contains("duplicate tensor name \"x\""), Error);
  CHECK_THROWS_WITH_AS(save(dir / "m.safetensors", {{"__metadata__", t}}), doctest::Contains("reserved"), Error);
  CHECK(fs::is_empty(dir.path));  // nothing written, no temporary left behind
}

TEST_CASE("safetensors Writer: bytes handed over in pieces make the file save makes") {
  TempDir dir;
  const NamedTensors tensors = {{"b", patterned(DType::U8, {5}, 0)},
                                {"a", patterned(DType::F32, {3, 4}, 1)},
                                {"empty", Tensor::zeros(DType::BF16, {0, 2})},
                                {"c", patterned(DType::F64, {2}, 2)}};
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  save(dir / "whole.safetensors", tensors, metadata);

  std::vector<TensorSpec> specs;
  for (const auto& [name, t] : tensors) specs.push_back({name, t.dtype(), t.shape()});
  Writer writer(dir / "pieces.safetensors", specs, metadata);
  std::vector<std::string> order;
  for (const TensorInfo& info : writer.layout()) {
    order.push_back(info.name);
    const Tensor& t = std::ranges::find(tensors, info.name, &NamedTensors::value_type::first)->second;
    for (size_t at = 0; at < t.nbytes(); at += 5)
      writer.write(info.name, {t.bytes() + at, std::min<size_t>(5, t.nbytes() - at)});
  }
  CHECK(!fs::exists(dir / "pieces.safetensors"));  // not before commit
  writer.commit();
  CHECK(order == std::vector<std::string>{"c", "a", "empty", "b"});
  CHECK(read_file(dir / "pieces.safetensors") == read_file(dir / "whole.safetensors"));
}

TEST_CASE("safetensors Writer rejects bytes out of order, past a tensor's end or missing") {
  TempDir dir;
  {
    Writer writer(dir / "w.safetensors", {{"a", DType::F32, {2}}, {"b", DType::F32, {1}}});
    const std::byte bytes[12] = {};
    CHECK_THROWS_WITH_AS(writer.write("b", {bytes, 4}), doctest::Contains("tensor \"b\" written out of order"), Error);
    CHECK_THROWS_WITH_AS(writer.write("x", {bytes, 4}), doctest::Contains("not in the file"), Error);
    writer.write("a", {bytes, 4});
    CHECK_THROWS_WITH_AS(writer.write("a", {bytes, 8}), doctest::Contains("past its 8 bytes"), Error);
    CHECK_THROWS_WITH_AS(writer.commit(), doctest::Contains("tensor \"a\" lacks 4 of its 8 bytes"), Error);
    writer.write("a", {bytes, 4});
    CHECK_THROWS_WITH_AS(writer.commit(), doctest::Contains("tensor \"b\" lacks 4 of its 4 bytes"), Error);
  }
  CHECK(fs::is_empty(dir.path));  // never committed: nothing left behind
}

TEST_CASE("safetensors reads files from other writers: trailing spaces, unaligned data, zero-size tensors") {
  TempDir dir;
  const float values[2] = {1.5f, -2.0f};
  std::string data(8, '\0');
  std::memcpy(data.data(), values, 8);
  // Trailing spaces that leave the F32 data 2 bytes off alignment, which get() must copy rather than view.
  std::string header = R"({"__metadata__":{"format":"pt"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("e":{"dtype":"I64","shape":[0],"data_offsets":[8,8]},)"
                       R"("z":{"dtype":"U8","shape":[5,0],"data_offsets":[0,0]}})";
  while ((8 + header.size()) % 4 != 2 || !header.ends_with("   ")) header += ' ';
  write_file_atomic(dir / "x.safetensors", raw_file(header, data));
  const File file(dir / "x.safetensors");
  const Tensor x = file.get("x");
  CHECK(reinterpret_cast<uintptr_t>(x.bytes()) % 4 == 0);
  CHECK(x.to_vector<float>() == std::vector<float>{1.5f, -2.0f});
  CHECK(file.get("e").numel() == 0);
  CHECK(file.get("z").shape() == Shape{5, 0});
  CHECK(file.metadata().at("format") == "pt");

  write_file_atomic(dir / "empty.safetensors", raw_file("{}", ""));
  CHECK(File(dir / "empty.safetensors").tensors().empty());
}

TEST_CASE("safetensors rejects every corrupt header") {
  TempDir dir;
  const auto entry = [](const char* name, const char* dtype, const char* shape, int begin, int end) {
    return fmt::format(R"("{}":{{"dtype":"{}","shape":{},"data_offsets":[{},{}]}})", name, dtype, shape, begin, end);
  };
  const auto object = [](std::initializer_list<std::string> entries) {
    return fmt::format("{{{}}}", fmt::join(entries, ","));
  };
  const std::string a4 = entry("a", "U8", "[4]", 0, 4);
  struct Case {
    std::string what;
    std::string bytes;
    const char* message;
  };
  const Case cases[] = {
      {"shorter than the size prefix", "\x02\0\0", "too short"},
      {"N beyond the file", raw_file(object({a4}), "abcd", 200), "runs past the end"},
      {"N above 1e8", raw_file("{}", "", 100'000'001), "exceeds the limit"},
      {"not starting with {", raw_file(" {}", ""), "does not start with '{'"},
      {"array header", raw_file("[]", ""), "does not start with '{'"},
      {"bad JSON", raw_file(R"({"a":)", ""), "invalid JSON"},
      {"junk after JSON", raw_file("{} x", ""), "invalid JSON"},
      {"NUL padding", raw_file(std::string("{}\0x", 4), ""), "NUL byte at offset 2"},
      {"entry not an object", raw_file(R"({"a":[1]})", ""), "tensor \"a\" is not an object"},
      {"missing dtype", raw_file(R"({"a":{"shape":[],"data_offsets":[0,0]}})", ""), "has no \"dtype\""},
      {"unknown dtype", raw_file(object({entry("a", "Q7", "[4]", 0, 4)}), "abcd"), "unknown dtype \"Q7\""},
      {"unsupported dtype", raw_file(object({entry("a", "F8_E5M2", "[4]", 0, 4)}), "abcd"),
       "dtype F8_E5M2, which dskit does not support"},
      {"negative dim", raw_file(object({entry("a", "U8", "[-4]", 0, 4)}), "abcd"), "non-negative integers"},
      {"fractional dim", raw_file(object({entry("a", "U8", "[4.0]", 0, 4)}), "abcd"), "non-negative integers"},
      {"shape overflow", raw_file(object({entry("a", "F32", "[4294967296,4294967296,4]", 0, 4)}), "abcd"), "too large"},
      {"wrong byte count", raw_file(object({entry("a", "F32", "[2,2]", 0, 12)}), std::string(12, 'x')),
       "data_offsets [0, 12) do not match F32 [2, 2] (16 bytes)"},
      {"reversed offsets", raw_file(object({entry("a", "U8", "[0]", 4, 0)}), "abcd"), "not a range"},
      {"end beyond buffer", raw_file(object({entry("a", "U8", "[4]", 0, 4)}), "ab"), "not a range within the 2-byte"},
      {"overlap", raw_file(object({entry("a", "F32", "[1]", 0, 4), entry("b", "U8", "[4]", 2, 6)}), "abcdef"),
       "tensor \"b\" at [2, 6) overlaps"},
      {"hole", raw_file(object({entry("a", "U8", "[2]", 0, 2), entry("b", "U8", "[2]", 4, 6)}), "abcdef"),
       "leaves a hole after byte 2"},
      {"hole at the start", raw_file(object({entry("a", "U8", "[2]", 2, 4)}), "abcd"), "hole after byte 0"},
      {"trailing junk", raw_file(object({a4}), "abcdXY"), "cover 4 bytes but the data buffer holds 6"},
      {"duplicate tensor", raw_file(object({a4, a4}), "abcd"), "duplicate key \"a\""},
      {"duplicate field", raw_file(R"({"a":{"dtype":"U8","dtype":"U8","shape":[],"data_offsets":[0,1]}})", "a"),
       "duplicate key \"dtype\""},
      {"metadata value not a string", raw_file(R"({"__metadata__":{"format":1}})", ""),
       "__metadata__ value for \"format\" is not a string"},
      {"metadata not an object", raw_file(R"({"__metadata__":"pt"})", ""), "__metadata__ is not an object"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    const std::string path = dir / "bad.safetensors";
    write_file_atomic(path, c.bytes);
    CHECK_THROWS_WITH_AS(File{path}, doctest::Contains(c.message), Error);
    CHECK_THROWS_WITH_AS(File{path}, doctest::Contains((path + ": ").c_str()), Error);
  }
  CHECK_THROWS_WITH_AS(File{dir / "missing.safetensors"}, doctest::Contains("cannot open"), Error);
  CHECK_THROWS_WITH_AS(File{dir.path.string()}, doctest::Contains("not a regular file"), Error);
  // A FIFO is refused at once, not waited on for a writer that never comes.
  const std::string fifo = dir / "model.safetensors";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  CHECK_THROWS_WITH_AS(File{fifo}, (fifo + ": not a regular file").c_str(), Error);
}

TEST_CASE("safetensors JSON errors show the header's bytes escaped, on one line") {
  TempDir dir;
  const std::string path = dir / "bad.safetensors";
  write_file_atomic(path, raw_file("{\"a\xff\x01\":", ""));
  try {
    File{path};
    FAIL("no error");
  } catch (const Error& e) {
    const std::string message = e.what();
    CHECK_MESSAGE(message.find("\\xFF") != std::string::npos, message);
    CHECK(message.find('\xff') == std::string::npos);
    CHECK(message.find('\x01') == std::string::npos);
  }
}

TEST_CASE("model directories: one file, or shards with an index") {
  TempDir dir;
  NamedTensors tensors;
  for (int i = 0; i < 5; ++i) tensors.emplace_back(fmt::format("layer.{}.weight", i), patterned(DType::F32, {4, 4}, i));
  tensors.emplace_back("norm", patterned(DType::BF16, {4}, 9));

  save_model(dir / "single", tensors);
  CHECK(fs::exists(dir / "single/model.safetensors"));
  CHECK(File(dir / "single/model.safetensors").metadata().at("format") == "pt");

  // 64-byte tensors in shards of at most 150 bytes: two per shard, the small norm joining the last.
  save_model(dir / "sharded", tensors, 150, {{"producer", "test"}});
  const json index = json::parse(read_file(dir / "sharded/model.safetensors.index.json"));
  CHECK(index["metadata"]["total_size"] == 5 * 64 + 8);
  CHECK(index["weight_map"]["layer.0.weight"] == "model-00001-of-00003.safetensors");
  CHECK(index["weight_map"]["layer.2.weight"] == "model-00002-of-00003.safetensors");
  CHECK(index["weight_map"]["norm"] == "model-00003-of-00003.safetensors");
  const File shard(dir / "sharded/model-00003-of-00003.safetensors");
  CHECK(shard.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"producer", "test"}});

  for (const char* name : {"single", "sharded"}) {
    CAPTURE(name);
    const ModelFiles model(dir / name);
    std::vector<std::string> expected;
    for (const auto& [n, t] : tensors) expected.push_back(n);
    std::ranges::sort(expected);
    CHECK(model.names() == expected);
    for (const auto& [n, t] : tensors) CHECK(same(model.get(n), t));
    CHECK(model.find("norm")->dtype == DType::BF16);
    CHECK(model.find("missing") == nullptr);
    CHECK_THROWS_WITH_AS(model.get("missing"), doctest::Contains("no tensor \"missing\""), Error);
  }

  // Re-saving in the other layout removes the old entry file, so the new weights are the ones read.
  save_model(dir / "single", {{"w", patterned(DType::F32, {64}, 1)}, {"v", patterned(DType::F32, {64}, 2)}}, 256);
  CHECK_FALSE(fs::exists(dir / "single/model.safetensors"));
  CHECK(ModelFiles(dir / "single").names() == std::vector<std::string>{"v", "w"});
  save_model(dir / "sharded", {{"w", patterned(DType::F32, {2}, 1)}}, 256);
  CHECK_FALSE(fs::exists(dir / "sharded/model.safetensors.index.json"));
  CHECK(ModelFiles(dir / "sharded").names() == std::vector<std::string>{"w"});

  CHECK_THROWS_WITH_AS(save_model(dir / "dup", {{"x", tensors[0].second}, {"x", tensors[1].second}}, 64),
                       doctest::Contains("duplicate tensor name \"x\""), Error);
  CHECK_FALSE(fs::exists(dir / "dup/model-00001-of-00002.safetensors"));
}

TEST_CASE("model directories reject a bad index") {
  TempDir dir;
  NamedTensors tensors = {{"a", patterned(DType::F32, {16}, 0)}, {"b", patterned(DType::F32, {16}, 1)}};
  save_model(dir / "m", tensors, 64);
  const std::string index_path = dir / "m/model.safetensors.index.json";
  const std::string index = read_file(index_path);
  const auto rejects = [&](const std::string& text, const char* message) {
    write_file_atomic(index_path, text);
    CHECK_THROWS_WITH_AS(ModelFiles{dir / "m"}, doctest::Contains(message), Error);
  };

  fs::rename(dir / "m/model-00002-of-00002.safetensors", dir / "m/elsewhere");
  rejects(index, "model-00002-of-00002.safetensors: cannot open");
  fs::rename(dir / "m/elsewhere", dir / "m/model-00002-of-00002.safetensors");
  CHECK(ModelFiles(dir / "m").names().size() == 2);

  rejects(R"({"weight_map":{"a":"model-00002-of-00002.safetensors"}})", "tensor \"a\" is not in shard");
  rejects(R"({"weight_map":{"a":"../m/model-00001-of-00002.safetensors"}})", "not a file in the model directory");
  rejects(R"({"weight_map":{"a":1}})", "shard of tensor \"a\" is not a string");
  rejects(R"({"metadata":{}})", "no \"weight_map\" object");
  rejects(R"({"weight_map":{"a":"x","a":"y"}})", "duplicate key \"a\"");
  rejects(R"({"weight_map":)", "invalid JSON");
  fs::remove(index_path);
  CHECK_THROWS_WITH_AS(ModelFiles{dir / "m"}, doctest::Contains("no model.safetensors or"), Error);
}
