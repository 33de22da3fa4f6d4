#pragma once
// Knowledge-distillation losses on logits, with their gradients with respect to the student's logits, per position
// (a row of V logits). With temperature tau, the teacher's distribution is P = softmax(z_t / tau) and the student's
// Q = softmax(z_s / tau):
//
//   forward KL   KL(P || Q) = sum P (log P - log Q)         mass-covering: the student must cover every teacher mode
//   reverse KL   KL(Q || P) = sum Q (log Q - log P)         mode-seeking
//   JSD(beta)    beta KL(P || M) + (1 - beta) KL(Q || M),  M = beta P + (1 - beta) Q  (generalised JSD, GKD); it
//                approaches beta * forward KL as beta -> 0 and (1 - beta) * reverse KL as beta -> 1
//
// With top_k > 0 both distributions are coarsened to the teacher's k most likely tokens (ties to the lower id) plus
// one bucket holding every other token, so the student is still pushed off the tokens the teacher rules out, and the
// divergence never exceeds the full one. No tau^2 factor is applied. Everything is computed in double from
// log-softmaxes, so no probability that underflows makes a loss infinite.
#include <cstdint>
#include <string_view>

namespace ds::kd {

enum class Divergence { forward_kl, reverse_kl, jsd };
Divergence parse_divergence(std::string_view name);  // "forward-kl", "reverse-kl", "jsd"; throws listing them

struct Options {
  Divergence divergence = Divergence::forward_kl;
  double beta = 0.5;         // JSD's mixture weight, in (0, 1)
  double temperature = 1.0;  // tau > 0
  int64_t top_k = 0;         // 0 (or >= V): full distributions
};
void validate(const Options& options);  // throws ds::Error for beta or temperature out of range, top_k < 0

// The divergence at one position. When grad is not null, adds scale * dL/dz_s into grad[0..V).
template <typename T>
double divergence(const T* student, const T* teacher, int64_t V, const Options& options, T* grad, double scale);

// The distillation objective over N positions, of which those with a target (>= 0) count:
//   L = alpha * mean KD + (1 - alpha) * mean CE,  CE = -log softmax(z_s)[target]  (temperature 1)
// grad [N, V] is overwritten with dL/dz_s (0 on positions without a target). teacher may be null when alpha is 0.
// The means divide by `count` when it is positive, else by the positions with a target here. A data-parallel rank
// passes the global batch's count over the number of ranks: the mean of the ranks' losses, and of their gradients
// as AdamW averages them, is then the global batch's, however unevenly the targets fall on the ranks.
struct Loss {
  double total = 0, kd = 0, ce = 0;  // kd and ce are the means, before weighting
  int64_t tokens = 0;                // positions with a target
};
template <typename T>
Loss distill_loss(const T* student, const T* teacher, const int32_t* targets, int64_t N, int64_t V,
                  const Options& options, double alpha, T* grad, double count = 0);

}  // namespace ds::kd
