#pragma once
// AdamW with decoupled weight decay over a model's flat parameter array, global-norm gradient clipping, and the
// learning-rate schedules (warmup then cosine, or warmup-stable-decay).
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ds/comm.h"
#include "ds/model.h"

namespace ds {

// A contiguous range of the flat gradient array, reduced by one collective.
struct GradBucket {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const GradBucket&) const = default;
};
// Buckets over [0, size) cut at parameter boundaries, from the end of the array to its start (the order Model's
// backward finishes the gradients): each takes parameters until it holds at least bucket_elems values (the first
// only min(first_bucket_elems, bucket_elems)), so a larger parameter is a bucket of its own and the last bucket may
// be smaller.
std::vector<GradBucket> plan_grad_buckets(const std::vector<ParamInfo>& params, int64_t size, int64_t bucket_elems,
                                          int64_t first_bucket_elems = INT64_MAX);
// How many values of bucket b fall in each rank's part (parts as dist::split_evenly): the reduce-scatter's counts.
std::vector<int64_t> bucket_counts(const GradBucket& b, const std::vector<int64_t>& parts);

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// With a Comm of R > 1 ranks it is data parallel with ZeRO-1: rank r keeps the moments of only its contiguous part
// of the flat array (dist::split_evenly), reduce_grads reduce-scatters the gradients onto those parts, and step
// updates its part and all-gathers the parameters, so every rank ends the step with the same weights.
//
// With bucket_mb > 0 the reduce-scatter goes in buckets of about that many MiB (plan_grad_buckets), and grad_hook
// overlaps it with the backward as PyTorch DDP does. The buckets sum the same values as one reduce-scatter of the
// whole array: on 2 ranks the results are bitwise equal (one addition per value); on more, MPI may add in another
// order, which changes the last bits.
class AdamW {
 public:
  AdamW(const std::vector<ParamInfo>& params, int64_t size, AdamWOptions options, dist::Comm* comm = nullptr,
        double bucket_mb = 0);
  // For Model::backward on the backward that finishes the step's gradients (the last micro-batch's): once all of
  // a bucket's gradients are final, and those of the buckets before it, its reduce-scatter starts in the background
  // while the backward goes on; each call also lets the reductions in flight progress. Does nothing without buckets.
  GradReady grad_hook(std::vector<float>& grads);
  // Averages grads over the ranks (only this rank's part of grads is valid afterwards), clips them to the global
  // norm max_norm (when > 0) and returns the norm before clipping, the same on every rank. With buckets it starts
  // those the hook has not (all of them without a hook) and waits for them all.
  double reduce_grads(std::vector<float>& grads, double max_norm);
  // One update at learning rate lr. Matrices are decayed; norm weights are not; router biases are left alone.
  void step(std::vector<float>& params, const std::vector<float>& grads, double lr);
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  // For checkpoints: one moment estimate of the whole array (exp_avg or exp_avg_sq), handed to sink in consecutive
  // pieces in flat order. In one process that is this rank's array itself, whole, not a copy. With R > 1 ranks it
  // is a collective: every rank takes part and gets every piece, all-gathered into one buffer of at most
  // chunk values, so no rank ever holds more of the moments than its part and one piece.
  enum class Moment { First, Second };
  void gather_state(Moment moment, int64_t chunk, const std::function<void(std::span<const float>)>& sink) const;
  // The moments of the whole array back ([size] each), each rank keeping its part, so a run resumes on any number
  // of ranks; throws when the sizes differ.
  void load_state(std::span<const float> m, std::span<const float> v);
  // Back to a new optimizer's state: zero moments, step 0.
  void reset();
  int64_t size() const { return size_; }  // of the whole flat array
  int rank() const { return comm_ ? comm_->rank() : 0; }
  // This rank's part of the moments (all of them in one process).
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }

 private:
  struct Range {
    int64_t begin, end;
    bool decay;
  };
  std::vector<Range> ranges_;  // clipped to this rank's part
  AdamWOptions options_;
  dist::Comm* comm_;
  int64_t size_;
  std::vector<int64_t> parts_;   // elements per rank
  int64_t begin_ = 0, end_ = 0;  // this rank's part of the flat array
  std::vector<float> m_, v_;     // [end_ - begin_]
  int64_t t_ = 0;
  // The bucketed reduction: the buckets from the end of the array, how many values of each the backward has
  // finished, and the reduce-scatters in flight, started in bucket order (the same on every rank).
  std::vector<GradBucket> buckets_;
  std::vector<int64_t> final_;
  std::vector<std::unique_ptr<dist::Request>> started_;
  void start_bucket(std::vector<float>& grads);
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
