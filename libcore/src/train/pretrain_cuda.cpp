// DeviceTrainer on a CUDA device: TrainModel and DeviceAdamW (ds/cuda_model.h) behind pretrain()'s step.
#include "ds/cuda_model.h"
#include "ds/cuda_ops.h"
#include "pretrain_device.h"

namespace ds {

namespace {

class CudaTrainer final : public DeviceTrainer {
 public:
  CudaTrainer(const Model<float>& model, AdamW& optimizer, const AdamWOptions& adamw, bool fp8)
      : model_(model), optimizer_(model_, adamw) {
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

  double reduce_grads(int64_t micro_batches, double max_norm) override {
    if (micro_batches > 1)
      cuda::scale(model_.device_grads(), 1.0f / float(micro_batches), model_.size(), model_.stream());
    return optimizer_.reduce_grads(max_norm);
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
};

}  // namespace

std::unique_ptr<DeviceTrainer> make_cuda_trainer(const Model<float>& model, AdamW& optimizer,
                                                 const AdamWOptions& adamw, bool fp8) {
  return std::make_unique<CudaTrainer>(model, optimizer, adamw, fp8);
}

}  // namespace ds
