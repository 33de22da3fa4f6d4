// Byte-level BPE training. Words (pre-tokenized pieces) are counted once; then each merge picks the most frequent
// adjacent pair from a heap and rewrites only the words that hold it, found through a pair -> words index, updating
// the pair counts by the differences. Nothing is recounted per merge.
#include <omp.h>

#include <algorithm>
#include <queue>

#include "ds/error.h"
#include "impl.h"

namespace ds {
namespace {

constexpr int64_t kMinPairCount = 2;  // a pair seen once is not worth a token

uint64_t pair_key(uint32_t a, uint32_t b) { return uint64_t(a) << 32 | b; }

struct Word {
  std::vector<uint32_t> symbols;  // token ids, bytes at first
  int64_t count;
};

}  // namespace

Tokenizer Tokenizer::train(std::span<const std::string_view> documents, const BpeTrainOptions& options) {
  tok::Spec spec = byte_level().impl_->spec;
  if (options.vocab_size < spec.tokens.size())
    fail("the vocabulary size must be at least {} (special tokens and bytes), not {}", spec.tokens.size(),
         options.vocab_size);
  spec.pre_tokenizer = tok::PreTokenizer::deepseek_v3_config();
  const Impl base(spec, "BPE training");

  // Every distinct piece of the documents and how often it occurs, sorted by bytes so that what follows does not
  // depend on the thread count or hash order.
  std::vector<tok::StringMap<int64_t>> per_thread(static_cast<size_t>(omp_get_max_threads()));
  tok::parallel_for(documents.size(), [&](size_t i) {
    tok::StringMap<int64_t>& counts = per_thread[static_cast<size_t>(omp_get_thread_num())];
    base.walk(
        documents[i], true, [](uint32_t) {},
        [&](std::string_view piece) {
          const auto it = counts.find(piece);
          if (it != counts.end())
            ++it->second;
          else
            counts.emplace(piece, 1);
        });
  });
  for (size_t t = 1; t < per_thread.size(); ++t)
    for (auto& [word, n] : per_thread[t]) per_thread[0][word] += n;
  std::vector<std::pair<std::string, int64_t>> distinct(per_thread[0].begin(), per_thread[0].end());
  per_thread.clear();
  std::sort(distinct.begin(), distinct.end());

  std::vector<Word> words;
  for (const auto& [text, count] : distinct) {
    if (text.size() < 2) continue;  // no pairs
    Word& w = words.emplace_back(Word{{}, count});
    for (char c : text) w.symbols.push_back(base.byte_ids[uint8_t(c)]);
  }

  // Pair counts, the words each pair occurs in (possibly stale: a word may have lost the pair since), and a heap
  // of (count, pair) whose entries are checked against the current count when they come up.
  std::unordered_map<uint64_t, int64_t> counts;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;
  std::vector<uint64_t> touched;  // pairs that gained counts in this merge
  const auto add = [&](uint64_t pair, int64_t delta, uint32_t word) {
    counts[pair] += delta;
    if (delta <= 0) return;
    touched.push_back(pair);
    std::vector<uint32_t>& list = where[pair];
    if (list.empty() || list.back() != word) list.push_back(word);
  };
  for (uint32_t w = 0; w < words.size(); ++w)
    for (size_t i = 0; i + 1 < words[w].symbols.size(); ++i)
      add(pair_key(words[w].symbols[i], words[w].symbols[i + 1]), words[w].count, w);
  struct Entry {
    int64_t count;
    uint64_t pair;
    bool operator<(const Entry& o) const { return count != o.count ? count < o.count : pair > o.pair; }
  };
  std::priority_queue<Entry> heap;
  for (const auto& [pair, count] : counts) heap.push({count, pair});
  touched.clear();

  tok::StringMap<uint32_t> ids;
  for (uint32_t id = 0; id < spec.tokens.size(); ++id) ids.emplace(spec.tokens[id], id);
  const size_t max_merges = options.vocab_size - spec.tokens.size();
  while (spec.tokens.size() < options.vocab_size && !heap.empty()) {
    const Entry top = heap.top();
    heap.pop();
    const auto found = counts.find(top.pair);
    const int64_t current = found == counts.end() ? 0 : found->second;
    if (current != top.count) {
      if (current > 0) heap.push({current, top.pair});
      continue;
    }
    if (current < kMinPairCount) break;

    const auto a = uint32_t(top.pair >> 32), b = uint32_t(top.pair);
    spec.merges.emplace_back(spec.tokens[a], spec.tokens[b]);
    // A spelling reached before by other merges keeps its id.
    const uint32_t merged = ids.emplace(spec.tokens[a] + spec.tokens[b], uint32_t(spec.tokens.size())).first->second;
    if (merged == spec.tokens.size()) spec.tokens.push_back(spec.tokens[a] + spec.tokens[b]);

    // Rewrite each word holding the pair, left to right, recording how its adjacent pairs change.
    for (uint32_t w : where[top.pair]) {
      const std::vector<uint32_t>& s = words[w].symbols;
      const int64_t n = words[w].count;
      std::vector<uint32_t> out;
      out.reserve(s.size());
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          if (!out.empty()) {
            add(pair_key(out.back(), a), -n, w);
            add(pair_key(out.back(), merged), n, w);
          }
          add(top.pair, -n, w);
          if (i + 2 < s.size()) {
            add(pair_key(b, s[i + 2]), -n, w);
            add(pair_key(merged, s[i + 2]), n, w);
          }
          out.push_back(merged);
          i += 2;
        } else {
          out.push_back(s[i++]);
        }
      }
      words[w].symbols = std::move(out);
    }
    where.erase(top.pair);
    counts.erase(top.pair);
    // Only pairs with the new token gained counts; the rest only lost some, which the heap check catches.
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t pair : touched)
      if (counts[pair] > 0) heap.push({counts[pair], pair});
    touched.clear();
    if (options.progress && spec.merges.size() % 1000 == 0) options.progress(spec.merges.size(), max_merges);
  }
  if (options.progress) options.progress(spec.merges.size(), max_merges);
  spec.model_vocab = spec.tokens.size();
  return Tokenizer(std::make_shared<const Impl>(std::move(spec), "BPE training"));
}

}  // namespace ds
