#include "ds/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <queue>

#include "../io/utf8.h"
#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/jsonl.h"
#include "impl.h"

namespace ds {
namespace {

using tok::Json;

// DeepSeek's spellings (U+FF5C "｜" and U+2581 "▁"), ids 0..6 of the default tokenizer.
constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
constexpr std::string_view kPad = "<｜▁pad▁｜>";

// DeepSeek-R1's chat format, as ds/chat.h renders it: BOS, the system messages with no role token,
// <｜User｜>/<｜Assistant｜> turns with EOS closing each assistant turn, the reasoning (up to the last </think>) of
// assistant turns that a later message follows dropped, and a generation prompt that opens the think block. Tool
// calls are left out: our vocabularies have no tool tokens.
constexpr std::string_view kChatTemplate = R"jinja({{ bos_token }}
{%- for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}{% endif %}{% endfor %}
{%- for message in messages %}
  {%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}
  {%- elif message['role'] == 'assistant' %}
    {%- set content = message['content'] if loop.last else message['content'].split('</think>')[-1] %}
    {{- '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}
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

// The bytes a token spelled entirely in the byte alphabet stands for; nullopt for any other token (DeepSeek's
// special tokens), which Hugging Face's ByteLevel decoder passes through as its own UTF-8.
std::optional<std::string> alphabet_bytes(const std::string& token) {
  std::string out;
  for (size_t i = 0; i < token.size();) {
    const auto lead = uint8_t(token[i]);
    uint32_t c = lead;
    if (lead >= 0x80) {
      if ((lead & 0xE0) != 0xC0 || i + 1 == token.size()) return std::nullopt;  // 3 or 4 bytes: not in the alphabet
      c = ((lead & 0x1Fu) << 6) | (uint8_t(token[i + 1]) & 0x3Fu);
    }
    i += lead < 0x80 ? 1 : 2;
    if (c >= char_bytes().size() || char_bytes()[c] < 0) return std::nullopt;
    out += char(char_bytes()[c]);
  }
  return out;
}

// Rust's char::is_whitespace (Unicode White_Space), which `tokenizers` uses for lstrip and rstrip.
bool is_whitespace(uint32_t c) {
  return (c >= 0x9 && c <= 0xD) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Bytes of whitespace characters starting at `pos`, or ending at `pos` and not before `floor`.
size_t whitespace_after(std::string_view s, size_t pos) {
  size_t end = pos;
  for (std::optional<std::pair<uint32_t, size_t>> c;
       end < s.size() && (c = tok::decode_utf8(s, end)) && is_whitespace(c->first);)
    end += c->second;
  return end - pos;
}
size_t whitespace_before(std::string_view s, size_t pos, size_t floor) {
  size_t begin = pos;
  while (begin > floor) {
    size_t start = begin - 1;  // back to the lead byte of the character before `begin`
    while (start > floor && begin - start < 4 && (uint8_t(s[start]) & 0xC0) == 0x80) --start;
    const auto c = tok::decode_utf8(s, start);
    if (!c || start + c->second != begin || !is_whitespace(c->first)) break;
    begin = start;
  }
  return pos - begin;
}

void check_id(uint32_t id, size_t vocab_size) {
  if (id >= vocab_size) fail("token id {} is out of range (vocabulary size {})", id, vocab_size);
}

// Written whole or not at all, since tokenizer files are part of checkpoints. Ordered, so keys stay in the order
// Hugging Face writes them and the vocabulary in id order.
using OrderedJson = nlohmann::ordered_json;
void write_json(const std::filesystem::path& path, const OrderedJson& json) {
  write_file_atomic(path.string(), json.dump(2) + "\n");
}

// A token id: an integer in uint32's range (get<uint32_t>() would convert a float such as 1e88 with undefined
// behaviour).
uint32_t token_id(const Json& value, const std::string& file) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > int64_t(UINT32_MAX))
    fail("{}: token id {} is not an integer from 0 to 2^32 - 1", file, value.dump());
  return uint32_t(value.get<int64_t>());
}

// The id of the special token a TemplateProcessing post-processor puts first, if it does.
std::optional<uint32_t> template_bos(const Json& post, const std::string& file) {
  if (post.is_null()) return std::nullopt;
  if (post.at("type") == "Sequence") {
    for (const Json& p : post.at("processors"))
      if (auto id = template_bos(p, file)) return id;
    return std::nullopt;
  }
  if (post.at("type") != "TemplateProcessing" || post.at("single").empty()) return std::nullopt;
  const Json& first = post.at("single").front();
  if (!first.contains("SpecialToken")) return std::nullopt;
  const std::string name = first.at("SpecialToken").at("id").get<std::string>();
  return token_id(post.at("special_tokens").at(name).at("ids").at(0), file);
}

Json byte_level_json() {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
}

// A tokenizer_config.json token field: a string, an {"content": ...} object, or null.
std::optional<std::string> config_token(const Json& config, const char* key) {
  if (!config.contains(key) || config[key].is_null()) return std::nullopt;
  const Json& v = config[key];
  return v.is_string() ? v.get<std::string>() : v.at("content").get<std::string>();
}

// Reads bos/eos/pad and the chat template of a tokenizer_config.json into `spec`, when the file exists.
void read_tokenizer_config(const std::filesystem::path& path, tok::Spec& spec) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return;
  const std::string file = path.string();
  try {
    const Json config = Json::parse(read_regular_file(file));
    spec.bos = config_token(config, "bos_token");
    spec.eos = config_token(config, "eos_token");
    spec.pad = config_token(config, "pad_token");
    if (config.contains("chat_template")) {
      const Json& t = config["chat_template"];  // a string, or a list of {"name", "template"} with a "default"
      if (t.is_string()) spec.chat_template = t.get<std::string>();
      for (const Json& named : t.is_array() ? t : Json::array())
        if (named.at("name") == "default") spec.chat_template = named.at("template").get<std::string>();
    }
  } catch (const Json::exception& e) {
    fail("{}: {}", file, json_error(e));
  }
}

}  // namespace

namespace tok {

MergeTable::MergeTable(size_t capacity) {
  int bits = 4;
  while ((size_t(1) << bits) < 2 * capacity) ++bits;
  slots_.resize(size_t(1) << bits);
  shift_ = 64 - bits;
}

void MergeTable::insert(uint32_t left, uint32_t right, Merge merge) {
  const uint64_t key = uint64_t(left) << 32 | right;
  size_t i = slot_of(key);
  while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & (slots_.size() - 1);
  size_ += slots_[i].key == kEmpty;
  slots_[i] = {key, merge};
}

const MergeTable::Merge* MergeTable::find(uint32_t left, uint32_t right) const {
  const uint64_t key = uint64_t(left) << 32 | right;
  for (size_t i = slot_of(key);; i = (i + 1) & (slots_.size() - 1)) {
    if (slots_[i].key == key) return &slots_[i].merge;
    if (slots_[i].key == kEmpty) return nullptr;
  }
}

bool WordCache::find(std::string_view word, std::vector<uint32_t>& out) const {
  if (word.size() > sizeof(Slot::bytes)) return false;
  const size_t i = slot_of(word);
  const Slot& slot = slots_[i];
  std::lock_guard lock(locks_[i % kLocks]);
  if (slot.size != word.size() || std::memcmp(slot.bytes, word.data(), word.size()) != 0) return false;
  out.insert(out.end(), slot.ids, slot.ids + slot.count);
  return true;
}

void WordCache::insert(std::string_view word, std::span<const uint32_t> ids) const {
  if (word.size() > sizeof(Slot::bytes) || ids.size() > sizeof(Slot::ids) / sizeof(uint32_t)) return;
  const size_t i = slot_of(word);
  Slot& slot = slots_[i];
  std::lock_guard lock(locks_[i % kLocks]);
  slot.size = uint8_t(word.size());
  slot.count = uint8_t(ids.size());
  std::memcpy(slot.bytes, word.data(), word.size());
  std::copy(ids.begin(), ids.end(), slot.ids);
}

}  // namespace tok

Tokenizer::Impl::Impl(tok::Spec spec_in, const std::string& origin)
    : spec(std::move(spec_in)), pre(spec.pre_tokenizer, origin), merges(spec.merges.size()) {
  const std::vector<std::string>& tokens = spec.tokens;
  for (uint32_t id = 0; id < tokens.size(); ++id) {
    if (!ids.emplace(tokens[id], id).second) fail("{}: token {:?} appears twice", origin, tokens[id]);
    const auto b = alphabet_bytes(tokens[id]);
    bytes.push_back(b.value_or(tokens[id]));
    if (spec.ignore_merges && b && id < spec.model_vocab) words.emplace(*b, id);
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = ids.find(byte_token(uint8_t(b)));
    if (it == ids.end() || it->second >= spec.model_vocab)
      fail("{}: the vocabulary has no token for byte 0x{:02x}", origin, b);
    byte_ids[b] = it->second;
  }

  special.assign(tokens.size(), false);
  for (uint32_t i = 0; i < spec.added.size(); ++i) {
    const AddedToken& t = spec.added[i];
    if (t.content.empty()) fail("{}: an added token is empty", origin);
    if (t.id >= tokens.size() || tokens[t.id] != t.content)
      fail("{}: added token {:?} does not have id {} in the vocabulary", origin, t.content, t.id);
    special[t.id] = t.special;
    added_by_byte[t.normalized][uint8_t(t.content[0])].push_back(i);
  }
  for (auto& table : added_by_byte)
    for (std::vector<uint32_t>& list : table)
      std::stable_sort(list.begin(), list.end(), [&](uint32_t a, uint32_t b) {
        return spec.added[a].content.size() > spec.added[b].content.size();
      });

  for (uint32_t rank = 0; rank < spec.merges.size(); ++rank) {
    const std::string& a = spec.merges[rank].first;
    const std::string& b = spec.merges[rank].second;
    const auto model_id = [&](const std::string& token) {
      const auto it = ids.find(token);
      if (it == ids.end() || it->second >= spec.model_vocab)
        fail("{}: merge {:?} {:?}: {:?} is not in the vocabulary", origin, a, b, token);
      return it->second;
    };
    merges.insert(model_id(a), model_id(b), {rank, model_id(a + b)});  // a repeated merge keeps its last rank
  }

  const auto required = [&](std::string_view what, std::string_view token) {
    const auto it = ids.find(token);
    if (it == ids.end()) fail("{}: the {} token {:?} is not in the vocabulary", origin, what, token);
    return it->second;
  };
  const std::optional<uint32_t> post_bos = template_bos(spec.post_processor, origin);
  if (post_bos) check_id(*post_bos, tokens.size());
  adds_bos = post_bos.has_value();
  bos = spec.bos ? required("BOS", *spec.bos) : post_bos ? *post_bos : required("BOS", kBos);
  eos = required("EOS", spec.eos.value_or(std::string(kEos)));
  pad = spec.pad ? required("pad", *spec.pad) : ids.contains(kPad) ? ids.find(kPad)->second : eos;
}

void Tokenizer::Impl::walk(std::string_view text, bool parse_special, const std::function<void(uint32_t)>& on_token,
                           const std::function<void(std::string_view)>& on_piece) const {
  // As `tokenizers` does: tokens with normalized=false are split out of the raw text, then normalized=true ones out
  // of what is left (there is no normalizer, so only the order differs), then the pre-tokenizer cuts the rest.
  split_added(text, parse_special, false, on_token, [&](std::string_view rest) {
    split_added(rest, parse_special, true, on_token, [&](std::string_view plain) { pre.split(plain, on_piece); });
  });
}

void Tokenizer::Impl::split_added(std::string_view text, bool parse_special, bool normalized,
                                  const std::function<void(uint32_t)>& on_token,
                                  const std::function<void(std::string_view)>& on_text) const {
  const auto& table = added_by_byte[normalized];
  size_t plain = 0;  // start of the text not handed out yet
  // Leftmost-longest matching. A special token that is not to be parsed is still matched (and left in the text),
  // so a non-special token inside its spelling is not split out.
  for (size_t pos = 0; pos < text.size();) {
    const AddedToken* match = nullptr;
    for (uint32_t i : table[uint8_t(text[pos])]) {
      if (text.substr(pos).starts_with(spec.added[i].content)) {
        match = &spec.added[i];
        break;
      }
    }
    if (!match) {
      ++pos;
      continue;
    }
    size_t begin = pos, end = pos + match->content.size();
    pos = end;
    if (match->special && !parse_special) continue;
    if (match->lstrip) begin -= whitespace_before(text, begin, plain);
    if (match->rstrip) end += whitespace_after(text, end);
    if (begin > plain) on_text(text.substr(plain, begin - plain));
    on_token(match->id);
    plain = pos = end;
  }
  if (plain < text.size()) on_text(text.substr(plain));
}

void Tokenizer::Impl::bpe(std::string_view piece, std::vector<uint32_t>& out) const {
  if (merges.empty()) {
    for (char c : piece) out.push_back(byte_ids[uint8_t(c)]);
    return;
  }
  if (piece.empty()) return;
  if (!words.empty()) {
    const auto it = words.find(piece);
    if (it != words.end()) return out.push_back(it->second);
  }
  if (cache.find(piece, out)) return;

  // `tokenizers`' merge loop: symbols in a linked list, candidate merges in a heap by (rank, position); an entry
  // whose pair changed since it was pushed is skipped.
  struct Symbol {
    uint32_t id;
    int prev, next;
  };
  struct Candidate {
    uint32_t rank, pos, id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  constexpr uint32_t kGone = UINT32_MAX;
  const int n = int(piece.size());
  std::vector<Symbol> symbols(n);
  for (int i = 0; i < n; ++i) symbols[i] = {byte_ids[uint8_t(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  const auto push = [&](int pos) {
    const int next = symbols[pos].next;
    if (next < 0) return;
    if (const auto* m = merges.find(symbols[pos].id, symbols[next].id)) heap.push({m->rank, uint32_t(pos), m->id});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = symbols[top.pos];
    if (left.id == kGone || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const auto* m = merges.find(left.id, right.id);
    if (!m || m->id != top.id) continue;
    left.id = top.id;
    right.id = kGone;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = int(top.pos);
    if (left.prev >= 0) push(left.prev);
    push(int(top.pos));
  }
  const size_t first = out.size();
  for (int i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
  cache.insert(piece, std::span(out).subspan(first));
}

Tokenizer Tokenizer::byte_level() {
  tok::Spec spec;
  spec.tokens = {std::string(kBos), std::string(kEos), std::string(kPad), "<｜User｜>",
                 "<｜Assistant｜>", "<think>",         "</think>"};
  for (uint32_t id = 0; id < spec.tokens.size(); ++id) {
    const bool think_tag = spec.tokens[id] == "<think>" || spec.tokens[id] == "</think>";  // not special in R1
    spec.added.push_back({.id = id, .content = spec.tokens[id], .special = !think_tag});
  }
  for (int b = 0; b < 256; ++b) spec.tokens.push_back(byte_token(uint8_t(b)));
  spec.model_vocab = spec.tokens.size();
  spec.pre_tokenizer = spec.decoder = byte_level_json();
  spec.chat_template = kChatTemplate;
  return Tokenizer(std::make_shared<const Impl>(std::move(spec), "byte-level tokenizer"));
}

Tokenizer Tokenizer::load(const std::filesystem::path& path) {
  std::error_code ec;
  const bool dir = std::filesystem::is_directory(path, ec);
  const std::filesystem::path json_path = dir ? path / "tokenizer.json" : path;
  const std::string file = json_path.string();
  tok::Spec spec;
  spec.chat_template = kChatTemplate;
  try {
    const Json json = Json::parse(read_regular_file(file));
    const Json& model = json.at("model");
    if (model.at("type") != "BPE") fail("{}: model type {} is not supported, only BPE", file, model.at("type").dump());
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (!model.value(key, Json()).is_null() && model[key] != "") fail("{}: BPE {} is not supported", file, key);
    if (!model.value("dropout", Json()).is_null() && model["dropout"] != 0.0)
      fail("{}: BPE dropout is not supported", file);
    spec.ignore_merges = model.value("ignore_merges", false);
    const Json& normalizer = json.at("normalizer");
    const bool no_normalizer =
        normalizer.is_null() || (normalizer.at("type") == "Sequence" && normalizer.at("normalizers").empty());
    if (!no_normalizer) fail("{}: normalizer {} is not supported", file, normalizer.at("type").dump());
    spec.pre_tokenizer = json.at("pre_tokenizer");
    if (spec.pre_tokenizer.is_null()) fail("{}: the pre_tokenizer must be ByteLevel (byte-level BPE)", file);
    spec.decoder = json.at("decoder");
    if (spec.decoder.is_null() || spec.decoder.at("type") != "ByteLevel")
      fail("{}: the decoder must be ByteLevel", file);
    spec.post_processor = json.value("post_processor", Json());

    const Json& vocab = model.at("vocab");
    spec.model_vocab = vocab.size();
    spec.tokens.resize(vocab.size());
    std::vector<bool> seen(vocab.size(), false);
    for (const auto& [token, id_json] : vocab.items()) {
      const uint32_t id = token_id(id_json, file);
      if (id >= vocab.size() || seen[id]) fail("{}: vocabulary ids are not 0..{} each once", file, vocab.size() - 1);
      spec.tokens[id] = token;
      seen[id] = true;
    }
    const Json& added = json.at("added_tokens");
    for (const Json& t : added) {
      AddedToken a{.id = token_id(t.at("id"), file),
                   .content = t.at("content").get<std::string>(),
                   .special = t.at("special").get<bool>(),
                   .lstrip = t.value("lstrip", false),
                   .rstrip = t.value("rstrip", false),
                   .normalized = t.value("normalized", !t.at("special").get<bool>())};
      if (t.value("single_word", false)) fail("{}: added token {:?} uses single_word (not supported)", file, a.content);
      // Ids must run 0..N-1 without a gap, so no id can reach past the tokens listed (nor size a huge table).
      if (a.id >= vocab.size() + added.size())
        fail("{}: added token id {} leaves ids without a token ({} tokens in all)", file, a.id,
             vocab.size() + added.size());
      if (a.id >= spec.tokens.size()) {  // outside the model vocabulary
        spec.tokens.resize(a.id + 1);
        seen.resize(a.id + 1, false);
        spec.tokens[a.id] = a.content;
        seen[a.id] = true;
      }
      spec.added.push_back(std::move(a));
    }
    if (const auto gap = std::find(seen.begin(), seen.end(), false); gap != seen.end())
      fail("{}: id {} has no token", file, gap - seen.begin());
    for (const Json& m : model.at("merges")) {
      if (m.is_array()) {
        spec.merges.emplace_back(m.at(0).get<std::string>(), m.at(1).get<std::string>());
        continue;
      }
      const auto s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        fail("{}: merge {:?} is not two tokens separated by a space", file, s);
      spec.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    }
  } catch (const Json::exception& e) {
    fail("{}: {}", file, json_error(e));
  }
  read_tokenizer_config(json_path.parent_path() / "tokenizer_config.json", spec);
  try {  // the pre-tokenizer reads its own part of the file
    return Tokenizer(std::make_shared<const Impl>(std::move(spec), file));
  } catch (const Json::exception& e) {
    fail("{}: {}", file, json_error(e));
  }
}

void Tokenizer::save(const std::filesystem::path& dir) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("{}: cannot create directory: {}", dir.string(), ec.message());

  const tok::Spec& spec = impl_->spec;
  OrderedJson vocab = OrderedJson::object();
  auto& entries = vocab.get_ref<OrderedJson::object_t&>();  // a vector: appending skips the O(n) duplicate check
  entries.reserve(spec.model_vocab);
  for (uint32_t id = 0; id < spec.model_vocab; ++id) entries.emplace_back(spec.tokens[id], id);
  OrderedJson merges = OrderedJson::array();
  for (const auto& [a, b] : spec.merges) merges.push_back({a, b});
  OrderedJson added = OrderedJson::array();
  for (const AddedToken& t : spec.added) {
    added.push_back({{"id", t.id},
                     {"content", t.content},
                     {"single_word", false},
                     {"lstrip", t.lstrip},
                     {"rstrip", t.rstrip},
                     {"normalized", t.normalized},
                     {"special", t.special}});
  }
  write_json(dir / "tokenizer.json", {{"version", "1.0"},
                                      {"truncation", nullptr},
                                      {"padding", nullptr},
                                      {"added_tokens", added},
                                      {"normalizer", nullptr},
                                      {"pre_tokenizer", OrderedJson(spec.pre_tokenizer)},
                                      {"post_processor", OrderedJson(spec.post_processor)},
                                      {"decoder", OrderedJson(spec.decoder)},
                                      {"model",
                                       {{"type", "BPE"},
                                        {"dropout", nullptr},
                                        {"unk_token", nullptr},
                                        {"continuing_subword_prefix", nullptr},
                                        {"end_of_word_suffix", nullptr},
                                        {"fuse_unk", false},
                                        {"byte_fallback", false},
                                        {"ignore_merges", spec.ignore_merges},
                                        {"vocab", vocab},
                                        {"merges", merges}}}});
  write_json(dir / "tokenizer_config.json", {{"tokenizer_class", "LlamaTokenizerFast"},
                                             {"bos_token", spec.tokens[impl_->bos]},
                                             {"eos_token", spec.tokens[impl_->eos]},
                                             {"pad_token", spec.tokens[impl_->pad]},
                                             {"add_bos_token", true},
                                             {"add_eos_token", false},
                                             {"clean_up_tokenization_spaces", false},
                                             {"model_max_length", kModelMaxLength},
                                             {"chat_template", spec.chat_template}});
}

std::vector<uint32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<uint32_t> ids;
  ids.reserve(text.size() / 2);
  impl_->walk(
      text, parse_special, [&](uint32_t id) { ids.push_back(id); },
      [&](std::string_view piece) { impl_->bpe(piece, ids); });
  return ids;
}

std::string Tokenizer::decode(std::span<const uint32_t> ids, bool skip_special) const {
  std::string text;
  for (uint32_t id : ids) {
    check_id(id, impl_->bytes.size());
    if (!(skip_special && impl_->special[id])) text += impl_->bytes[id];
  }
  return text;
}

const std::string& Tokenizer::id_to_token(uint32_t id) const {
  check_id(id, impl_->spec.tokens.size());
  return impl_->spec.tokens[id];
}

std::optional<uint32_t> Tokenizer::token_to_id(std::string_view token) const {
  const auto it = impl_->ids.find(token);
  if (it == impl_->ids.end()) return std::nullopt;
  return it->second;
}

size_t Tokenizer::vocab_size() const { return impl_->spec.tokens.size(); }
size_t Tokenizer::merge_count() const { return impl_->spec.merges.size(); }
uint32_t Tokenizer::bos_id() const { return impl_->bos; }
uint32_t Tokenizer::eos_id() const { return impl_->eos; }
uint32_t Tokenizer::pad_id() const { return impl_->pad; }
bool Tokenizer::adds_bos() const { return impl_->adds_bos; }
const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->spec.added; }
const std::string& Tokenizer::chat_template() const { return impl_->spec.chat_template; }

bool Tokenizer::operator==(const Tokenizer& other) const {
  const Impl &a = *impl_, &b = *other.impl_;
  return a.spec.tokens == b.spec.tokens && a.spec.model_vocab == b.spec.model_vocab && a.spec.added == b.spec.added &&
         a.spec.merges == b.spec.merges && a.spec.ignore_merges == b.spec.ignore_merges &&
         a.spec.pre_tokenizer == b.spec.pre_tokenizer && a.spec.post_processor == b.spec.post_processor &&
         a.spec.decoder == b.spec.decoder && a.spec.chat_template == b.spec.chat_template && a.bos == b.bos &&
         a.eos == b.eos && a.pad == b.pad;
}

namespace tok {

void parallel_for(size_t n, const std::function<void(size_t)>& f) {
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 16)
  for (size_t i = 0; i < n; ++i) {
    try {
      f(i);
    } catch (...) {
#pragma omp critical
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace tok

std::vector<uint32_t> encode_documents(const Tokenizer& tokenizer, std::span<const std::string_view> documents,
                                       bool parse_special) {
  std::vector<std::vector<uint32_t>> encoded(documents.size());
  tok::parallel_for(documents.size(), [&](size_t i) { encoded[i] = tokenizer.encode(documents[i], parse_special); });
  size_t total = 0;
  for (const auto& e : encoded) total += e.size() + 2;
  std::vector<uint32_t> ids;
  ids.reserve(total);
  for (auto& e : encoded) {
    ids.push_back(tokenizer.bos_id());
    ids.insert(ids.end(), e.begin(), e.end());
    ids.push_back(tokenizer.eos_id());
    std::vector<uint32_t>().swap(e);  // free as we go: the encoded corpus may be most of memory
  }
  return ids;
}

}  // namespace ds
