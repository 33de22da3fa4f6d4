#pragma once
// Pretraining loop: packed batches, gradient accumulation, AdamW with a schedule and clipping, aux-loss-free router
// bias updates, MTP and balance losses, metrics, periodic atomic checkpoints, bit-exact resume.
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ds/bad_steps.h"
#include "ds/comm.h"
#include "ds/cuda.h"
#include "ds/model.h"
#include "ds/optim.h"
#include "ds/run.h"

namespace ds {

struct PretrainOptions : TrainerOptions {
  std::string model_config = "demo";  // preset or config.json (new runs only)
  std::string tokenizer;              // tokenizer.json or a directory with one (new runs only); empty = byte-level
  std::vector<std::string> data;      // token shards; empty = builtin:arith
  int64_t batch = 8, seq_len = 128, grad_accum = 1;  // the global batch: rank r takes its r-th contiguous share
  LossOptions loss;
  double bias_gamma = 0.001;  // aux-loss-free bias update speed
  int expert_parallel = 1;    // routed experts split over groups of this many consecutive ranks (CPU only)
};

struct StepRecord {
  int64_t step = 0;  // 1-based count of completed steps
  double loss = 0, main_loss = 0, mtp_loss = 0, balance_loss = 0, lr = 0, grad_norm = 0;
  double tokens_per_s = 0, load_imbalance = 0, elapsed_s = 0;
  uint64_t tokens = 0;    // seen since the run started
  int64_t bad_steps = 0;  // skipped steps of this invocation
  int64_t reloads = 0;    // returns to the last checkpoint after too many bad steps in a row (ds/bad_steps.h)
  bool skipped = false;
  double comm_share = 0;  // share of the time since the last record spent in collectives (data parallel)
};

struct PretrainEvents {
  std::function<void(const std::string&)> info;        // one-line messages (start, resume, parameter counts)
  std::function<void(const StepRecord&)> log;          // every log_every steps and the last
  std::function<void(const std::string&)> checkpoint;  // path of each checkpoint written
};

// The options a run keeps for its whole life (ds/run.h), bound to o's fields.
RunOptions run_options(PretrainOptions& o);

// Runs until options.steps, options.stop_after, or stop becomes true (then saves and returns). Throws ds::Error.
void pretrain(const PretrainOptions& options, const std::atomic<bool>& stop, const PretrainEvents& events);

}  // namespace ds
