#pragma once
// pretrain()'s training step, one implementation per device, so that the loop has a single path. On the CPU it
// works on the host Model and AdamW themselves: gradients reduce-scattered over the ranks in buckets while the last
// backward runs, AdamW state sharded (ZeRO-1). On a CUDA device (--device cuda) the model and AdamW train on copies
// there (ds/cuda_model.h); the host ones are the checkpoints' copy, brought up to date before each save and sent to
// the device after each load.
#include <cstdint>
#include <memory>
#include <vector>

#include "ds/comm.h"
#include "ds/cuda.h"
#include "ds/model.h"
#include "ds/optim.h"

namespace ds {

class StepTrainer {
 public:
  virtual ~StepTrainer() = default;
  // Starts a step of micro_batches forward and backward passes: the gradients go to zero.
  virtual void begin_step(int64_t micro_batches) = 0;
  // One micro-batch's forward and backward, its gradients added to the step's.
  virtual ForwardStats forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                                        const LossOptions& loss) = 0;
  // The gradients as the mean over the step's micro-batches and the ranks, clipped to max_norm; returns the norm
  // before clipping, the same on every rank.
  virtual double reduce_grads(double max_norm) = 0;
  // The AdamW update at lr, then the aux-loss-free router bias update from the step's expert loads.
  virtual void step(double lr, const std::vector<std::vector<int64_t>>& loads, double bias_gamma) = 0;
  // After the host model and optimizer were reloaded (going back to a checkpoint), and before they are saved.
  virtual void host_loaded() = 0;
  virtual void sync_host() = 0;
  // Whether every rank holds the whole AdamW state, so that rank 0 alone writes checkpoints, rather than a shard of
  // it, which all ranks gather to write.
  virtual bool state_replicated() const = 0;
};

// The trainer of device over model and optimizer (which it keeps references to), starting from their present
// state. comm (null or one rank: a single process) is the data-parallel group; on a GPU it must be NCCL's, and the
// optimizer, the checkpoints' copy, then has no Comm: every rank keeps the whole AdamW state on its device.
std::unique_ptr<StepTrainer> make_step_trainer(const Device& device, Model<float>& model, AdamW& optimizer,
                                               const AdamWOptions& adamw, bool fp8, dist::Comm* comm);

#ifdef DS_CUDA
std::unique_ptr<StepTrainer> make_cuda_trainer(Model<float>& model, AdamW& optimizer, const AdamWOptions& adamw,
                                               bool fp8, dist::Comm* comm);
#endif

}  // namespace ds
