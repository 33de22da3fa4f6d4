#include "ds/optim.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "ds/error.h"
#include "ds/parallel.h"

namespace ds {

namespace {
double sum_squares(const float* x, int64_t n) {
  double sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum) if (parallel_worth(n))
  for (int64_t i = 0; i < n; ++i) sum += double(x[i]) * double(x[i]);
  return sum;
}
void clip_to(float* x, int64_t n, double norm, double max_norm) {
  if (max_norm <= 0 || norm <= max_norm) return;
  const float scale = float(max_norm / (norm + 1e-6));
#pragma omp parallel for schedule(static) if (parallel_worth(n))
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}
}  // namespace

std::vector<GradBucket> plan_grad_buckets(const std::vector<ParamInfo>& params, int64_t size, int64_t bucket_elems,
                                          int64_t first_bucket_elems) {
  std::vector<int64_t> cuts = {0};
  for (const auto& p : params) cuts.push_back(p.offset);
  std::sort(cuts.begin(), cuts.end());
  std::vector<GradBucket> buckets;
  int64_t end = size;
  for (size_t i = cuts.size(); i-- > 0;) {
    const int64_t want = buckets.empty() ? std::min(first_bucket_elems, bucket_elems) : bucket_elems;
    if (cuts[i] < end && (end - cuts[i] >= want || cuts[i] == 0)) {
      buckets.push_back({cuts[i], end});
      end = cuts[i];
    }
  }
  return buckets;
}

std::vector<int64_t> bucket_counts(const GradBucket& b, const std::vector<int64_t>& parts) {
  std::vector<int64_t> counts;
  int64_t begin = 0;
  for (int64_t n : parts) {
    counts.push_back(std::max<int64_t>(0, std::min(b.end, begin + n) - std::max(b.begin, begin)));
    begin += n;
  }
  return counts;
}

AdamW::AdamW(const std::vector<ParamInfo>& params, int64_t size, AdamWOptions options, dist::Comm* comm,
             double bucket_mb)
    : options_(options), comm_(comm && comm->size() > 1 ? comm : nullptr), size_(size) {
  parts_ = dist::split_evenly(size, comm_ ? comm_->size() : 1);
  const int rank = comm_ ? comm_->rank() : 0;
  for (int r = 0; r < rank; ++r) begin_ += parts_[size_t(r)];
  end_ = begin_ + parts_[size_t(rank)];
  m_.assign(size_t(end_ - begin_), 0.0f), v_.assign(size_t(end_ - begin_), 0.0f);
  for (const auto& p : params) {
    const int64_t b = std::max(p.offset, begin_), e = std::min(p.offset + shape_numel(p.shape), end_);
    if (p.kind != ParamKind::RouterBias && b < e) ranges_.push_back({b, e, p.kind == ParamKind::Matrix});
  }
  if (bucket_mb < 0) fail("the gradient bucket size must not be negative, not {:g} MiB", bucket_mb);
  if (comm_ && bucket_mb > 0) {
    const auto elems = std::max<int64_t>(1, std::llround(bucket_mb * 1024 * 1024 / sizeof(float)));
    // As PyTorch DDP, the first bucket (the last layers, finished first) holds at most 1 MiB, so the reductions
    // start early in the backward whatever the bucket size.
    buckets_ = plan_grad_buckets(params, size, elems, (int64_t(1) << 20) / int64_t(sizeof(float)));
    final_.assign(buckets_.size(), 0);
  }
}

GradReady AdamW::grad_hook(std::vector<float>& grads) {
  if (buckets_.empty()) return {};
  return [this, &grads](int64_t begin, int64_t end) {
    for (size_t i = 0; i < buckets_.size(); ++i) {
      const int64_t n = std::min(end, buckets_[i].end) - std::max(begin, buckets_[i].begin);
      if (n > 0 && (i < started_.size() || (final_[i] += n) > buckets_[i].size()))
        fail("gradients [{}, {}) were reported final twice before reduce_grads (hook more than one backward?)", begin,
             end);
    }
    // In bucket order, so that every rank starts the same collectives in the same order.
    for (size_t i = started_.size(); i < buckets_.size() && final_[i] == buckets_[i].size(); ++i) start_bucket(grads);
    for (const auto& r : started_) r->test();
  };
}

// Starts the reduce-scatter of the next bucket.
void AdamW::start_bucket(std::vector<float>& grads) {
  const GradBucket& b = buckets_[started_.size()];
  started_.push_back(comm_->ireduce_scatter(grads.data() + b.begin, bucket_counts(b, parts_)));
}

double AdamW::reduce_grads(std::vector<float>& grads, double max_norm) {
  if (!comm_) return clip_grad_norm(grads, max_norm);
  if (buckets_.empty()) {
    comm_->reduce_scatter(grads.data(), parts_);
  } else {
    while (started_.size() < buckets_.size()) start_bucket(grads);
    for (const auto& r : started_) r->wait();
    started_.clear();
    std::fill(final_.begin(), final_.end(), 0);
  }
  float* part = grads.data() + begin_;
  const int64_t n = end_ - begin_;
  const float inv = 1.0f / float(comm_->size());
#pragma omp parallel for schedule(static) if (parallel_worth(n))
  for (int64_t i = 0; i < n; ++i) part[i] *= inv;
  double sum = sum_squares(part, n);
  comm_->all_reduce(&sum, 1);
  const double norm = std::sqrt(sum);
  clip_to(part, n, norm, max_norm);
  return norm;
}

void AdamW::step(std::vector<float>& params, const std::vector<float>& grads, double lr) {
  ++t_;
  const double bc1 = 1.0 - std::pow(options_.beta1, double(t_)), bc2 = 1.0 - std::pow(options_.beta2, double(t_));
  const float b1 = float(options_.beta1), b2 = float(options_.beta2);
  for (const Range& r : ranges_) {
    const float decay = r.decay ? float(lr * options_.weight_decay) : 0.0f;
#pragma omp parallel for schedule(static) if (parallel_worth(r.end - r.begin))
    for (int64_t i = r.begin; i < r.end; ++i) {
      const float g = grads[size_t(i)];
      float& m = m_[size_t(i - begin_)];
      float& v = v_[size_t(i - begin_)];
      m = b1 * m + (1 - b1) * g;
      v = b2 * v + (1 - b2) * g * g;
      const double update = (double(m) / bc1) / (std::sqrt(double(v) / bc2) + options_.eps);
      params[size_t(i)] -= float(lr * update) + decay * params[size_t(i)];
    }
  }
  if (comm_) comm_->all_gather(params.data(), parts_);
}

void AdamW::gather_state(Moment moment, int64_t chunk, const std::function<void(std::span<const float>)>& sink) const {
  const std::vector<float>& part = moment == Moment::First ? m_ : v_;
  if (!comm_) {
    sink(part);
    return;
  }
  if (chunk <= 0) fail("the state is gathered in pieces of a positive number of values, not {}", chunk);
  std::vector<float> buffer(static_cast<size_t>(std::min(chunk, size_)));
  for (int64_t begin = 0; begin < size_; begin += chunk) {
    // This rank's values of the piece go to their place in the buffer; the all-gather brings the others'.
    const GradBucket piece = {begin, std::min(size_, begin + chunk)};
    const int64_t b = std::max(begin_, piece.begin), e = std::min(end_, piece.end);
    if (b < e) std::copy(part.begin() + (b - begin_), part.begin() + (e - begin_), buffer.begin() + (b - piece.begin));
    comm_->all_gather(buffer.data(), bucket_counts(piece, parts_));
    sink(std::span(buffer.data(), static_cast<size_t>(piece.size())));
  }
}

void AdamW::load_state(std::span<const float> m, std::span<const float> v) {
  if (int64_t(m.size()) != size_ || int64_t(v.size()) != size_)
    fail("optimizer state of {} and {} values for {} parameters", m.size(), v.size(), size_);
  std::copy_n(m.begin() + begin_, m_.size(), m_.begin());
  std::copy_n(v.begin() + begin_, v_.size(), v_.begin());
}

void AdamW::reset() {
  std::fill(m_.begin(), m_.end(), 0.0f);
  std::fill(v_.begin(), v_.end(), 0.0f);
  t_ = 0;
}

double clip_grad_norm(std::vector<float>& grads, double max_norm) {
  const double norm = std::sqrt(sum_squares(grads.data(), int64_t(grads.size())));
  clip_to(grads.data(), int64_t(grads.size()), norm, max_norm);
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
    case Schedule::Constant:
      return s.lr;
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
