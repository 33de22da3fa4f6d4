#pragma once
// The trainers' step (pretrain, GRPO, distillation), one implementation per device, so that each training loop has a
// single path. On the CPU it works on the host Model and AdamW themselves: gradients reduce-scattered over the ranks
// in buckets while the step's last backward runs, AdamW state sharded (ZeRO-1). On a CUDA device (--device cuda) the
// model and AdamW train on copies there (cuda_model.h), ZeRO-1 too, with the reduction after the backward; the
// host ones are the checkpoints' copy, brought up to date before each save and sent to the device after each load.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ds/checkpoint.h"
#include "ds/comm.h"
#include "ds/cuda.h"
#include "ds/model.h"
#include "ds/optim.h"
#include "ds/tokenizer.h"

namespace ds {

// Model<float>'s forward and what it gives after it, on the host model or on a copy on a GPU.
class Scorer {
 public:
  virtual ~Scorer() = default;
  virtual ForwardStats forward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                               const LossOptions& loss, const float* target_weights = nullptr,
                               const int32_t* positions = nullptr) = 0;
  virtual std::vector<double> target_logprobs() const = 0;
  virtual std::vector<double> entropies() const = 0;
  virtual const float* logits() = 0;  // after a forward without targets: [B*Tn, vocab] on the host
};

// A frozen model that only scores (a KL reference, a teacher) on device, in FP8 training numerics when fp8: on the
// CPU the model itself, on a GPU a copy there (the host one is released).
std::unique_ptr<Scorer> make_scorer(const Device& device, Model<float> model, bool fp8);

class StepTrainer : public Scorer {
 public:
  // Starts a step that will call backward() `backwards` times: the gradients go to zero. The step's gradient is the
  // mean of its backwards' when `mean`, else their sum (losses already normalised over the whole batch).
  virtual void begin_step(int64_t backwards, bool mean) = 0;
  // The backward of the last forward's loss, or (after a forward without targets) of a loss whose gradient with
  // respect to the logits is dlogits; its gradients added to the step's.
  virtual void backward() = 0;
  virtual void backward(const float* dlogits) = 0;
  // The step's gradients reduced over the ranks (their mean) and clipped to max_norm; returns the norm before
  // clipping, the same on every rank.
  virtual double reduce_grads(double max_norm) = 0;
  // The AdamW update at lr, then the aux-loss-free router bias update from the step's expert loads (summed over the
  // ranks by the caller) unless bias_gamma is 0.
  virtual void step(double lr, const std::vector<std::vector<int64_t>>& loads, double bias_gamma) = 0;
  // After the host model and optimizer were reloaded (going back to a checkpoint).
  virtual void host_loaded() = 0;
  // Brings the host model's parameters up to date (for a sampler that reads them), or those and the AdamW state
  // (a collective: every rank calls it).
  virtual void sync_params() = 0;
  virtual void sync_host() = 0;
  // Whether sync_host() leaves the whole AdamW state in every rank's host optimizer, so that rank 0 alone writes
  // checkpoints, rather than a shard of it, which all ranks gather to write.
  virtual bool state_replicated() const = 0;
};

// The trainer of device over model and optimizer (which it keeps references to), starting from their present
// state. comm (null or one rank: a single process) is the data-parallel group. On a GPU the collectives work in
// place on device memory over NCCL, or through host memory over MPI, and each rank keeps its shard of the AdamW state
// on its device; the optimizer, the checkpoints' copy, then has no Comm and is whole on every rank.
std::unique_ptr<StepTrainer> make_step_trainer(const Device& device, Model<float>& model, AdamW& optimizer,
                                               const AdamWOptions& adamw, bool fp8, dist::Comm* comm);

// The host optimizer over model for a trainer on device: on the CPU the one trained, ZeRO-1 over comm with gradient
// buckets of bucket_mb; on a GPU the checkpoints' copy of the devices' shards, without a Comm: whole on every rank.
AdamW host_optimizer(const Device& device, const Model<float>& model, const AdamWOptions& adamw, dist::Comm* comm,
                     double bucket_mb);

// save_checkpoint of the trained model and optimizer, after sync_host(). Where the state is replicated over the ranks
// of comm, rank 0 alone writes it and the others wait for it, so that all find the same latest checkpoint. Returns
// the checkpoint's directory on rank 0, "" on the others.
std::string save_trained(StepTrainer& trainer, dist::Comm* comm, const RunDir& run, int64_t step, int keep,
                         const Model<float>& model, const Tokenizer& tokenizer, const AdamW& optimizer,
                         const std::function<void(const std::string&)>& write_state);

#ifdef DS_CUDA
std::unique_ptr<StepTrainer> make_cuda_trainer(Model<float>& model, AdamW& optimizer, const AdamWOptions& adamw,
                                               bool fp8, dist::Comm* comm);
std::unique_ptr<Scorer> make_cuda_scorer(const Model<float>& model, bool fp8);
#endif

}  // namespace ds
