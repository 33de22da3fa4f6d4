#include "ds/tokenizer.h"

#include <array>
#include <nlohmann/json.hpp>

#include "ds/error.h"
#include "ds/fsutil.h"

namespace ds {
namespace {

using Json = nlohmann::ordered_json;  // ordered, so saved files list the vocabulary in id order

// DeepSeek's spellings (U+FF5C "｜" and U+2581 "▁"), ids 0..6 of the default tokenizer.
constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
constexpr std::string_view kPad = "<｜▁pad▁｜>";

// DeepSeek-R1's chat format: BOS, the system messages with no role token, <｜User｜>/<｜Assistant｜> turns with EOS
// closing each assistant turn, earlier reasoning (up to the last </think>) dropped, and a generation prompt that
// opens the think block. Tool calls are left out: the byte-level vocabulary has no tool tokens.
constexpr std::string_view kChatTemplate = R"jinja({{ bos_token }}
{%- for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}{% endif %}{% endfor %}
{%- for message in messages %}
  {%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}
  {%- elif message['role'] == 'assistant' %}
    {{- '<｜Assistant｜>' + message['content'].split('</think>')[-1] + '<｜end▁of▁sentence｜>' }}
  {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<｜Assistant｜><think>\n' }}{% endif %})jinja";

constexpr int kModelMaxLength = 131072;  // 128K, the V3/R1 context length

// GPT-2's byte-to-unicode alphabet: printable Latin-1 bytes stand for themselves and the other 68 bytes for
// U+0100..U+0143 in byte order, so every byte is a visible character in vocabulary files.
const std::array<uint32_t, 256>& byte_chars() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t shifted = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? b : shifted++;
    }
    return t;
  }();
  return table;
}

// The inverse: code point -> byte, -1 for code points outside the alphabet.
const std::array<int, 256 + 68>& char_bytes() {
  static const std::array<int, 256 + 68> table = [] {
    std::array<int, 256 + 68> t;
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[byte_chars()[b]] = b;
    return t;
  }();
  return table;
}

// UTF-8 of a byte's character (all are below U+0800, so one or two bytes).
std::string byte_token(uint8_t b) {
  const uint32_t c = byte_chars()[b];
  if (c < 0x80) return std::string(1, char(c));
  return {char(0xC0 | (c >> 6)), char(0x80 | (c & 0x3F))};
}

// The bytes a token decodes to, by the rule of Hugging Face's ByteLevel decoder: a token spelled entirely in the
// byte alphabet maps back character by character; any other token (DeepSeek's special tokens) is its own UTF-8.
std::string token_bytes(const std::string& token) {
  std::string out;
  for (size_t i = 0; i < token.size();) {
    const auto lead = uint8_t(token[i]);
    uint32_t c = lead;
    if (lead >= 0x80) {
      if ((lead & 0xE0) != 0xC0 || i + 1 == token.size()) return token;  // three or four bytes: not in the alphabet
      c = ((lead & 0x1Fu) << 6) | (uint8_t(token[i + 1]) & 0x3Fu);
    }
    i += lead < 0x80 ? 1 : 2;
    if (c >= char_bytes().size() || char_bytes()[c] < 0) return token;
    out += char(char_bytes()[c]);
  }
  return out;
}

void check_id(uint32_t id, size_t vocab_size) {
  if (id >= vocab_size) fail("token id {} is out of range (vocabulary size {})", id, vocab_size);
}

// Written whole or not at all, since tokenizer files are part of checkpoints.
void write_json(const std::filesystem::path& path, const Json& json) {
  write_file_atomic(path.string(), json.dump(2) + "\n");
}

}  // namespace

Tokenizer::Tokenizer(std::vector<std::string> tokens, std::vector<AddedToken> added, std::string_view origin)
    : tokens_(std::move(tokens)), added_(std::move(added)) {
  for (uint32_t id = 0; id < tokens_.size(); ++id) {
    if (!ids_.emplace(tokens_[id], id).second) fail("{}: token {:?} appears twice", origin, tokens_[id]);
    bytes_.push_back(token_bytes(tokens_[id]));
  }
  for (int b = 0; b < 256; ++b) {
    const auto id = token_to_id(byte_token(uint8_t(b)));
    if (!id) fail("{}: the vocabulary has no token for byte 0x{:02x}", origin, b);
    byte_ids_.push_back(*id);
  }
  special_.assign(tokens_.size(), false);
  for (const AddedToken& t : added_) {
    if (t.content.empty()) fail("{}: an added token is empty", origin);
    if (t.id >= tokens_.size() || tokens_[t.id] != t.content)
      fail("{}: added token {:?} does not have id {} in the vocabulary", origin, t.content, t.id);
    special_[t.id] = t.special;
  }
  const auto required = [&](std::string_view token) {
    const auto id = token_to_id(token);
    if (!id) fail("{}: the vocabulary has no {} token", origin, token);
    return *id;
  };
  bos_id_ = required(kBos);
  eos_id_ = required(kEos);
  pad_id_ = required(kPad);
}

Tokenizer Tokenizer::byte_level() {
  std::vector<std::string> tokens = {std::string(kBos), std::string(kEos), std::string(kPad), "<｜User｜>",
                                     "<｜Assistant｜>", "<think>", "</think>"};
  std::vector<AddedToken> added;
  for (uint32_t id = 0; id < tokens.size(); ++id) {
    const bool think_tag = tokens[id] == "<think>" || tokens[id] == "</think>";  // not special in DeepSeek-R1
    added.push_back({id, tokens[id], !think_tag});
  }
  for (int b = 0; b < 256; ++b) tokens.push_back(byte_token(uint8_t(b)));
  return Tokenizer(std::move(tokens), std::move(added), "byte-level tokenizer");
}

Tokenizer Tokenizer::load(const std::filesystem::path& tokenizer_json) {
  const std::string file = tokenizer_json.string();
  try {
    const Json json = Json::parse(read_file(file));
    const Json& model = json.at("model");
    if (model.at("type") != "BPE") fail("{}: model type {} is not supported, only BPE", file, model.at("type").dump());
    if (!model.at("merges").empty()) fail("{}: BPE merges are not supported yet", file);
    if (!json.at("normalizer").is_null()) fail("{}: normalizers are not supported", file);
    const Json& pre = json.at("pre_tokenizer");
    if (pre.at("type") != "ByteLevel" || pre.at("add_prefix_space") != false || pre.at("use_regex") != false)
      fail("{}: the pre_tokenizer must be ByteLevel without add_prefix_space or use_regex", file);
    if (json.at("decoder").at("type") != "ByteLevel") fail("{}: the decoder must be ByteLevel", file);
    // The post_processor is ignored on purpose: our tools add BOS themselves.

    const Json& vocab = model.at("vocab");
    std::vector<std::string> tokens(vocab.size());
    std::vector<bool> seen(vocab.size(), false);
    for (const auto& [token, id_json] : vocab.items()) {
      const auto id = id_json.get<uint32_t>();
      if (id >= tokens.size() || seen[id]) fail("{}: vocabulary ids are not 0..{} each once", file, tokens.size() - 1);
      tokens[id] = token;
      seen[id] = true;
    }
    std::vector<AddedToken> added;
    for (const Json& t : json.at("added_tokens")) {
      added.push_back({t.at("id").get<uint32_t>(), t.at("content").get<std::string>(), t.at("special").get<bool>()});
      if (t.value("lstrip", false) || t.value("rstrip", false) || t.value("single_word", false))
        fail("{}: added token {:?} uses lstrip, rstrip or single_word (not supported)", file, added.back().content);
    }
    return Tokenizer(std::move(tokens), std::move(added), file);
  } catch (const Json::exception& e) {
    fail("{}: {}", file, e.what());
  }
}

void Tokenizer::save(const std::filesystem::path& dir) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("{}: cannot create directory: {}", dir.string(), ec.message());

  Json vocab = Json::object();
  for (uint32_t id = 0; id < tokens_.size(); ++id) vocab[tokens_[id]] = id;
  Json added = Json::array();
  for (const AddedToken& t : added_) {
    added.push_back({{"id", t.id}, {"content", t.content}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", t.special}});
  }
  const Json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
  write_json(dir / "tokenizer.json",
             {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
              {"normalizer", nullptr}, {"pre_tokenizer", byte_level}, {"post_processor", nullptr},
              {"decoder", byte_level},
              {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                         {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                         {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                         {"vocab", vocab}, {"merges", Json::array()}}}});
  write_json(dir / "tokenizer_config.json",
             {{"tokenizer_class", "LlamaTokenizerFast"}, {"bos_token", tokens_[bos_id_]},
              {"eos_token", tokens_[eos_id_]}, {"pad_token", tokens_[pad_id_]}, {"add_bos_token", true},
              {"add_eos_token", false}, {"clean_up_tokenization_spaces", false},
              {"model_max_length", kModelMaxLength}, {"chat_template", kChatTemplate}});
}

std::vector<uint32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<uint32_t> ids;
  ids.reserve(text.size());
  size_t plain = 0;  // start of the text not encoded yet
  const auto encode_plain = [&](size_t end) {
    for (size_t i = plain; i < end; ++i) ids.push_back(byte_ids_[uint8_t(text[i])]);
  };
  // Added tokens are matched leftmost-longest, as in `tokenizers`. A special token that is not to be parsed is
  // still matched (and then encoded as bytes), so a non-special token inside its spelling is not split out.
  for (size_t pos = 0; pos < text.size();) {
    const AddedToken* match = nullptr;
    for (const AddedToken& t : added_) {
      if (text.substr(pos).starts_with(t.content) && (!match || t.content.size() > match->content.size())) match = &t;
    }
    if (!match) {
      ++pos;
      continue;
    }
    if (match->special && !parse_special) {
      pos += match->content.size();
      continue;
    }
    encode_plain(pos);
    ids.push_back(match->id);
    pos += match->content.size();
    plain = pos;
  }
  encode_plain(text.size());
  return ids;
}

std::string Tokenizer::decode(std::span<const uint32_t> ids, bool skip_special) const {
  std::string text;
  for (uint32_t id : ids) {
    check_id(id, tokens_.size());
    if (!(skip_special && special_[id])) text += bytes_[id];
  }
  return text;
}

const std::string& Tokenizer::id_to_token(uint32_t id) const {
  check_id(id, tokens_.size());
  return tokens_[id];
}

std::optional<uint32_t> Tokenizer::token_to_id(std::string_view token) const {
  const auto it = ids_.find(std::string(token));
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

}  // namespace ds
