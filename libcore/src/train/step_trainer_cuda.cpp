// StepTrainer on a CUDA device: TrainModel and DeviceAdamW (ds/cuda_model.h), and with several ranks NCCL
// all-reduces of the device gradients.
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
    if (comm_ && comm_->backend() != "nccl")
      fail("training on a GPU over {} ranks reduces device gradients: the collectives must be NCCL's, not {}",
           comm_->size(), comm_->backend());
    model_.set_fp8(fp8);
    upload_state();
  }

  void begin_step(int64_t micro_batches) override {
    model_.zero_grads();
    micro_batches_ = micro_batches;
  }

  ForwardStats forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                                const LossOptions& loss) override {
    ForwardStats stats = model_.forward(inputs, targets, B, Tn, loss);
    model_.backward();
    return stats;
  }

  // The ranks' sum, in place on the device once the backward is done, then one scaling to the mean over ranks and
  // micro-batches: every rank holds the same gradients, and its replica of the AdamW state takes the same step.
  double reduce_grads(double max_norm) override {
    int64_t parts = micro_batches_;
    if (comm_) {
      model_.synchronize();  // the collective runs on the Comm's own stream
      comm_->all_reduce(model_.device_grads(), model_.size());
      parts *= comm_->size();
    }
    if (parts > 1) cuda::scale(model_.device_grads(), 1.0f / float(parts), model_.size(), model_.stream());
    return optimizer_.reduce_grads(max_norm);
  }

  void step(double lr, const std::vector<std::vector<int64_t>>& loads, double bias_gamma) override {
    optimizer_.step(lr);
    model_.update_router_bias(loads, bias_gamma);
  }

  void host_loaded() override {
    model_.set_params(host_model_.params());
    upload_state();
  }

  void sync_host() override {
    host_model_.params() = model_.params();
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
  int64_t micro_batches_ = 1;
};

}  // namespace

std::unique_ptr<StepTrainer> make_cuda_trainer(Model<float>& model, AdamW& optimizer, const AdamWOptions& adamw,
                                               bool fp8, dist::Comm* comm) {
  return std::make_unique<CudaTrainer>(model, optimizer, adamw, fp8, comm);
}

}  // namespace ds
