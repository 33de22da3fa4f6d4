#pragma once
// The GRPO objective (DeepSeekMath, DeepSeek-R1) and its common variants, as pure functions over per-token
// log-probabilities, so every number can be checked by hand:
//
//   advantage   A_i = (r_i - mean(r_group)) / (std(r_group) + eps)      (--scale-rewards none: r_i - mean, Dr. GRPO)
//   ratio       rho_t = exp(logp_t - old_logp_t)
//   surrogate   l_t = -min(rho_t A, clip(rho_t, 1 - epsilon, 1 + epsilon_high) A) + beta * KL_t
//   k3 KL       KL_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1
//   loss        L = sum_t s_t l_t, with the aggregation's token scale s_t (token_scales below)
//
// policy_loss also returns w_t = -dL/dlogp_t, the per-token weights Model::forward takes: its weighted loss
// sum_t w_t * (-logp_t) then has the gradient of L, so backward() needs no GRPO-specific code.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ds::grpo {

enum class ScaleRewards { group, none };
enum class Aggregation {
  grpo,     // mean over each sequence's tokens, then mean over sequences
  dapo,     // sum over all tokens / total tokens (token-level mean, DAPO)
  dr_grpo,  // sum over all tokens / (sequences * max_completion_len), a constant (Dr. GRPO)
};
ScaleRewards parse_scale_rewards(const std::string& name);  // "group", "none"
Aggregation parse_aggregation(const std::string& name);     // "grpo", "dapo", "dr_grpo"

// Rewards come in consecutive groups of group_size completions of one prompt. The std is the sample standard
// deviation (divisor G - 1, as TRL and verl); a group whose rewards are all equal gets advantages of 0.
std::vector<double> advantages(std::span<const double> rewards, int64_t group_size, ScaleRewards scale,
                               double eps = 1e-4);
// Groups whose rewards are all equal: they carry no policy gradient (only KL).
int64_t zero_variance_groups(std::span<const double> rewards, int64_t group_size);

// s_t for every completion token of the batch, sequence after sequence (lengths[i] tokens for sequence i).
// Computed once over the whole batch, so micro-batches that each take a slice add up to the batch loss.
std::vector<double> token_scales(std::span<const int64_t> lengths, Aggregation aggregation, int64_t max_completion_len);

struct Options {
  double epsilon = 0.2;       // lower clip: rho >= 1 - epsilon
  double epsilon_high = 0.2;  // upper clip: rho <= 1 + epsilon_high (DAPO's clip-higher when > epsilon)
  double beta = 0.0;          // k3 KL weight; 0 = no reference model
};

// Token-level inputs, all the same length (ref_logp may be empty when beta is 0).
struct Tokens {
  std::span<const double> logp, old_logp, ref_logp, advantage, scale;
};

// Sums over tokens, so micro-batches combine with +=; divide by tokens for means.
struct Stats {
  int64_t tokens = 0;
  int64_t clipped_low = 0;   // A < 0 and rho < 1 - epsilon: the gradient is cut
  int64_t clipped_high = 0;  // A > 0 and rho > 1 + epsilon_high
  double kl = 0;             // sum of KL_t (0 when beta is 0)
  double ratio = 0;          // sum of rho_t
  Stats& operator+=(const Stats& o);
};

struct Result {
  double loss = 0;              // sum_t s_t l_t
  std::vector<double> weights;  // -dL/dlogp_t
  Stats stats;
};
Result policy_loss(const Tokens& tokens, const Options& options);

// A rollout as the model sees it: the prompt, then the completion, whose tokens alone carry loss.
struct Sequence {
  std::span<const uint32_t> prompt, completion;
};
// Right-padded inputs and targets for Model::forward: row p of a sequence predicts its token p + 1, and only rows
// whose next token is a completion token have a target (-1 elsewhere, padding included).
struct Packed {
  std::vector<int32_t> inputs, targets;
  int64_t B = 0, Tn = 0;
  std::vector<int64_t> rows;  // the row (into inputs) predicting each completion token, sequence after sequence
};
Packed pack(std::span<const Sequence> sequences, int32_t pad_id);

}  // namespace ds::grpo
