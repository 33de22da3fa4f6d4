// ds::pretrain with --device cuda: the loss falls and follows the CPU's run of the same options (the balance loss
// included), a run stopped and resumed on the device ends with the bits of one that was not, checkpoints written on
// the device resume on the CPU and the other way round, and FP8 at sizes cuBLASLt cannot take is refused.
#include <atomic>
#include <cmath>
#include <vector>

#include "../unit/temp_dir.h"
#include "ds/checkpoint.h"
#include "ds/error.h"
#include "ds/pretrain.h"
#include "gpu_test.h"

using namespace ds;

namespace {

PretrainOptions tiny_run(const std::string& dir, bool cuda) {
  PretrainOptions o;
  o.run_dir = dir, o.model_config = "tiny";
  o.batch = 4, o.seq_len = 16, o.steps = 6, o.log_every = 1;
  o.loss.balance_alpha = 0.01;
  o.device = Device{cuda, 0};
  return o;
}

// The main loss of every step the run takes.
std::vector<double> train(const PretrainOptions& o) {
  const std::atomic<bool> no_stop{false};
  std::vector<double> losses;
  PretrainEvents events;
  events.log = [&](const StepRecord& r) { losses.push_back(r.main_loss); };
  pretrain(o, no_stop, events);
  return losses;
}

}  // namespace

TEST_CASE("pretraining on the device follows the CPU and resumes across devices") {
  TempDir dir;
  PretrainOptions gpu = tiny_run(dir / "gpu", true), cpu = tiny_run(dir / "cpu", false);
  gpu.stop_after = 3;
  const std::vector<double> first = train(gpu);
  const std::vector<double> reference = train(cpu);
  REQUIRE(first.size() == 3);
  REQUIRE(reference.size() == 6);
  for (size_t i = 0; i < first.size(); ++i) {
    CAPTURE(i);
    CHECK(std::fabs(first[i] - reference[i]) <= 0.03 * reference[i]);
  }
  // The device's checkpoint is an ordinary one: the CPU continues it, and the device continues the CPU's.
  CHECK(load_model_dir(gpu.run_dir).model.params().size() == load_model_dir(cpu.run_dir).model.params().size());
  PretrainOptions on_cpu = tiny_run(gpu.run_dir, false);
  on_cpu.resume = true, on_cpu.steps = 5;
  const std::vector<double> middle = train(on_cpu);
  REQUIRE(middle.size() == 2);
  PretrainOptions back = tiny_run(gpu.run_dir, true);
  back.resume = true;
  const std::vector<double> last = train(back);
  REQUIRE(last.size() == 1);
  CHECK(std::fabs(last[0] - reference[5]) <= 0.05 * reference[5]);
  CHECK(last[0] < first[0]);
}

TEST_CASE("pretraining on the device resumes bit-exactly") {
  TempDir dir;
  PretrainOptions whole = tiny_run(dir / "whole", true), halves = tiny_run(dir / "halves", true);
  const std::vector<double> losses = train(whole);
  halves.stop_after = 3;
  train(halves);
  halves.resume = true, halves.stop_after = 0;
  const std::vector<double> rest = train(halves);
  REQUIRE(losses.size() == 6);
  REQUIRE(rest.size() == 3);
  for (size_t i = 0; i < rest.size(); ++i) CHECK(rest[i] == losses[i + 3]);
  CHECK(load_model_dir(halves.run_dir).model.params() == load_model_dir(whole.run_dir).model.params());
}

TEST_CASE("pretraining on the device refuses FP8 at sizes its GEMMs cannot take") {
  TempDir dir;
  PretrainOptions fp8 = tiny_run(dir / "fp8", true);
  fp8.fp8 = true;
  CHECK_THROWS_AS(train(fp8), Error);
}
