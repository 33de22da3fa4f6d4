// StepTrainer on a CUDA device: TrainModel and DeviceAdamW (ds/cuda_model.h), and with several ranks all-reduces of
// the device gradients: in place over NCCL, or through host memory over MPI.
#include <algorithm>

#include "ds/cuda_model.h"
#include "ds/cuda_ops.h"
#include "ds/error.h"
#include "step_trainer.h"

namespace ds {

namespace {

class CudaTrainer final : public StepTrainer {
 public:
  CudaTrainer(Model<float>& model, AdamW& optimizer, const AdamWOptions& adamw, bool fp8, dist::Comm* comm)
      : host_model_(model),
        host_optimizer_(optimizer),
        model_(model),
        optimizer_(model_, adamw),
        comm_(comm && comm->size() > 1 ? comm : nullptr) {
    model_.set_fp8(fp8);
    upload_state();
  }

  void begin_step(int64_t backwards, bool mean) override {
    model_.zero_grads();
    backwards_ = backwards, mean_ = mean;
  }

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
  void backward() override { model_.backward(); }
  void backward(const float* dlogits) override { model_.backward(dlogits); }

  // The ranks' sum, once the backward is done, then one scaling to the mean over ranks (and backwards): every rank
  // holds the same gradients, and its replica of the AdamW state takes the same step.
  double reduce_grads(double max_norm) override {
    int64_t parts = mean_ ? backwards_ : 1;
    if (comm_) {
      model_.synchronize();  // the collective runs on the Comm's own stream, or on the host
      if (comm_->backend() == "nccl") {
        comm_->all_reduce(model_.device_grads(), model_.size());
      } else {
        std::vector<float> grads = model_.grads();
        comm_->all_reduce(grads.data(), int64_t(grads.size()));
        model_.set_grads(grads);
      }
      parts *= comm_->size();
    }
    if (parts > 1) cuda::scale(model_.device_grads(), 1.0f / float(parts), model_.size(), model_.stream());
    return optimizer_.reduce_grads(max_norm);
  }

  void step(double lr, const std::vector<std::vector<int64_t>>& loads, double bias_gamma) override {
    optimizer_.step(lr);
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
  void sync_host() override {
    sync_params();
    host_optimizer_.load_state(optimizer_.m(), optimizer_.v());
    host_optimizer_.set_steps(optimizer_.steps());
  }

  bool state_replicated() const override { return true; }

 private:
  void upload_state() {
    optimizer_.load_state(host_optimizer_.m(), host_optimizer_.v());
    optimizer_.set_steps(host_optimizer_.steps());
  }

  Model<float>& host_model_;  // the checkpoints' copies
  AdamW& host_optimizer_;
  cuda::TrainModel model_;
  cuda::DeviceAdamW optimizer_;
  dist::Comm* comm_;  // null with one rank
  int64_t backwards_ = 1;
  bool mean_ = true;
  std::vector<float> logits_;  // the last logits(), on the host
};

}  // namespace

std::unique_ptr<StepTrainer> make_cuda_trainer(Model<float>& model, AdamW& optimizer, const AdamWOptions& adamw,
                                               bool fp8, dist::Comm* comm) {
  return std::make_unique<CudaTrainer>(model, optimizer, adamw, fp8, comm);
}

}  // namespace ds
