#pragma once
// TokenSource: the pretraining token stream, cut into packed batches. Documents are concatenated (each framed by
// BOS ... EOS) and every sequence is a window of Tn+1 consecutive tokens, so no token is padding. The stream
// position is one number (the cursor), which is all a checkpoint needs to resume exactly where it stopped.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ds/tokenizer.h"

namespace ds {

class TokenSource {
 public:
  // Token shards (.tok / .tok.zst, "-" for stdin), read whole and cycled through in order.
  static TokenSource from_shards(const std::vector<std::string>& paths, uint32_t vocab_size);
  // builtin:arith: an endless stream of training problems generated from seed.
  static TokenSource builtin_arith(const Tokenizer& tokenizer, uint64_t seed, int max_digits = 2);

  // inputs and targets [B * Tn]: targets are inputs shifted by one.
  void next_batch(int64_t B, int64_t Tn, std::vector<int32_t>& inputs, std::vector<int32_t>& targets);
  uint64_t cursor() const { return cursor_; }
  void seek(uint64_t cursor);
  const std::string& description() const { return description_; }

 private:
  const uint32_t* window(uint64_t begin, uint64_t count);  // tokens [begin, begin+count) of the stream

  std::string description_;
  uint64_t cursor_ = 0;
  std::vector<uint32_t> tokens_;  // shards: all tokens; builtin: tokens from buffer_start_ on
  bool endless_ = false;
  uint64_t buffer_start_ = 0;
  // builtin:arith
  const Tokenizer* tokenizer_ = nullptr;
  uint64_t seed_ = 0;
  int max_digits_ = 2;
  struct Generator;
  std::shared_ptr<Generator> generator_;
  void restart_generator();
};

}  // namespace ds
