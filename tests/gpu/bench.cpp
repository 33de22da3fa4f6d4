// ds-bench's GPU measurements at small sizes: each runs its kernels and library calls and reports figures that hang
// together (positive, the best call no slower than the median, the step's rates from its time), so that a GPU run
// of ds-bench has no untried path.
#include <cmath>

#include "ds/bench.h"
#include "ds/config.h"
#include "ds/flops.h"
#include "gpu_test.h"

using namespace ds;

TEST_CASE("bench: BF16 and FP8 GEMMs") {
  const bench::GpuGemmResult r = bench::gpu_gemm(128, 256, 384, 0.0);
  CHECK(r.bf16_tflops > 0);
  CHECK(r.fp8_tflops > 0);
  CHECK(r.bf16_median_tflops <= r.bf16_tflops);
  CHECK(r.fp8_median_tflops <= r.fp8_tflops);
}

TEST_CASE("bench: MLA decode over the latent cache") {
  const bench::MlaDecodeResult r = bench::gpu_mla_decode(2, 200, 20, 0.0);
  CHECK(r.best_ms > 0);
  CHECK(r.best_ms <= r.median_ms);
  // Bytes over the best call's time: the bf16 cache, the float queries and outputs.
  const double bytes = 2.0 * 200 * 576 * 2 + 2.0 * 20 * 576 * 4 + 2.0 * 20 * 512 * 4;
  CHECK(r.gbytes_per_s == doctest::Approx(bytes / (r.best_ms * 1e-3) / 1e9).epsilon(1e-9));
}

TEST_CASE("bench: a training step of tiny") {
  const ModelConfig config = resolve_model_config("tiny");
  const int64_t batch = 2, seq_len = 16;
  const bench::StepResult r = bench::gpu_train_step(config, batch, seq_len, 1, 2, false, 1.0);
  REQUIRE(r.step_ms > 0);
  CHECK(r.tokens_per_s == doctest::Approx(double(batch * seq_len) / (r.step_ms * 1e-3)));
  CHECK(r.flops_per_token == doctest::Approx(model_flops(config, seq_len).training_per_token));
  CHECK(r.gflops == doctest::Approx(r.flops_per_token * r.tokens_per_s / 1e9));
  CHECK(r.mfu == doctest::Approx(r.gflops / 1e3));  // against a peak of 1 TFLOP/s
}
