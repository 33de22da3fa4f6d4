#include "ds/optim.h"

#include <cmath>
#include <numbers>

#include "ds/error.h"

namespace ds {

AdamW::AdamW(const std::vector<ParamInfo>& params, int64_t size, AdamWOptions options)
    : options_(options), m_(size_t(size), 0.0f), v_(size_t(size), 0.0f) {
  for (const auto& p : params)
    if (p.kind != ParamKind::RouterBias)
      ranges_.push_back({p.offset, p.offset + shape_numel(p.shape), p.kind == ParamKind::Matrix});
}

void AdamW::step(std::vector<float>& params, const std::vector<float>& grads, double lr) {
  ++t_;
  const double bc1 = 1.0 - std::pow(options_.beta1, double(t_)), bc2 = 1.0 - std::pow(options_.beta2, double(t_));
  const float b1 = float(options_.beta1), b2 = float(options_.beta2);
  for (const Range& r : ranges_) {
    const float decay = r.decay ? float(lr * options_.weight_decay) : 0.0f;
#pragma omp parallel for schedule(static)
    for (int64_t i = r.begin; i < r.end; ++i) {
      const float g = grads[size_t(i)];
      float& m = m_[size_t(i)];
      float& v = v_[size_t(i)];
      m = b1 * m + (1 - b1) * g;
      v = b2 * v + (1 - b2) * g * g;
      const double update = (double(m) / bc1) / (std::sqrt(double(v) / bc2) + options_.eps);
      params[size_t(i)] -= float(lr * update) + decay * params[size_t(i)];
    }
  }
}

double clip_grad_norm(std::vector<float>& grads, double max_norm) {
  double sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
  for (size_t i = 0; i < grads.size(); ++i) sum += double(grads[i]) * double(grads[i]);
  const double norm = std::sqrt(sum);
  if (max_norm > 0 && norm > max_norm) {
    const float scale = float(max_norm / (norm + 1e-6));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < grads.size(); ++i) grads[i] *= scale;
  }
  return norm;
}

Schedule parse_schedule(const std::string& name) {
  if (name == "cosine") return Schedule::Cosine;
  if (name == "wsd") return Schedule::Wsd;
  if (name == "constant") return Schedule::Constant;
  fail("unknown learning-rate schedule '{}' (cosine, wsd, constant)", name);
}

double learning_rate(const ScheduleOptions& s, int64_t step) {
  if (step < s.warmup) return s.lr * double(step + 1) / double(s.warmup);
  const double min_lr = s.lr * s.min_lr_ratio;
  switch (s.kind) {
    case Schedule::Constant: return s.lr;
    case Schedule::Cosine: {
      const double span = double(std::max<int64_t>(s.total - s.warmup, 1));
      const double progress = std::min(1.0, double(step - s.warmup) / span);
      return min_lr + 0.5 * (s.lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
    }
    case Schedule::Wsd: {
      const int64_t decay_steps = std::max<int64_t>(1, int64_t(std::llround(s.decay_fraction * double(s.total))));
      const int64_t decay_start = s.total - decay_steps;
      if (step < decay_start) return s.lr;
      const double progress = std::min(1.0, double(step - decay_start) / double(decay_steps));
      return s.lr + (min_lr - s.lr) * progress;
    }
  }
  return s.lr;
}

}  // namespace ds
