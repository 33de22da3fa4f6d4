#pragma once
// Tokenizer: text <-> token ids, stored as a Hugging Face `tokenizer.json` so `tokenizers` and `transformers` read our
// models and we read theirs. Encoding is meant to equal the Hugging Face `tokenizers` library for the same file.
//
// Today the model is byte-level BPE *without merges*: every byte is one token. Merges (and the pre-tokenizer regex
// they need) come with `ds-tokenize train`; the vocabulary, added tokens and file handling here stay as they are.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ds {

// A token matched in raw text before byte-level encoding (Hugging Face's "added token"). `special` ones are control
// tokens: parsed from text only on request and dropped by decode(skip_special). Non-special ones (<think>, </think>,
// as in DeepSeek-R1) are always parsed and always decoded, exactly as `tokenizers` does.
struct AddedToken {
  uint32_t id = 0;
  std::string content;
  bool special = true;
  bool operator==(const AddedToken&) const = default;
};

class Tokenizer {
 public:
  // The default tokenizer: DeepSeek's special tokens as ids 0..6 (BOS, EOS, pad, <｜User｜>, <｜Assistant｜>,
  // <think>, </think>), then the 256 bytes as ids 7..262, spelled in GPT-2's byte-to-unicode alphabet.
  static Tokenizer byte_level();

  // Reads a tokenizer.json; throws ds::Error naming the file for anything malformed or not supported yet.
  static Tokenizer load(const std::filesystem::path& tokenizer_json);
  // Writes `dir`/tokenizer.json and `dir`/tokenizer_config.json (special tokens, DeepSeek-R1 chat template).
  void save(const std::filesystem::path& dir) const;

  // With parse_special, special-token spellings in `text` become their ids; without, they are encoded as bytes
  // (use this for untrusted text, so a user cannot type an EOS). No BOS is added: callers add it explicitly.
  std::vector<uint32_t> encode(std::string_view text, bool parse_special) const;
  // Concatenated token bytes. A cut inside a multi-byte character gives invalid UTF-8; the bytes are kept as they
  // are (`tokenizers` would replace them with U+FFFD).
  std::string decode(std::span<const uint32_t> ids, bool skip_special) const;

  const std::string& id_to_token(uint32_t id) const;  // the vocabulary spelling (byte tokens in GPT-2's alphabet)
  std::optional<uint32_t> token_to_id(std::string_view token) const;
  size_t vocab_size() const { return tokens_.size(); }
  uint32_t bos_id() const { return bos_id_; }
  uint32_t eos_id() const { return eos_id_; }
  uint32_t pad_id() const { return pad_id_; }
  const std::vector<AddedToken>& added_tokens() const { return added_; }

  bool operator==(const Tokenizer&) const = default;

 private:
  Tokenizer(std::vector<std::string> tokens, std::vector<AddedToken> added, std::string_view origin);

  std::vector<std::string> tokens_;                      // id -> vocabulary spelling
  std::unordered_map<std::string, uint32_t> ids_;        // vocabulary spelling -> id
  std::vector<std::string> bytes_;                       // id -> the bytes it decodes to
  std::vector<uint32_t> byte_ids_;                       // byte value -> its token id
  std::vector<bool> special_;                            // id -> is a special added token
  std::vector<AddedToken> added_;
  uint32_t bos_id_ = 0, eos_id_ = 0, pad_id_ = 0;
};

}  // namespace ds
