// ds-grpo's and ds-distill's training with --device cuda. Distillation on data follows the CPU's run of the same
// options (SFT, KD from a teacher, and FP8 with the teacher scoring in FP8 on the device); a GRPO run samples on the
// device, so it cannot follow the CPU's tokens, but it trains, resumes bit-exactly on the device, and its checkpoints
// continue on the CPU.
#include <atomic>
#include <cmath>
#include <fstream>
#include <vector>

#include "../unit/temp_dir.h"
#include "ds/checkpoint.h"
#include "ds/config.h"
#include "ds/distill.h"
#include "ds/grpo_train.h"
#include "ds/pretrain.h"
#include "gpu_test.h"

using namespace ds;

namespace {

const std::atomic<bool> no_stop{false};

// A model of config (tiny by default) trained for a few steps on the CPU: the GRPO base and the distillation teacher.
std::string tiny_base(const TempDir& dir, const std::string& config = "tiny") {
  PretrainOptions o;
  o.run_dir = dir / "base", o.model_config = config;
  o.batch = 4, o.seq_len = 32, o.steps = 4;
  pretrain(o, no_stop, {});
  return o.run_dir;
}

GrpoTrainOptions grpo_run(const std::string& dir, const std::string& base, bool cuda) {
  GrpoTrainOptions o;
  o.run_dir = dir, o.model = base, o.prompt_template = "plain";
  o.group_size = 4, o.prompts_per_step = 2, o.steps = 4;
  o.sampling.max_new_tokens = 12;
  o.loss.beta = 0.05;  // every completion trains, and the reference runs
  o.iterations = 2, o.micro_batch = 3;
  o.schedule.lr = 1e-2;
  o.device = Device{cuda, 0};
  return o;
}

std::vector<GrpoRecord> train(const GrpoTrainOptions& o) {
  std::vector<GrpoRecord> records;
  GrpoEvents events;
  events.log = [&](const GrpoRecord& r) { records.push_back(r); };
  grpo_train(o, no_stop, events);
  return records;
}

// Prompt/completion records of a digit-copying task.
std::string sft_data(const TempDir& dir) {
  const std::string path = dir / "sft.jsonl";
  std::ofstream out(path);
  for (int i = 0; i < 48; ++i)
    out << R"({"prompt": "copy )" << i * 37 % 1000 << R"(", "completion": ")" << i * 37 % 1000 << R"("})"
        << "\n";
  return path;
}

// tiny with every size an FP8 GEMM sees a multiple of 128 (as tests/gpu/model.cpp's), as a config.json.
std::string fp8_config(const TempDir& dir) {
  ModelConfig c = resolve_model_config("tiny");
  c.hidden_size = 128, c.intermediate_size = 256, c.moe_intermediate_size = 128;
  c.q_lora_rank = 128, c.kv_lora_rank = 128, c.qk_nope_head_dim = 64, c.qk_rope_head_dim = 128, c.v_head_dim = 128;
  const std::string path = dir / "fp8.json";
  std::ofstream(path) << config_to_json(c).dump(2);
  return path;
}

distill::DistillOptions distill_run(const std::string& dir, const std::string& data, const std::string& teacher,
                                    bool cuda) {
  distill::DistillOptions o;
  o.run_dir = dir, o.data = data, o.teacher = teacher, o.alpha = teacher.empty() ? 0.0 : 0.5;
  o.student_config = "tiny", o.prompt_template = "plain";
  o.batch = 4, o.seq_len = 32, o.steps = 6, o.log_every = 1, o.val_fraction = 0.1;
  o.device = o.sample.device = Device{cuda, 0};
  return o;
}

std::vector<double> train(const distill::DistillOptions& o) {
  std::vector<double> losses;
  distill::DistillEvents events;
  events.log = [&](const distill::DistillRecord& r) { losses.push_back(r.loss); };
  distill::distill(o, no_stop, events);
  return losses;
}

}  // namespace

TEST_CASE("GRPO on the device trains, resumes bit-exactly, and its checkpoints continue on the CPU") {
  TempDir dir;
  const std::string base = tiny_base(dir);
  const std::vector<GrpoRecord> whole = train(grpo_run(dir / "whole", base, true));
  REQUIRE(whole.size() == 4);
  for (const GrpoRecord& r : whole) {
    CHECK(std::isfinite(r.loss));
    CHECK(r.grad_norm > 0);
    CHECK(std::isfinite(r.kl));
    CHECK(r.entropy > 0);
  }
  CHECK(whole.back().kl > 0);  // the policy left the reference
  GrpoTrainOptions halves = grpo_run(dir / "halves", base, true);
  halves.stop_after = 2;
  train(halves);
  halves.resume = true, halves.stop_after = 0;
  const std::vector<GrpoRecord> rest = train(halves);
  REQUIRE(rest.size() == 2);
  CHECK(rest.back().loss == whole.back().loss);
  CHECK(load_model_dir(halves.run_dir).model.params() == load_model_dir(dir / "whole").model.params());

  GrpoTrainOptions on_cpu = grpo_run(halves.run_dir, base, false);
  on_cpu.resume = true, on_cpu.steps = 5;
  const std::vector<GrpoRecord> more = train(on_cpu);
  REQUIRE(more.size() == 1);
  CHECK(std::isfinite(more[0].loss));
}

TEST_CASE("distillation on the device follows the CPU: SFT, and KD from a teacher") {
  TempDir dir;
  const std::string data = sft_data(dir);
  for (const bool kd : {false, true}) {
    CAPTURE(kd);
    const std::string teacher = kd ? tiny_base(dir) : "";
    const std::string name = kd ? "kd" : "sft";
    const std::vector<double> gpu = train(distill_run(dir / (name + "-gpu"), data, teacher, true));
    const std::vector<double> cpu = train(distill_run(dir / (name + "-cpu"), data, teacher, false));
    REQUIRE(gpu.size() == 6);
    REQUIRE(cpu.size() == 6);
    for (size_t i = 0; i < gpu.size(); ++i) {
      CAPTURE(i);
      CHECK(std::fabs(gpu[i] - cpu[i]) <= 0.03 * std::fabs(cpu[i]));
    }
    CHECK(gpu.back() < gpu.front());
    std::filesystem::remove_all(dir / "base");
  }
}

TEST_CASE("FP8 distillation on the device follows the CPU's emulation, the teacher scoring in FP8 on the device") {
  TempDir dir;
  const std::string config = fp8_config(dir), data = sft_data(dir), teacher = tiny_base(dir, config);
  std::vector<std::vector<double>> losses;
  for (const bool cuda : {true, false}) {
    distill::DistillOptions o = distill_run(dir / (cuda ? "gpu" : "cpu"), data, teacher, cuda);
    o.student_config = config, o.fp8 = true;
    losses.push_back(train(o));
  }
  REQUIRE(losses[0].size() == 6);
  REQUIRE(losses[1].size() == 6);
  for (size_t i = 0; i < losses[0].size(); ++i) {
    CAPTURE(i);
    CHECK(std::fabs(losses[0][i] - losses[1][i]) <= 0.03 * std::fabs(losses[1][i]));
  }
}
