// DeviceTrainer on a CUDA device: TrainModel and DeviceAdamW (ds/cuda_model.h) behind pretrain()'s step, and with
// several ranks NCCL all-reduces of the device gradients.
#include "ds/cuda_memory.h"
#include "ds/cuda_model.h"
#include "ds/cuda_ops.h"
#include "ds/error.h"
#include "pretrain_device.h"

namespace ds {

namespace {

class CudaTrainer final : public DeviceTrainer {
 public:
  CudaTrainer(const Model<float>& model, AdamW& optimizer, const AdamWOptions& adamw, bool fp8, dist::Comm* comm)
      : model_(model), optimizer_(model_, adamw), comm_(comm && comm->size() > 1 ? comm : nullptr) {
    if (comm_ && comm_->backend() != "nccl")
      fail("training on a GPU over {} ranks reduces device gradients: the collectives must be NCCL's, not {}",
           comm_->size(), comm_->backend());
    model_.set_fp8(fp8);
    upload_state(optimizer);
  }

  void zero_grads() override { model_.zero_grads(); }

  ForwardStats forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                                const LossOptions& loss) override {
    ForwardStats stats = model_.forward(inputs, targets, B, Tn, loss);
    model_.backward();
    return stats;
  }

  // The ranks' sum, in place on the device once the backward is done, then one scaling to the mean over ranks and
  // micro-batches: every rank holds the same gradients, and its replica of the AdamW state takes the same step.
  double reduce_grads(int64_t micro_batches, double max_norm) override {
    int64_t parts = micro_batches;
    if (comm_) {
      model_.synchronize();  // the collective runs on the Comm's own stream
      comm_->all_reduce(model_.device_grads(), model_.size());
      parts *= comm_->size();
    }
    if (parts > 1) cuda::scale(model_.device_grads(), 1.0f / float(parts), model_.size(), model_.stream());
    return optimizer_.reduce_grads(max_norm);
  }

  // NCCL reduces device memory only: the values go through a device copy.
  void sum_over_ranks(std::vector<double>& values) override {
    if (!comm_) return;
    cuda::DeviceBuffer<double> buffer = cuda::to_device(values, model_.stream());
    comm_->all_reduce(buffer.data(), int64_t(values.size()));
    values = cuda::to_host(buffer, model_.stream());
  }

  void step(double lr, const std::vector<std::vector<int64_t>>& loads, double bias_gamma) override {
    optimizer_.step(lr);
    model_.update_router_bias(loads, bias_gamma);
  }

  void upload(const Model<float>& model, AdamW& optimizer) override {
    model_.set_params(model.params());
    upload_state(optimizer);
  }

  void download(Model<float>& model, AdamW& optimizer) override {
    model.params() = model_.params();
    optimizer.load_state(optimizer_.m(), optimizer_.v());
    optimizer.set_steps(optimizer_.steps());
  }

 private:
  void upload_state(AdamW& optimizer) {
    optimizer_.load_state(optimizer.m(), optimizer.v());
    optimizer_.set_steps(optimizer.steps());
  }

  cuda::TrainModel model_;
  cuda::DeviceAdamW optimizer_;
  dist::Comm* comm_;  // null with one rank
};

}  // namespace

std::unique_ptr<DeviceTrainer> make_cuda_trainer(const Model<float>& model, AdamW& optimizer,
                                                 const AdamWOptions& adamw, bool fp8, dist::Comm* comm) {
  return std::make_unique<CudaTrainer>(model, optimizer, adamw, fp8, comm);
}

}  // namespace ds
