#pragma once
// AdamW with decoupled weight decay over a model's flat parameter array, global-norm gradient clipping, and the
// learning-rate schedules (warmup then cosine, or warmup-stable-decay).
#include <cstdint>
#include <string>
#include <vector>

#include "ds/model.h"

namespace ds {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  AdamW(const std::vector<ParamInfo>& params, int64_t size, AdamWOptions options);
  // One update at learning rate lr. Matrices are decayed; norm weights are not; router biases are left alone.
  void step(std::vector<float>& params, const std::vector<float>& grads, double lr);
  int64_t steps() const { return t_; }
  // The moment estimates and step count, for checkpoints.
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }
  void set_steps(int64_t t) { t_ = t; }

 private:
  struct Range {
    int64_t begin, end;
    bool decay;
  };
  std::vector<Range> ranges_;
  AdamWOptions options_;
  std::vector<float> m_, v_;
  int64_t t_ = 0;
};

// Scales grads so their global L2 norm is at most max_norm (when max_norm > 0); returns the norm before clipping.
double clip_grad_norm(std::vector<float>& grads, double max_norm);

enum class Schedule { Cosine, Wsd, Constant };
Schedule parse_schedule(const std::string& name);  // "cosine", "wsd", "constant"

struct ScheduleOptions {
  Schedule kind = Schedule::Cosine;
  double lr = 3e-3;
  double min_lr_ratio = 0.1;  // final lr = lr * min_lr_ratio
  int64_t warmup = 0;
  int64_t total = 1;
  double decay_fraction = 0.2;  // WSD: share of the steps spent decaying at the end
};
// The learning rate of step (0-based).
double learning_rate(const ScheduleOptions& s, int64_t step);

}  // namespace ds
