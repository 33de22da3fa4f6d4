#pragma once
// TrainModel: Model<float>'s forward and backward for pretraining on a CUDA device, over the kernels of
// cuda_ops.h and the GEMMs of cuda_gemm.h, and DeviceAdamW, ds::AdamW's update on the same device.
//
// The device holds the FP32 master parameters in Model's flat layout (the same ParamInfo offsets), FP32 gradients
// in the same layout, and a BF16 copy of the parameters that the GEMMs read, refreshed whenever the parameters
// change. Activations are FP32 and rounded to BF16 as GEMM inputs; GEMMs accumulate in FP32. Under set_fp8(true)
// the linear layers DeepSeek-V3 runs in FP8 (all but the router gate and MTP's eh_proj; the head and the embedding
// are not linear layers) run their three GEMMs in e4m3 with 1x128 activation and 128x128 weight scales, as the
// CPU's emulation rounds them; their input and output sizes must then be multiples of 8.
//
// It covers what the trainers use: causal sequences or packed documents, the mean or per-token weighted
// cross-entropy at a temperature with each position's log-probability and entropy (RL), the logits and the backward
// of a loss computed from them (distillation), the MTP modules, the sequence-wise balance loss, and the expert loads
// for the aux-loss-free balancing. Expert parallelism is not supported. Everything runs on one stream of the device
// current at construction.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "ds/comm.h"
#include "ds/model.h"
#include "ds/optim.h"

namespace ds::cuda {

class TrainModel {
 public:
  // The config and parameters of model, copied to the current device.
  explicit TrainModel(const Model<float>& model);
  ~TrainModel();
  TrainModel(const TrainModel&) = delete;
  TrainModel& operator=(const TrainModel&) = delete;

  const ModelConfig& config() const;
  const std::vector<ParamInfo>& param_infos() const;
  int64_t size() const;  // values in the flat parameter array

  // Model<float>::forward on the device, its arguments host arrays: inputs [B*Tn]; targets [B*Tn] (-1 = no loss),
  // or null for the logits only; target_weights [B*Tn] for the weighted loss; positions [B*Tn] for packed
  // documents. Returns the losses and expert loads as Model does. Waits for the device (the losses and the routing
  // come back to the host).
  ForwardStats forward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                       const LossOptions& options = {}, const float* target_weights = nullptr,
                       const int32_t* positions = nullptr);
  // After a forward with targets, as Model's: log p(target) per position (0 without a target), and the entropies.
  std::vector<double> target_logprobs() const;
  std::vector<double> entropies() const;
  // After a forward without targets: the logits [B*Tn, vocab], copied to the host.
  std::vector<float> logits() const;
  // Gradients of the last forward's loss, added into the device gradients. Queued; returns before they are done.
  void backward();
  // After a forward without targets: backpropagates dlogits ([B*Tn, vocab] on the host). Returns once dlogits is read.
  void backward(const float* dlogits);
  void zero_grads();
  void set_fp8(bool on);
  // Model::update_router_bias on the device copy.
  void update_router_bias(const std::vector<std::vector<int64_t>>& expert_load, double gamma);

  // Host copies of the flat arrays, and uploads of new values (the BF16 copy follows the parameters).
  std::vector<float> params() const;
  std::vector<float> grads() const;
  void set_params(std::span<const float> values);
  void set_grads(std::span<const float> values);

  // The device arrays, for DeviceAdamW: after changing the parameters, call params_changed().
  float* device_params();
  float* device_grads();
  void params_changed();        // refreshes the BF16 copy
  cudaStream_t stream() const;  // where all of the model's work is queued
  void synchronize() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ds::AdamW on the model's device: the same moments, bias corrections, decoupled decay (matrices only), router
// biases left alone, and clipping to the global gradient norm, computed on the device. It updates the flat range
// [begin, end) of the parameters (the whole array by default), whose moments alone it holds: a data-parallel rank's
// shard (ZeRO-1), the norm then summed over the ranks of a Comm.
class DeviceAdamW {
 public:
  DeviceAdamW(TrainModel& model, AdamWOptions options, int64_t begin = 0, int64_t end = -1);
  ~DeviceAdamW();
  DeviceAdamW(const DeviceAdamW&) = delete;
  DeviceAdamW& operator=(const DeviceAdamW&) = delete;

  // Clips the model's gradients in [begin, end) to the global norm max_norm (when > 0) as clip_grad_norm does, and
  // returns the norm before clipping: of [begin, end), or with comm of the ranks' ranges together (each rank then
  // passes its own). Waits for the device.
  double reduce_grads(double max_norm, dist::Comm* comm = nullptr);
  // One update of [begin, end) at learning rate lr; refreshes the model's BF16 copy when that is the whole array
  // (a shard's caller does, once the ranks' shards are gathered).
  void step(double lr);
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  // Host copies of the moments of [begin, end) and uploads of them, for checkpoints in ds::AdamW's format.
  std::vector<float> m() const;
  std::vector<float> v() const;
  void load_state(std::span<const float> m, std::span<const float> v);
  void reset();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t t_ = 0;
};

}  // namespace ds::cuda
