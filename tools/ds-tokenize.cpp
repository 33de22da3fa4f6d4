// ds-tokenize: train a byte-level BPE tokenizer, encode text to token shards, decode shards, count tokens.
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "common.h"
#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/jsonl.h"
#include "ds/ops.h"
#include "ds/shards.h"
#include "ds/tokenizer.h"

namespace {

// How input files are cut into documents.
struct DocumentOptions {
  std::vector<std::string> inputs = {"-"};
  bool lines = false;
  bool jsonl = false;
  std::string field = "text";
};

CLI::Option* add_field_option(CLI::App& cmd, DocumentOptions& o) {
  return cmd.add_option("--field", o.field, "the JSONL field holding the text (implies --jsonl)")
      ->capture_default_str()
      ->each([&o](const std::string&) { o.jsonl = true; });
}

void add_document_options(CLI::App& cmd, DocumentOptions& o) {
  cmd.add_option("inputs", o.inputs, "text or JSONL files (- for stdin)")->capture_default_str();
  auto* lines = cmd.add_flag("--lines", o.lines, "each non-empty line is a document (default: each file is one)");
  auto* jsonl = cmd.add_flag("--jsonl", o.jsonl, "each line is a JSON object whose --field is a document");
  lines->excludes(jsonl)->excludes(add_field_option(cmd, o));
}

// The inputs' bytes, and views of their documents into them.
struct Documents {
  std::deque<std::string> texts;        // file contents, or the JSONL fields (a deque, so views stay valid)
  std::vector<std::string_view> views;  // the documents
  uint64_t bytes() const {
    uint64_t n = 0;
    for (std::string_view v : views) n += v.size();
    return n;
  }
};

Documents read_documents(const DocumentOptions& o) {
  Documents docs;
  for (const std::string& path : o.inputs) {
    const std::string& text = docs.texts.emplace_back(ds::read_file(path));
    if (!o.lines && !o.jsonl) {
      docs.views.push_back(text);
      continue;
    }
    std::vector<std::string_view> lines;
    for (size_t pos = 0; pos < text.size();) {
      const size_t end = std::min(text.find('\n', pos), text.size());
      if (end > pos) lines.emplace_back(text.data() + pos, end - pos);
      pos = end + 1;
    }
    if (!o.jsonl) {
      docs.views.insert(docs.views.end(), lines.begin(), lines.end());
      continue;
    }
    std::vector<std::string> fields;
    size_t line_no = 0;
    for (std::string_view line : lines) {
      ++line_no;
      const std::string where = fmt::format("{}: line {}", path == "-" ? "<stdin>" : path, line_no);
      nlohmann::json record;
      try {
        record = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        ds::fail("{}: {}", where, ds::json_error(e));
      }
      if (!record.is_object() || !record.contains(o.field) || !record[o.field].is_string())
        ds::fail("{}: no string field {:?}", where, o.field);
      fields.push_back(record[o.field].get<std::string>());
    }
    for (std::string& f : fields) docs.views.push_back(docs.texts.emplace_back(std::move(f)));
  }
  return docs;
}

ds::Tokenizer load_tokenizer(const std::string& path) {
  return path.empty() ? ds::Tokenizer::byte_level() : ds::Tokenizer::load(path);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Byte-level BPE tokenizers compatible with Hugging Face tokenizer.json: train one, encode text to\n"
      "token shards (BOS document EOS, uint32, raw or zstd), decode shards, count tokens.\n"
      "Without --tokenizer, the built-in byte-level tokenizer (DeepSeek's special tokens, then 256 bytes).",
      "ds-tokenize"};
  ds::tool::add_version_flag(app);
  ds::tool::add_config_option(app);
  app.require_subcommand(1);
  int threads = 0;
  std::string tokenizer_path;
  DocumentOptions docs_opt;
  const auto add_common = [&](CLI::App& cmd, bool with_tokenizer) {
    cmd.add_option("--threads", threads, "threads for encoding and zstd (0 = the cores other programs leave idle)")
        ->check(ds::tool::in(ds::tool::kCount));
    if (with_tokenizer)
      cmd.add_option("--tokenizer", tokenizer_path, "a tokenizer.json or a directory holding one (default built-in)");
  };

  CLI::App& train = *app.add_subcommand("train", "learn BPE merges from text and write DIR/tokenizer.json");
  std::string out_dir;
  ds::BpeTrainOptions train_opt;
  add_document_options(train, docs_opt);
  add_common(train, false);
  train.add_option("-o,--output", out_dir, "directory for tokenizer.json and tokenizer_config.json")->required();
  train.add_option("--vocab-size", train_opt.vocab_size, "tokens in all: 7 special, 256 bytes, the rest merges")
      ->capture_default_str()
      ->check(ds::tool::in(ds::tool::at_least(int64_t(ds::Tokenizer::byte_level().vocab_size()))));

  CLI::App& encode = *app.add_subcommand("encode", "encode text to a token shard");
  std::string output = "-";
  int zstd_level = -1;
  bool special = false;
  add_document_options(encode, docs_opt);
  add_common(encode, true);
  encode.add_option("-o,--output", output, "the shard (.tok, .tok.zst; - for stdout)")->capture_default_str();
  encode.add_option("--zstd", zstd_level, "zstd level, 0 for raw (default 3 for a .zst output, else 0)")
      ->check(ds::tool::in({.lo = 0, .hi = 22, .integer = true}));
  encode.add_flag("--special", special, "parse special-token spellings in the text (default: encode them as text)");

  CLI::App& decode = *app.add_subcommand("decode", "decode a token shard to text");
  std::string shard = "-";
  add_common(decode, true);
  decode.add_option("shard", shard, "a .tok or .tok.zst shard (- for stdin)")->capture_default_str();
  decode.add_option("-o,--output", output, "the text (- for stdout)")->capture_default_str();
  auto* decode_lines = decode.add_flag("--lines", docs_opt.lines, "end each document with a newline");
  auto* decode_jsonl = decode.add_flag("--jsonl", docs_opt.jsonl, "write each document as a JSON object");
  decode_lines->excludes(decode_jsonl)->excludes(add_field_option(decode, docs_opt));

  CLI::App& count = *app.add_subcommand("count", "count tokens and bytes per token of text");
  bool json = false;
  add_document_options(count, docs_opt);
  add_common(count, true);
  count.add_flag("--special", special, "parse special-token spellings in the text");
  count.add_flag("--json", json, "print one JSON object");

  return ds::tool::run(app, argc, argv, [&] {
    ds::set_threads(threads);
    const auto start = std::chrono::steady_clock::now();

    if (train) {
      const Documents docs = read_documents(docs_opt);
      train_opt.progress = [&](size_t merges, size_t max_merges) {
        fmt::print(stderr, "merges {}/{} ({:.1f} s)\n", merges, max_merges, seconds_since(start));
      };
      const ds::Tokenizer tok = ds::Tokenizer::train(docs.views, train_opt);
      tok.save(out_dir);
      fmt::print(stderr, "{}: {} tokens ({} merges) from {} documents, {} bytes, in {:.1f} s\n", out_dir,
                 tok.vocab_size(), tok.merge_count(), docs.views.size(), docs.bytes(), seconds_since(start));
    } else if (encode || count) {
      const ds::Tokenizer tok = load_tokenizer(tokenizer_path);
      const Documents docs = read_documents(docs_opt);
      const std::vector<uint32_t> ids = ds::encode_documents(tok, docs.views, special);
      const double secs = seconds_since(start);
      const uint64_t bytes = docs.bytes(), tokens = ids.size() - 2 * docs.views.size();
      const double per_token = tokens ? double(bytes) / double(tokens) : 0.0;
      if (count) {
        if (json) {
          const nlohmann::json summary = {
              {"documents", docs.views.size()}, {"bytes", bytes}, {"tokens", tokens}, {"bytes_per_token", per_token}};
          fmt::print("{}\n", summary.dump());
        } else {
          fmt::print("documents {}\nbytes {}\ntokens {}\nbytes_per_token {:.3f}\n", docs.views.size(), bytes, tokens,
                     per_token);
        }
        return;
      }
      const bool zst = output.size() > 4 && output.ends_with(".zst");
      ds::write_tokens(output, ids, zstd_level >= 0 ? zstd_level : zst ? 3 : 0, ds::get_threads());
      fmt::print(stderr, "{}: {} documents, {} tokens, {} bytes ({:.2f} bytes/token), encoded at {:.1f} MB/s\n",
                 output == "-" ? "<stdout>" : output, docs.views.size(), tokens, bytes, per_token,
                 double(bytes) / 1e6 / secs);
    } else if (decode) {
      const ds::Tokenizer tok = load_tokenizer(tokenizer_path);
      const std::vector<uint32_t> ids = ds::read_tokens(shard);
      ds::check_token_range(shard, ids, uint32_t(tok.vocab_size()));
      ds::AtomicFile out(output);
      // Documents end at EOS; a BOS that opens one is framing, not text.
      for (size_t pos = 0; pos < ids.size();) {
        size_t end = pos;
        while (end < ids.size() && ids[end] != tok.eos_id()) ++end;
        if (pos < end && ids[pos] == tok.bos_id()) ++pos;
        std::string text = tok.decode(std::span(ids).subspan(pos, end - pos), false);
        if (docs_opt.jsonl)
          text = nlohmann::json{{docs_opt.field, text}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        if (docs_opt.lines || docs_opt.jsonl) text += '\n';
        out.write(text);
        pos = end + 1;
      }
      out.commit();
    }
  });
}
