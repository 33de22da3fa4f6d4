#include <algorithm>

#include "ds/arith.h"
#include "ds/data.h"
#include "ds/error.h"
#include "ds/shards.h"

namespace ds {

struct TokenSource::Generator {
  arith::Generator problems;
};

TokenSource TokenSource::from_shards(const std::vector<std::string>& paths, uint32_t vocab_size) {
  TokenSource s;
  if (paths.empty()) fail("no token shards given");
  for (const auto& path : paths) {
    std::vector<uint32_t> ids = read_tokens(path);
    check_token_range(path, ids, vocab_size);
    s.tokens_.insert(s.tokens_.end(), ids.begin(), ids.end());
  }
  s.description_ = paths.size() == 1 ? paths[0] : std::to_string(paths.size()) + " shards";
  return s;
}

TokenSource TokenSource::builtin_arith(const Tokenizer& tokenizer, uint64_t seed, int max_digits) {
  TokenSource s;
  s.endless_ = true;
  s.tokenizer_ = &tokenizer;
  s.seed_ = seed;
  s.max_digits_ = max_digits;
  s.description_ = "builtin:arith";
  s.restart_generator();
  return s;
}

void TokenSource::restart_generator() {
  generator_ = std::make_shared<Generator>(Generator{arith::Generator(seed_, arith::Split::train, max_digits_)});
  tokens_.clear();
  buffer_start_ = 0;
}

const uint32_t* TokenSource::window(uint64_t begin, uint64_t count) {
  if (!endless_) {
    if (tokens_.size() < count)
      fail("{}: {} tokens, fewer than one batch needs ({})", description_, tokens_.size(), count);
    return nullptr;  // shards are read with wrap-around by the caller
  }
  if (begin < buffer_start_) {
    restart_generator();
  }
  // Drop what lies before begin, then generate documents until the window is covered.
  const uint64_t drop = std::min<uint64_t>(begin - buffer_start_, tokens_.size());
  tokens_.erase(tokens_.begin(), tokens_.begin() + std::ptrdiff_t(drop));
  buffer_start_ += drop;
  while (buffer_start_ + tokens_.size() < begin + count) {
    const arith::Problem p = generator_->problems.next();
    tokens_.push_back(tokenizer_->bos_id());
    const std::vector<uint32_t> ids = tokenizer_->encode(arith::document(p), false);
    tokens_.insert(tokens_.end(), ids.begin(), ids.end());
    tokens_.push_back(tokenizer_->eos_id());
    if (buffer_start_ + tokens_.size() < begin) {  // skipping ahead after a seek
      buffer_start_ += tokens_.size();
      tokens_.clear();
    }
  }
  return tokens_.data() + (begin - buffer_start_);
}

void TokenSource::next_batch(int64_t B, int64_t Tn, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
  const uint64_t span = uint64_t(B * Tn) + 1;
  inputs.resize(size_t(B * Tn)), targets.resize(size_t(B * Tn));
  const uint32_t* w = window(cursor_, span);
  auto token = [&](uint64_t i) { return int32_t(endless_ ? w[i] : tokens_[size_t((cursor_ + i) % tokens_.size())]); };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) {
      const uint64_t i = uint64_t(b * Tn + t);
      inputs[size_t(i)] = token(i);
      targets[size_t(i)] = token(i + 1);
    }
  cursor_ += uint64_t(B * Tn);
}

void TokenSource::seek(uint64_t cursor) { cursor_ = cursor; }

}  // namespace ds
