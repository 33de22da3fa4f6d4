// StepTrainer on the CPU: Model<float> and AdamW themselves; and the choice of trainer by device.
#include "step_trainer.h"

#include "ds/error.h"

namespace ds {

namespace {

class CpuTrainer final : public StepTrainer {
 public:
  CpuTrainer(Model<float>& model, AdamW& optimizer)
      : model_(model), optimizer_(optimizer), reduce_(optimizer.grad_hook(model.grads())) {}

  void begin_step(int64_t micro_batches) override {
    model_.zero_grads();
    micro_batches_ = micro_batches, done_ = 0;
  }

  // The last micro-batch's backward finishes the gradients a range at a time: each becomes the mean over the
  // micro-batches, and its reduction over the ranks may start while the backward goes on.
  ForwardStats forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn,
                                const LossOptions& loss) override {
    ForwardStats stats = model_.forward(inputs, targets, B, Tn, loss);
    const bool last = ++done_ == micro_batches_;
    model_.backward(last ? GradReady([this](int64_t begin, int64_t end) { finish(begin, end); }) : GradReady());
    return stats;
  }

  double reduce_grads(double max_norm) override { return optimizer_.reduce_grads(model_.grads(), max_norm); }

  void step(double lr, const std::vector<std::vector<int64_t>>& loads, double bias_gamma) override {
    optimizer_.step(model_.params(), model_.grads(), lr);
    model_.update_router_bias(loads, bias_gamma);
  }

  void host_loaded() override {}  // the host copies are the trained ones
  void sync_host() override {}
  bool state_replicated() const override { return false; }

 private:
  void finish(int64_t begin, int64_t end) {
    std::vector<float>& grads = model_.grads();
    if (micro_batches_ > 1)
      for (int64_t i = begin; i < end; ++i) grads[size_t(i)] /= float(micro_batches_);
    if (reduce_) reduce_(begin, end);
  }

  Model<float>& model_;
  AdamW& optimizer_;
  const GradReady reduce_;  // empty without buckets
  int64_t micro_batches_ = 1, done_ = 0;
};

}  // namespace

std::unique_ptr<StepTrainer> make_step_trainer(const Device& device, Model<float>& model, AdamW& optimizer,
                                               const AdamWOptions& adamw, bool fp8, dist::Comm* comm) {
  if (!device.cuda) return std::make_unique<CpuTrainer>(model, optimizer);  // comm: the optimizer's
#ifdef DS_CUDA
  return make_cuda_trainer(model, optimizer, adamw, fp8, comm);
#else
  (void)adamw, (void)fp8, (void)comm;
  fail("--device {}: this build runs on the CPU only", device.name());
#endif
}

}  // namespace ds
