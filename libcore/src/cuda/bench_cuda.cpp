#include <algorithm>
#include <chrono>
#include <functional>

#include "cuda_gemm.h"
#include "cuda_memory.h"
#include "cuda_model.h"
#include "cuda_ops.h"
#include "cuda_stream.h"
#include "ds/bench.h"
#include "ds/error.h"

namespace ds::bench {

namespace {

struct Timing {
  double best_ms = 0, median_ms = 0;
};

double sorted_median(const std::vector<double>& x) {
  const size_t n = x.size();
  return n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
}

// One warm-up call, then timed calls (GPU time by events) until min_seconds of wall time and at least 3 calls.
Timing time_calls(const std::function<void()>& call, cudaStream_t stream, double min_seconds) {
  cuda::Timer timer(stream);
  call();
  DS_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<double> ms;
  const auto start = std::chrono::steady_clock::now();
  while (ms.size() < 3 ||
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < min_seconds) {
    timer.start();
    call();
    ms.push_back(timer.stop_ms());
  }
  std::sort(ms.begin(), ms.end());
  return {ms.front(), sorted_median(ms)};
}

// A buffer of n elements of T filled with the byte `pattern` (0x3c: bf16 0.0115, e4m3 1.0, f32 0.0115).
template <typename T>
cuda::DeviceBuffer<T> filled(int64_t n, int pattern, cudaStream_t stream) {
  cuda::DeviceBuffer<T> b(static_cast<size_t>(n));
  DS_CUDA_CHECK(cudaMemsetAsync(b.data(), pattern, b.bytes(), stream));
  return b;
}

// y[M,N] = x[M,K] W[N,K]^T with bf16 operands and output, timed as time_calls does.
Timing time_bf16_gemm(int64_t M, int64_t N, int64_t K, double min_seconds, cudaStream_t stream) {
  const auto x = filled<__nv_bfloat16>(M * K, 0x3c, stream), w = filled<__nv_bfloat16>(N * K, 0x3c, stream);
  auto y = filled<__nv_bfloat16>(M * N, 0, stream);
  return time_calls(
      [&] {
        cuda::gemm_bf16(false, true, M, N, K, 1.0f, x.data(), K, w.data(), K, 0.0f, y.data(), cuda::OutType::BF16, N,
                        stream);
      },
      stream, min_seconds);
}

double tflops(int64_t M, int64_t N, int64_t K, double ms) {
  return 2.0 * double(M) * double(N) * double(K) / (ms * 1e-3) / 1e12;
}

}  // namespace

std::string gpu_name() {
  int device = 0;
  DS_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  DS_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

GpuGemmResult gpu_gemm(int64_t M, int64_t N, int64_t K, double min_seconds) {
  if (M <= 0 || N <= 0 || K <= 0) fail("GEMM sizes must be positive, got {}x{}x{}", M, N, K);
  cuda::Stream stream;
  GpuGemmResult r;
  {
    const Timing t = time_bf16_gemm(M, N, K, min_seconds, stream);
    r.bf16_tflops = tflops(M, N, K, t.best_ms);
    r.bf16_median_tflops = tflops(M, N, K, t.median_ms);
  }
  {
    using cuda::Fp8Scaling;
    const auto xq = filled<uint8_t>(M * K, 0x38, stream), wq = filled<uint8_t>(N * K, 0x38, stream);
    const auto xs = filled<float>(cuda::fp8_scale_count(Fp8Scaling::Groups, M, K), 0x3c, stream);
    const auto ws = filled<float>(cuda::fp8_scale_count(Fp8Scaling::Blocks, N, K), 0x3c, stream);
    auto y = filled<__nv_bfloat16>(M * N, 0, stream);
    const cuda::Fp8Operand a{xq.data(), xs.data(), Fp8Scaling::Groups}, b{wq.data(), ws.data(), Fp8Scaling::Blocks};
    const Timing t = time_calls([&] { cuda::gemm_fp8(a, b, M, N, K, 0.0f, y.data(), cuda::OutType::BF16, stream); },
                                stream, min_seconds);
    r.fp8_tflops = tflops(M, N, K, t.best_ms);
    r.fp8_median_tflops = tflops(M, N, K, t.median_ms);
  }
  return r;
}

double gpu_bf16_peak(double min_seconds) {
  cuda::Stream stream;
  double peak = 0;
  for (const int64_t n : {4096, 8192})
    peak = std::max(peak, tflops(n, n, n, time_bf16_gemm(n, n, n, min_seconds, stream).best_ms));
  return peak;
}

StepResult gpu_train_step(const ModelConfig& config, int64_t batch, int64_t seq_len, int warmup, int steps, bool fp8,
                          double peak_tflops) {
  if (batch <= 0 || seq_len <= 0 || steps <= 0 || warmup < 0)
    fail("training step benchmark needs positive batch, seq_len and steps, got {}, {}, {}", batch, seq_len, steps);
  Model<float> host(config);
  host.init_random(1234);
  cuda::TrainModel model(host);
  model.set_fp8(fp8);
  cuda::DeviceAdamW optimizer(model, AdamWOptions{});
  const int64_t tokens = batch * seq_len;
  const auto [inputs, targets] = random_batch(config.vocab_size, tokens);

  // Wall time of whole steps, as ds-pretrain takes them: forward waits for its losses, the clipping for the norm,
  // and the step ends when the update is done.
  std::vector<double> ms;
  for (int i = 0; i < warmup + steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    model.zero_grads();
    model.forward(inputs.data(), targets.data(), batch, seq_len);
    model.backward();
    optimizer.reduce_grads(1.0);
    optimizer.step(1e-4);
    model.synchronize();
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(ms.begin(), ms.end());

  return step_result(config, seq_len, tokens, sorted_median(ms) * 1e-3, peak_tflops * 1e3);
}

MlaDecodeResult gpu_mla_decode(int64_t batch, int64_t context, int64_t heads, double min_seconds) {
  if (batch <= 0 || context <= 0 || heads <= 0) fail("MLA decode sizes must be positive");
  constexpr int64_t r = 512, dr = 64, width = r + dr;
  cuda::Stream stream;
  const auto q = filled<float>(batch * heads * width, 0x3c, stream);
  const auto cache = filled<__nv_bfloat16>(batch * context * width, 0x3c, stream);
  const cuda::DeviceBuffer<int32_t> lengths =
      cuda::to_device(std::vector<int32_t>(static_cast<size_t>(batch), int32_t(context)), stream);
  auto out = filled<float>(batch * heads * r, 0, stream);
  const Timing t = time_calls(
      [&] {
        cuda::mla_decode(out.data(), q.data(), cache.data(), nullptr, lengths.data(), batch, heads, context, r, dr,
                         0.135234f, stream);
      },
      stream, min_seconds);
  const double bytes = double(cache.bytes() + q.bytes() + out.bytes());
  return {t.best_ms, t.median_ms, bytes / (t.best_ms * 1e-3) / 1e9};
}

AllReduceResult gpu_all_reduce(dist::Comm& comm, int64_t bytes, double min_seconds) {
  const int64_t n = all_reduce_floats(bytes);
  cuda::Stream stream;
  cuda::DeviceBuffer<float> data = cuda::to_device(std::vector<float>(size_t(n), float(comm.rank() + 1)), stream);
  comm.all_reduce(data.data(), n);
  check_all_reduce_sum(cuda::to_host(data, stream), comm);
  DS_CUDA_CHECK(cudaMemsetAsync(data.data(), 0, data.bytes(), stream));  // sums of zeros stay finite
  DS_CUDA_CHECK(cudaStreamSynchronize(stream));
  return time_all_reduce(comm, bytes, min_seconds, [&] { comm.all_reduce(data.data(), n); });
}

}  // namespace ds::bench
