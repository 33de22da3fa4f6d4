#pragma once
// The training step of pretrain() on a CUDA device (--device cuda): the model and AdamW live on the device
// (ds/cuda_model.h) while pretrain() keeps its host Model and AdamW as the checkpoints' copy, brought up to date
// before each save and sent to the device after each load. An interface, so pretrain.cpp compiles in builds without
// CUDA, where no device trainer exists.
#include <cstdint>
#include <memory>
#include <vector>

#include "ds/comm.h"
#include "ds/model.h"
#include "ds/optim.h"

namespace ds {

class DeviceTrainer {
 public:
  virtual ~DeviceTrainer() = default;
  virtual void zero_grads() = 0;
  // One micro-batch's forward and backward, its gradients added to the step's.
  virtual ForwardStats forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                                        const LossOptions& loss) = 0;
  // The gradients as the mean over the step's micro_batches (and the ranks), clipped to max_norm; returns the norm
  // before clipping.
  virtual double reduce_grads(int64_t micro_batches, double max_norm) = 0;
  // values summed over the ranks, in place (nothing with one rank).
  virtual void sum_over_ranks(std::vector<double>& values) = 0;
  // The AdamW update at lr, then the aux-loss-free router bias update from the step's expert loads.
  virtual void step(double lr, const std::vector<std::vector<int64_t>>& loads, double bias_gamma) = 0;
  // The host copies to the device (after a checkpoint is loaded), and back (before one is saved).
  virtual void upload(const Model<float>& model, AdamW& optimizer) = 0;
  virtual void download(Model<float>& model, AdamW& optimizer) = 0;
};

#ifdef DS_CUDA
// A trainer on the current CUDA device, starting from the host model and optimizer state. With comm over several
// ranks (data parallel; NCCL, on this device) the gradients are all-reduced after the backward and every rank keeps
// the whole AdamW state: the moments are replicated, not sharded as on the CPU.
std::unique_ptr<DeviceTrainer> make_cuda_trainer(const Model<float>& model, AdamW& optimizer,
                                                 const AdamWOptions& adamw, bool fp8, dist::Comm* comm);
#endif

}  // namespace ds
