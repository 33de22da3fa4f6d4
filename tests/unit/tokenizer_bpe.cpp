// Byte-level BPE: encodings against Hugging Face `tokenizers` (fixtures made by make_fixture.py), training, round
// trips of arbitrary bytes, parallel encoding.
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/tokenizer.h"
#include "temp_dir.h"

using namespace ds;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kFixtures = fs::path(DS_FIXTURES) / "tokenizer";

json read_json(const fs::path& path) { return json::parse(read_file(path.string())); }

// The trained fixture tokenizer with a variant's patch applied (top-level keys replaced, "model" keys merged).
Tokenizer load_variant(const json& patch, const TempDir& dir) {
  json j = read_json(kFixtures / "trained" / "tokenizer.json");
  for (const auto& [key, value] : patch.items()) {
    if (key == "model")
      j["model"].update(value);
    else
      j[key] = value;
  }
  std::ofstream(dir.path / "tokenizer.json") << j.dump();
  return Tokenizer::load(dir.path / "tokenizer.json");
}

// Lines of the training corpus: varied text (English, code, CJK, Cyrillic, emoji) for round trips and threads.
std::vector<std::string> corpus_lines() {
  std::vector<std::string> lines;
  std::istringstream in(read_file((kFixtures / "corpus.txt").string()));
  for (std::string line; std::getline(in, line);) lines.push_back(line + "\n");
  return lines;
}

BpeTrainOptions vocab(size_t size) {
  BpeTrainOptions o;
  o.vocab_size = size;
  return o;
}

std::vector<uint32_t> ids_of(const Tokenizer& tok, std::initializer_list<std::string_view> tokens) {
  std::vector<uint32_t> ids;
  for (std::string_view t : tokens) ids.push_back(tok.token_to_id(t).value());
  return ids;
}

}  // namespace

TEST_CASE("encodings equal Hugging Face tokenizers' under GPT-2, Llama-3 and DeepSeek-V3 pre-tokenizers") {
  const json fixture = read_json(kFixtures / "bpe-encodings.json");
  REQUIRE(fixture["variants"].size() >= 7);
  for (const json& variant : fixture["variants"]) {
    const std::string name = variant["name"];
    CAPTURE(name);
    TempDir dir;
    const Tokenizer tok = load_variant(variant["patch"], dir);
    CHECK(tok.merge_count() == 737);
    for (const json& c : variant["cases"]) {
      const auto text = c["text"].get<std::string>();
      const auto ids = c["ids"].get<std::vector<uint32_t>>();
      CAPTURE(text);
      CHECK(tok.encode(text, true) == ids);
      CHECK(tok.encode(text, false) == c["plain_ids"].get<std::vector<uint32_t>>());
      CHECK(tok.decode(ids, false) == c["decoded"].get<std::string>());
      CHECK(tok.decode(ids, true) == c["decoded_skip_special"].get<std::string>());
    }
    if (name == "deepseek-v3-added") {  // added tokens past the model vocabulary, BOS from the post-processor
      CHECK(tok.vocab_size() == 1007);
      CHECK(tok.adds_bos());
      CHECK(tok.bos_id() == 0);
      CHECK(tok.token_to_id("<｜tool▁sep｜>") == 1001u);
      // Saved and loaded again, it is the same tokenizer.
      tok.save(dir.path / "saved");
      CHECK(Tokenizer::load(dir.path / "saved") == tok);
    } else {
      CHECK_FALSE(tok.adds_bos());
    }
  }
}

TEST_CASE("training reproduces the committed tokenizer, whatever the thread count") {
  const std::string corpus = read_file((kFixtures / "corpus.txt").string());
  const std::vector<std::string_view> whole = {corpus};
  const Tokenizer expected = Tokenizer::load(kFixtures / "trained");
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  CHECK(Tokenizer::train(whole, vocab(1000)) == expected);
  // Words counted on one thread or on three give the same merges.
  const std::vector<std::string> lines = corpus_lines();
  const std::vector<std::string_view> views(lines.begin(), lines.end());
  const Tokenizer serial = Tokenizer::train(views, vocab(1000));
  omp_set_num_threads(3);
  CHECK(Tokenizer::train(views, vocab(1000)) == serial);
  omp_set_num_threads(threads);
}

TEST_CASE("training on a tiny corpus gives the hand-computed merges") {
  // Pieces (DeepSeek-V3 pre-tokenizer): "ab" x1, " ab" x1, " cd" x2. Pair counts: Ġc 2, cd 2, ab 2, Ġa 1.
  // Ties go to the smaller ids: Ġ (byte 0x20, id 39) before a (id 104) before c (id 106), so Ġ+c first; then a+b
  // (2) beats Ġc+d (2) on ids; then Ġc+d; Ġ+ab is seen once, so training stops below the requested size.
  const std::vector<std::string_view> docs = {"ab ab cd cd"};
  std::vector<std::pair<size_t, size_t>> progress;
  BpeTrainOptions options = vocab(300);
  options.progress = [&](size_t done, size_t max) { progress.emplace_back(done, max); };
  const Tokenizer tok = Tokenizer::train(docs, options);
  REQUIRE(tok.merge_count() == 3);
  CHECK(tok.vocab_size() == 266);
  CHECK(tok.id_to_token(263) == "Ġc");
  CHECK(tok.id_to_token(264) == "ab");
  CHECK(tok.id_to_token(265) == "Ġcd");
  CHECK(tok.encode("ab cd ab", false) == std::vector<uint32_t>{264, 265, 39, 264});
  CHECK(progress.back() == std::pair<size_t, size_t>{3, 37});
  // Special tokens in the text are boundaries, not material for merges.
  CHECK(Tokenizer::train(std::vector<std::string_view>{"<think><think><think>"}, vocab(300)).merge_count() == 0);
  CHECK_THROWS_WITH_AS(Tokenizer::train(docs, vocab(100)), doctest::Contains("at least 263"), Error);
}

TEST_CASE("decode(encode(x)) == x for any bytes, invalid UTF-8 included, which is encoded as bytes") {
  TempDir dir;
  const json fixture = read_json(kFixtures / "bpe-encodings.json");
  for (const char* name : {"deepseek-v3", "gpt2", "llama3"}) {
    CAPTURE(name);
    json patch;
    for (const json& v : fixture["variants"])
      if (v["name"] == name) patch = v["patch"];
    const Tokenizer tok = load_variant(patch, dir);
    uint64_t x = 12345;
    const auto next = [&] { return x = x * 6364136223846793005ULL + 1442695040888963407ULL; };
    const std::vector<std::string> lines = corpus_lines();
    for (int round = 0; round < 100; ++round) {
      std::string text;
      for (int i = 0, n = int(next() >> 59); i < n; ++i) {  // corpus fragments and raw bytes, mixed
        if (next() >> 63) {
          const std::string& line = lines[next() % lines.size()];
          text += line.substr(next() % line.size());
        } else {
          for (int k = 0, m = int(next() >> 61); k <= m; ++k) text += char(next() >> 56);
        }
      }
      CAPTURE(text);
      for (bool parse_special : {false, true}) CHECK(tok.decode(tok.encode(text, parse_special), false) == text);
    }
    const std::string invalid = "a\xff\xfe b\xe4\xbd";  // stray bytes and a cut three-byte character
    const std::vector<uint32_t> ids = tok.encode(invalid, false);
    CHECK(tok.decode(ids, false) == invalid);
    CHECK(std::count(ids.begin(), ids.end(), 7u + 0xff) == 1);
    const std::string long_runs = std::string(30000, 'a') + std::string(30000, ' ') + std::string(30000, '7');
    CHECK(tok.decode(tok.encode(long_runs, false), false) == long_runs);
  }
}

TEST_CASE("encoding is thread-safe and the same on any number of threads") {
  const Tokenizer tok = Tokenizer::load(kFixtures / "trained");
  const std::vector<std::string> lines = corpus_lines();
  std::vector<std::vector<uint32_t>> serial;
  for (const std::string& line : lines) serial.push_back(tok.encode(line, true));

  std::vector<std::thread> workers;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      const Tokenizer copy = tok;  // copies share the model and its cache
      for (int round = 0; round < 3; ++round)
        for (size_t i = (t * 7) % lines.size(), n = 0; n < lines.size(); ++n, i = (i + 1) % lines.size())
          mismatches[t] += (t % 2 ? copy : tok).encode(lines[i], true) != serial[i];
    });
  }
  for (std::thread& w : workers) w.join();
  CHECK(mismatches == std::vector<int>(4, 0));

  // Shard framing: BOS document EOS, in order.
  const std::vector<std::string_view> docs(lines.begin(), lines.end());
  std::vector<uint32_t> framed;
  for (const auto& ids : serial) {
    framed.push_back(tok.bos_id());
    framed.insert(framed.end(), ids.begin(), ids.end());
    framed.push_back(tok.eos_id());
  }
  const int threads = omp_get_max_threads();
  for (int n : {1, 2, 3}) {
    omp_set_num_threads(n);
    CHECK(encode_documents(tok, docs, true) == framed);
  }
  omp_set_num_threads(threads);
}

TEST_CASE("a model directory's tokenizer_config.json names BOS, EOS and pad and holds the chat template") {
  TempDir dir;
  Tokenizer::load(kFixtures / "trained").save(dir.path);
  json config = read_json(dir.path / "tokenizer_config.json");
  config["bos_token"] = {{"__type", "AddedToken"}, {"content", "<｜User｜>"}};
  config["eos_token"] = "<｜Assistant｜>";
  config["pad_token"] = nullptr;
  config["chat_template"] =
      json::array({{{"name", "tool_use"}, {"template", "x"}}, {{"name", "default"}, {"template", "y"}}});
  std::ofstream(dir.path / "tokenizer_config.json") << config.dump();
  const Tokenizer tok = Tokenizer::load(dir.path);
  CHECK(tok.bos_id() == 3);
  CHECK(tok.eos_id() == 4);
  CHECK(tok.pad_id() == 2);  // DeepSeek's pad spelling, since the config names none
  CHECK(tok.chat_template() == "y");
  CHECK(tok.encode("<｜User｜>a", true) == ids_of(tok, {"<｜User｜>", "a"}));
}
