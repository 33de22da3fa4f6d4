#pragma once
// Tokenizer: byte-level BPE, stored as a Hugging Face `tokenizer.json` so `tokenizers` and `transformers` read our
// models and we read theirs (DeepSeek-V3's, Llama-3's, GPT-2's). Encoding equals the Hugging Face `tokenizers`
// library's for the same file: added tokens are split out first (leftmost-longest), the rest is cut by the
// pre-tokenizer's regexes, and each piece's bytes are merged by rank. Invalid UTF-8 is encoded as bytes, never dropped.
//
// All methods are const and thread-safe; copies share one immutable model and a per-word merge cache.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ds {

// A token matched in raw text before byte-level encoding (Hugging Face's "added token"). `special` ones are control
// tokens: parsed from text only on request and dropped by decode(skip_special). Non-special ones (<think>, </think>,
// as in DeepSeek-R1) are always parsed and always decoded, exactly as `tokenizers` does. lstrip / rstrip make the
// token swallow the whitespace before / after it; `normalized` ones are matched after the others.
struct AddedToken {
  uint32_t id = 0;
  std::string content;
  bool special = true;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool operator==(const AddedToken&) const = default;
};

struct BpeTrainOptions {
  size_t vocab_size = 32000;  // including the 7 special tokens and the 256 bytes
  // Called now and then with the merges learnt so far and the most there can be.
  std::function<void(size_t merges, size_t max_merges)> progress;
};

class Tokenizer {
 public:
  // The default tokenizer: DeepSeek's special tokens as ids 0..6 (BOS, EOS, pad, <｜User｜>, <｜Assistant｜>,
  // <think>, </think>), then the 256 bytes as ids 7..262, spelled in GPT-2's byte-to-unicode alphabet. No merges.
  static Tokenizer byte_level();

  // Learns merges on top of byte_level() from `documents` (pairs seen at least twice, most frequent first, ties to
  // the smallest ids), pre-tokenizing with DeepSeek-V3's pre_tokenizer. Deterministic; words are counted on the
  // OpenMP threads. Special-token spellings in the documents are boundaries, never learnt.
  static Tokenizer train(std::span<const std::string_view> documents, const BpeTrainOptions& options);

  // Reads a tokenizer.json, or a directory holding one. A tokenizer_config.json beside it names BOS, EOS and pad
  // (else the post-processor's BOS, else DeepSeek's spellings) and holds the chat template. Throws ds::Error naming
  // the file for anything malformed or unsupported (normalizers, other models and pre-tokenizers).
  static Tokenizer load(const std::filesystem::path& path);
  // Writes `dir`/tokenizer.json and `dir`/tokenizer_config.json (special tokens, chat template).
  void save(const std::filesystem::path& dir) const;

  // With parse_special, special-token spellings in `text` become their ids; without, they are encoded as bytes
  // (use this for untrusted text, so a user cannot type an EOS). No BOS is added: callers add it explicitly.
  std::vector<uint32_t> encode(std::string_view text, bool parse_special) const;
  // Concatenated token bytes. A cut inside a multi-byte character gives invalid UTF-8; the bytes are kept as they
  // are (`tokenizers` would replace them with U+FFFD).
  std::string decode(std::span<const uint32_t> ids, bool skip_special) const;

  const std::string& id_to_token(uint32_t id) const;  // the vocabulary spelling (byte tokens in GPT-2's alphabet)
  std::optional<uint32_t> token_to_id(std::string_view token) const;
  size_t vocab_size() const;  // model vocabulary plus added tokens
  size_t merge_count() const;
  uint32_t bos_id() const;
  uint32_t eos_id() const;
  uint32_t pad_id() const;
  // Whether the file's post-processor puts BOS first (what `tokenizers` does with add_special_tokens). Our tools
  // never rely on it: they add BOS themselves.
  bool adds_bos() const;
  const std::vector<AddedToken>& added_tokens() const;
  // The Jinja chat template of tokenizer_config.json (DeepSeek-R1's for our own tokenizers); see ds/chat.h.
  const std::string& chat_template() const;

  bool operator==(const Tokenizer& other) const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Token-shard framing (man/dskit-formats.5): BOS, the document's tokens, EOS, for each document in order. Documents
// are encoded in parallel on the OpenMP threads; the result does not depend on their number.
std::vector<uint32_t> encode_documents(const Tokenizer& tokenizer, std::span<const std::string_view> documents,
                                       bool parse_special);

}  // namespace ds
