#pragma once
// The tokenizer's model, shared by tokenizer.cpp (load, save, encode, decode) and bpe_train.cpp.
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "ds/tokenizer.h"
#include "pretokenize.h"

namespace ds {

namespace tok {

// What a tokenizer is made of, in tokenizer.json's terms; Tokenizer::Impl checks it and builds the lookup tables.
struct Spec {
  std::vector<std::string> tokens;  // model vocabulary (ids 0..n-1), then added tokens outside it, by id
  size_t model_vocab = 0;           // how many of `tokens` are the BPE model's vocabulary
  std::vector<AddedToken> added;
  std::vector<std::pair<std::string, std::string>> merges;  // by rank
  bool ignore_merges = false;                               // a piece that is a whole vocabulary token skips the merges
  Json pre_tokenizer, post_processor, decoder;
  std::optional<std::string> bos, eos, pad;  // from tokenizer_config.json; else see Tokenizer::load
  std::string chat_template;
};

// A string-keyed map that looks up string_views without copying them.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename T>
using StringMap = std::unordered_map<std::string, T, StringHash, std::equal_to<>>;

// Merged pieces of recently seen words, so repeated words skip the merge loop. Direct-mapped: a word's hash picks
// its one slot and a newer word takes it over, so memory stays fixed and a frequent word evicted is soon back.
// A slot is one cache line (words up to 22 bytes and 10 tokens: nearly all); striped locks guard the slots.
class WordCache {
 public:
  bool find(std::string_view word, std::vector<uint32_t>& out) const;  // appends the ids when cached
  void insert(std::string_view word, std::span<const uint32_t> ids) const;

 private:
  struct alignas(64) Slot {
    uint8_t size = 0;  // of the word; 0 for an empty slot
    uint8_t count = 0;
    char bytes[22];
    uint32_t ids[10];
  };
  static constexpr size_t kSlots = size_t(1) << 15, kLocks = 64;  // 2 MiB
  size_t slot_of(std::string_view word) const { return StringHash{}(word) & (kSlots - 1); }
  std::unique_ptr<Slot[]> slots_ = std::make_unique<Slot[]>(kSlots);
  mutable std::array<std::mutex, kLocks> locks_;
};

// (left id, right id) -> rank and merged id: the lookup in BPE's inner loop, so a flat table with linear probing,
// at most half full, where a lookup is one cache line rather than std::unordered_map's bucket and node.
class MergeTable {
 public:
  struct Merge {
    uint32_t rank, id;
  };
  explicit MergeTable(size_t capacity);
  void insert(uint32_t left, uint32_t right, Merge merge);  // replaces an earlier merge of the same pair
  const Merge* find(uint32_t left, uint32_t right) const;
  bool empty() const { return size_ == 0; }

 private:
  static constexpr uint64_t kEmpty = UINT64_MAX;  // no pair: ids are below 2^32 - 1
  struct Slot {
    uint64_t key = kEmpty;
    Merge merge{};
  };
  size_t slot_of(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ULL) >> shift_); }
  std::vector<Slot> slots_;
  int shift_;
  size_t size_ = 0;
};

// Runs f(i) for i in [0, n) on the OpenMP threads; the first exception thrown is rethrown here.
void parallel_for(size_t n, const std::function<void(size_t)>& f);

}  // namespace tok

struct Tokenizer::Impl {
  Impl(tok::Spec spec, const std::string& origin);

  // The encoding walk: added tokens as on_token(id), the text between them as pre-tokenized pieces on_piece(bytes).
  void walk(std::string_view text, bool parse_special, const std::function<void(uint32_t)>& on_token,
            const std::function<void(std::string_view)>& on_piece) const;
  // Appends a piece's BPE tokens.
  void bpe(std::string_view piece, std::vector<uint32_t>& out) const;

  tok::Spec spec;  // as given, for save() and ==
  tok::PreTokenizer pre;
  tok::StringMap<uint32_t> ids;          // spelling -> id
  std::vector<std::string> bytes;        // id -> the bytes it decodes to
  std::vector<bool> special;             // id -> is a special added token
  std::array<uint32_t, 256> byte_ids{};  // byte -> its token id
  tok::MergeTable merges;
  tok::StringMap<uint32_t> words;  // ignore_merges: bytes of a model token -> its id
  std::array<std::vector<uint32_t>, 256>
      added_by_byte[2];  // [normalized] first byte -> added-token indices, longest first
  uint32_t bos = 0, eos = 0, pad = 0;
  bool adds_bos = false;
  tok::WordCache cache;

 private:
  void split_added(std::string_view text, bool parse_special, bool normalized,
                   const std::function<void(uint32_t)>& on_token,
                   const std::function<void(std::string_view)>& on_text) const;
};

}  // namespace ds
