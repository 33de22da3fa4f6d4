// StepTrainer on a CUDA device: TrainModel and DeviceAdamW (cuda_model.h). With several ranks, ZeRO-1 as on the
// CPU: the device gradients are reduce-scattered, each rank clips and updates its shard of the parameters with its
// shard of the AdamW state, and the shards are all-gathered. The collectives work in place on device memory over
// NCCL, or on host copies over MPI.
#include <algorithm>

#include "../train/step_trainer.h"
#include "cuda_memory.h"
#include "cuda_model.h"
#include "cuda_ops.h"
#include "ds/error.h"

namespace ds {

namespace {

// The flat range of the parameters rank `rank` of `ranks` updates.
struct Shard {
  std::vector<int64_t> counts;  // of every rank
  int64_t begin = 0, end = 0;
};
Shard shard_of(int64_t size, dist::Comm* comm) {
  Shard s;
  s.counts = comm ? dist::split_evenly(size, comm->size()) : std::vector<int64_t>{size};
  const int rank = comm ? comm->rank() : 0;
  for (int r = 0; r < rank; ++r) s.begin += s.counts[size_t(r)];
  s.end = s.begin + s.counts[size_t(rank)];
  return s;
}

// Scorer's part of the GPU's scorer and trainer: a copy of the model on the device.
template <typename Interface>
class OnDevice : public Interface {
 public:
  OnDevice(const Model<float>& model, bool fp8) : model_(model) { model_.set_fp8(fp8); }
  ForwardStats forward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn, const LossOptions& loss,
                       const float* target_weights, const int32_t* positions) override {
    return model_.forward(inputs, targets, B, Tn, loss, target_weights, positions);
  }
  std::vector<double> target_logprobs() const override { return model_.target_logprobs(); }
  std::vector<double> entropies() const override { return model_.entropies(); }
  const float* logits() override {
    logits_ = model_.logits();
    return logits_.data();
  }

 protected:
  cuda::TrainModel model_;

 private:
  std::vector<float> logits_;  // the last logits(), on the host
};

class CudaTrainer final : public OnDevice<StepTrainer> {
 public:
  CudaTrainer(Model<float>& model, AdamW& optimizer, const AdamWOptions& adamw, bool fp8, dist::Comm* comm)
      : OnDevice(model, fp8),
        host_model_(model),
        host_optimizer_(optimizer),
        comm_(comm && comm->size() > 1 ? comm : nullptr),
        shard_(shard_of(model_.size(), comm_)),
        optimizer_(model_, adamw, shard_.begin, shard_.end) {
    upload_state();
  }

  void begin_step(int64_t backwards, bool mean) override {
    model_.zero_grads();
    backwards_ = backwards, mean_ = mean;
  }

  void backward() override { model_.backward(); }
  void backward(const float* dlogits) override { model_.backward(dlogits); }

  // This rank's shard of the ranks' summed gradients, scaled once to their mean (over the backwards too when asked),
  // then clipped to the norm of the whole.
  double reduce_grads(double max_norm) override {
    int64_t parts = mean_ ? backwards_ : 1;
    if (comm_) {
      collective(model_.device_grads(), [&](float* grads) { comm_->reduce_scatter(grads, shard_.counts); });
      parts *= comm_->size();
    }
    float* mine = model_.device_grads() + shard_.begin;
    if (parts > 1) cuda::scale(mine, 1.0f / float(parts), shard_.end - shard_.begin, model_.stream());
    return optimizer_.reduce_grads(max_norm, comm_);
  }

  // Each rank's shard updated, then gathered, so that every rank holds the same parameters again.
  void step(double lr, const std::vector<std::vector<int64_t>>& loads, double bias_gamma) override {
    optimizer_.step(lr);
    if (comm_) {
      collective(model_.device_params(), [&](float* params) { comm_->all_gather(params, shard_.counts); });
      model_.params_changed();
    }
    if (bias_gamma != 0) model_.update_router_bias(loads, bias_gamma);
  }

  void host_loaded() override {
    model_.set_params(host_model_.params());
    upload_state();
  }

  // In place: what holds views of the host parameters (an engine sampling from them) keeps reading them.
  void sync_params() override {
    const std::vector<float> values = model_.params();
    std::copy(values.begin(), values.end(), host_model_.params().begin());
  }
  // The whole AdamW state on every rank's host, gathered from the shards.
  void sync_host() override {
    sync_params();
    host_optimizer_.load_state(gathered(optimizer_.m()), gathered(optimizer_.v()));
    host_optimizer_.set_steps(optimizer_.steps());
  }

  bool state_replicated() const override { return true; }  // on the host, after sync_host()

 private:
  void upload_state() {
    const auto mine = [&](const std::vector<float>& whole) {
      return std::span(whole).subspan(size_t(shard_.begin), size_t(shard_.end - shard_.begin));
    };
    optimizer_.load_state(mine(host_optimizer_.m()), mine(host_optimizer_.v()));
    optimizer_.set_steps(host_optimizer_.steps());
  }

  // f(data) on the model's flat device array data (every rank's part of it): in place over NCCL, whose collectives
  // take device memory; over MPI on a host copy, copied back.
  template <typename F>
  void collective(float* data, F f) {
    model_.synchronize();  // the collective runs on the Comm's own stream, or on the host
    if (comm_->backend() == "nccl") return f(data);
    std::vector<float> host = cuda::to_host(data, size_t(model_.size()), model_.stream());
    f(host.data());
    cuda::copy_to_device(data, host.data(), host.size(), model_.stream());
    model_.synchronize();  // `host` goes out of scope
  }

  // This rank's shard of a flat array, and the others' from them: the whole array.
  std::vector<float> gathered(const std::vector<float>& mine) {
    if (!comm_) return mine;
    std::vector<float> whole(size_t(model_.size()));
    std::copy(mine.begin(), mine.end(), whole.begin() + shard_.begin);
    if (comm_->backend() == "nccl") {  // through device memory
      cuda::DeviceBuffer<float> device = cuda::to_device(whole, model_.stream());
      comm_->all_gather(device.data(), shard_.counts);
      return cuda::to_host(device, model_.stream());
    }
    comm_->all_gather(whole.data(), shard_.counts);
    return whole;
  }

  Model<float>& host_model_;  // the checkpoints' copies
  AdamW& host_optimizer_;
  dist::Comm* comm_;  // null with one rank
  const Shard shard_;
  cuda::DeviceAdamW optimizer_;
  int64_t backwards_ = 1;
  bool mean_ = true;
};

class CudaScorer final : public OnDevice<Scorer> {
 public:
  using OnDevice::OnDevice;
};

}  // namespace

std::unique_ptr<Scorer> make_cuda_scorer(const Model<float>& model, bool fp8) {
  return std::make_unique<CudaScorer>(model, fp8);
}

std::unique_ptr<StepTrainer> make_cuda_trainer(Model<float>& model, AdamW& optimizer, const AdamWOptions& adamw,
                                               bool fp8, dist::Comm* comm) {
  return std::make_unique<CudaTrainer>(model, optimizer, adamw, fp8, comm);
}

}  // namespace ds
