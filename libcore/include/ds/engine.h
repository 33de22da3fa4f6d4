#pragma once
// Engine: inference with the MLA latent cache (docs/architecture.md#latent-cache). Each sequence caches, per layer and
// token, the normalised latent c_KV and the rotated k_pe (kv_lora_rank + qk_rope_head_dim values) instead of per-head
// keys and values, and attends in the latent space with the absorbed weights: q~ = W_UK^T q_nope, o = W_UV (P c).
// Prefill and decode are the same operation (append n tokens to a sequence), batched across sequences.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ds/cuda.h"
#include "ds/inference_model.h"
#include "ds/sampler.h"
#include "ds/tokenizer.h"

namespace ds {

struct Completion {
  std::vector<uint32_t> tokens;  // generated ids (EOS included when it ended the sequence)
  std::string text;              // decoded, special tokens skipped, cut at a stop string
  std::string finish_reason;     // "eos", "stop", "length" (max_new_tokens or the context), "cancelled"
  int64_t prompt_tokens = 0;
};

class Engine {
 public:
  // The weights' storage (a Model<float>, or an InferenceModel's FP8 or F32 tensors) must outlive the engine. Only
  // ids below tokenizer.vocab_size() are ever sampled. On a CUDA device (builds with DS_CUDA) the weights are copied
  // there as BF16 and the caches are BF16; the device becomes current for the calling thread.
  Engine(const InferenceWeights& weights, const Tokenizer& tokenizer, const Device& device = {});
  ~Engine();

  const ModelConfig& config() const;
  // The weights' values changed in place (a training step): on a GPU they are copied there again; on the CPU,
  // which reads them in place, nothing happens.
  void reload_weights();
  // Latent cache bytes per token (all layers, F32 on the CPU, BF16 on a GPU) and what a per-head K/V cache of the
  // same precision would need.
  int64_t cache_bytes_per_token() const;
  int64_t naive_cache_bytes_per_token() const;

  // Starts a sequence with an empty cache; returns its handle.
  int64_t open();
  void close(int64_t seq);
  int64_t length(int64_t seq) const;
  const std::vector<uint32_t>& tokens(int64_t seq) const;  // everything appended so far
  // Forgets the sequence's tokens from position `length` on (a chat reusing the cached prefix of its history).
  void truncate(int64_t seq, int64_t length);
  // Appends tokens to each listed sequence (prefill: many; decode: one) in one batched pass and returns the logits
  // of each sequence's last appended token, [batch.size(), vocab_size]. Throws when a sequence would pass the context.
  std::vector<float> append(const std::vector<std::pair<int64_t, std::vector<uint32_t>>>& batch);
  // Logits [B*Tn, vocab] of every position of B sequences of Tn tokens, as Model::forward computes them without
  // targets: positions are 0..Tn-1 in each row unless given ([B*Tn]); a row may pack documents, each starting at
  // position 0 and attending only to itself. One batched prefill of sequences of its own, closed again after; the
  // open sequences are untouched. What a frozen model scoring whole sequences needs (a reference or a teacher).
  std::vector<float> forward(const int32_t* inputs, int64_t B, int64_t Tn, const int32_t* positions = nullptr);

  // Generates a completion for every prompt, decoding them as one batch. Sequence i samples with seed + i, so
  // results do not depend on the batch composition. on_token(i, token) is called as tokens are produced; returning
  // false cancels sequence i.
  std::vector<Completion> generate(const std::vector<std::vector<uint32_t>>& prompts, const SamplingOptions& options,
                                   uint64_t seed, const std::function<bool(size_t, uint32_t)>& on_token = nullptr);
  // Appends tokens (at least one) to an open sequence and samples a completion after them; the completion stays
  // in the sequence's cache, so a conversation continues without recomputing its history.
  Completion continue_sequence(int64_t seq, const std::vector<uint32_t>& tokens, const SamplingOptions& options,
                               Sampler& sampler, const std::function<bool(uint32_t)>& on_token = nullptr);

 private:
  // The decode loop shared by generate and continue_sequence: feeds[i] is appended to seqs[i] first.
  std::vector<Completion> run(const std::vector<int64_t>& seqs, const std::vector<std::vector<uint32_t>>& feeds,
                              const SamplingOptions& options, std::vector<Sampler>& samplers,
                              const std::function<bool(size_t, uint32_t)>& on_token);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds
