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

struct PretrainOptions {
  std::string run_dir;
  bool resume = false;              // continue run_dir from its latest checkpoint
  std::string model_config = "demo";  // preset or config.json (new runs only)
  std::string tokenizer;      // tokenizer.json or a directory with one (new runs only); empty = byte-level
  std::vector<std::string> data;    // token shards; empty = builtin:arith
  int64_t batch = 8, seq_len = 128, grad_accum = 1;
  int64_t steps = 1000;       // total steps of the run, counted from its start
  int64_t stop_after = 0;     // stop (with a checkpoint) after this many steps of this invocation; 0 = no limit
  ScheduleOptions schedule;   // total is set from steps
  AdamWOptions adamw;
  double clip = 1.0;
  LossOptions loss;
  double bias_gamma = 0.001;  // aux-loss-free bias update speed
  bool fp8 = false;           // FP8 training GEMMs: emulated on the CPU (Model::set_fp8), e4m3 on a GPU
  // Where forward, backward and AdamW run. On a CUDA device the parameters and the AdamW moments live there
  // (ds/cuda_model.h) and come back to the host for checkpoints, whose format is the same on either device, so a run
  // resumes on either.
  Device device;
  uint64_t seed = 1234;
  int64_t save_every = 0;     // 0: only at the end
  int keep = 0;               // checkpoints kept; 0 = all
  int64_t log_every = 10;
  int64_t max_bad_steps = 10; // consecutive non-finite steps tolerated (each is skipped) before bad_steps acts
  BadStepOptions bad_steps;   // then stop, or reload the last checkpoint at a lower learning rate
  // Data parallel over comm's ranks (null: one process). batch is the global batch: rank r trains on its r-th
  // contiguous share of the sequences one process would take, so R ranks follow the 1-rank run up to float
  // rounding; rank 0 writes the run directory. The AdamW state is sharded (ZeRO-1). On a CUDA device the collectives
  // take device memory over NCCL (host copies over MPI), after the backward.
  dist::Comm* comm = nullptr;
  int expert_parallel = 1;    // routed experts split over groups of this many consecutive ranks (CPU only)
  double bucket_mb = 25;      // CPU: gradients reduced in buckets of this many MiB during the backward; 0: after it
};

struct StepRecord {
  int64_t step = 0;  // 1-based count of completed steps
  double loss = 0, main_loss = 0, mtp_loss = 0, balance_loss = 0, lr = 0, grad_norm = 0;
  double tokens_per_s = 0, load_imbalance = 0, elapsed_s = 0;
  uint64_t tokens = 0;  // seen since the run started
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
