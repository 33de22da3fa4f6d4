// StepTrainer on the CPU: Model<float> and AdamW themselves; the choice of trainer by device; and checkpoints.
#include "step_trainer.h"

#include "ds/error.h"

namespace ds {

namespace {

// Scorer's part of the CPU's scorer and trainer: the host model itself.
template <typename Interface>
class OnHost : public Interface {
 public:
  explicit OnHost(Model<float>& model) : model_(model) {}
  ForwardStats forward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t Tn, const LossOptions& loss,
                       const float* target_weights, const int32_t* positions) override {
    return model_.forward(inputs, targets, B, Tn, loss, target_weights, positions);
  }
  std::vector<double> target_logprobs() const override { return model_.target_logprobs(); }
  std::vector<double> entropies() const override { return model_.entropies(); }
  const float* logits() override { return model_.logits(); }

 protected:
  Model<float>& model_;
};

class CpuTrainer final : public OnHost<StepTrainer> {
 public:
  CpuTrainer(Model<float>& model, AdamW& optimizer)
      : OnHost(model), optimizer_(optimizer), reduce_(optimizer.grad_hook(model.grads())) {}

  void begin_step(int64_t backwards, bool mean) override {
    model_.zero_grads();
    backwards_ = backwards, done_ = 0, mean_ = mean;
  }

  // The step's last backward finishes the gradients a range at a time: each becomes the mean over the backwards
  // when asked, and its reduction over the ranks may start while the backward goes on.
  void backward() override { model_.backward(ready()); }
  void backward(const float* dlogits) override { model_.backward(dlogits, ready()); }

  double reduce_grads(double max_norm) override { return optimizer_.reduce_grads(model_.grads(), max_norm); }

  void step(double lr, const std::vector<std::vector<int64_t>>& loads, double bias_gamma) override {
    optimizer_.step(model_.params(), model_.grads(), lr);
    if (bias_gamma != 0) model_.update_router_bias(loads, bias_gamma);
  }

  void host_loaded() override {}  // the host copies are the trained ones
  void sync_params() override {}
  void sync_host() override {}
  bool state_replicated() const override { return false; }

 private:
  GradReady ready() {
    if (++done_ < backwards_) return {};
    return [this](int64_t begin, int64_t end) {
      std::vector<float>& grads = model_.grads();
      if (mean_ && backwards_ > 1)
        for (int64_t i = begin; i < end; ++i) grads[size_t(i)] /= float(backwards_);
      if (reduce_) reduce_(begin, end);
    };
  }

  AdamW& optimizer_;
  const GradReady reduce_;  // empty without buckets
  int64_t backwards_ = 1, done_ = 0;
  bool mean_ = true;
};

// The scorer owns its model: held in a base constructed before OnHost, which refers to it.
struct OwnedModel {
  Model<float> owned;
};
class CpuScorer final : private OwnedModel, public OnHost<Scorer> {
 public:
  CpuScorer(Model<float> model, bool fp8) : OwnedModel{std::move(model)}, OnHost(owned) { owned.set_fp8(fp8); }
};

}  // namespace

std::unique_ptr<Scorer> make_scorer(const Device& device, Model<float> model, bool fp8) {
  if (!device.cuda) return std::make_unique<CpuScorer>(std::move(model), fp8);
#ifdef DS_CUDA
  return make_cuda_scorer(model, fp8);
#else
  fail("--device {}: this build runs on the CPU only", device.name());
#endif
}

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

AdamW host_optimizer(const Device& device, const Model<float>& model, const AdamWOptions& adamw, dist::Comm* comm,
                     double bucket_mb) {
  return AdamW(model.param_infos(), int64_t(model.params().size()), adamw, device.cuda ? nullptr : comm, bucket_mb);
}

std::string save_trained(StepTrainer& trainer, dist::Comm* comm, const RunDir& run, int64_t step, int keep,
                         const Model<float>& model, const Tokenizer& tokenizer, const AdamW& optimizer,
                         const std::function<void(const std::string&)>& write_state) {
  trainer.sync_host();  // a collective where the ranks hold shards of the state
  const bool rank0_saves = trainer.state_replicated() && comm && comm->size() > 1;
  if (rank0_saves && comm->rank() != 0) {
    comm->barrier();
    return "";
  }
  const std::string dir = save_checkpoint(run, step, keep, model, tokenizer, optimizer, write_state);
  if (rank0_saves) comm->barrier();
  return dir;
}

}  // namespace ds
