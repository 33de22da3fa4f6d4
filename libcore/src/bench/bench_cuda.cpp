#include <algorithm>
#include <chrono>
#include <functional>

#include "ds/cuda_bench.h"
#include "ds/cuda_gemm.h"
#include "ds/cuda_memory.h"
#include "ds/cuda_ops.h"
#include "ds/cuda_stream.h"
#include "ds/error.h"

namespace ds::bench {

namespace {

struct Timing {
  double best_ms = 0, median_ms = 0;
};

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
  const size_t n = ms.size();
  return {ms.front(), n % 2 ? ms[n / 2] : (ms[n / 2 - 1] + ms[n / 2]) / 2};
}

// A buffer of n elements of T filled with the byte `pattern` (0x3c: bf16 0.0115, e4m3 1.0, f32 0.0115).
template <typename T>
cuda::DeviceBuffer<T> filled(int64_t n, int pattern, cudaStream_t stream) {
  cuda::DeviceBuffer<T> b(static_cast<size_t>(n));
  DS_CUDA_CHECK(cudaMemsetAsync(b.data(), pattern, b.bytes(), stream));
  return b;
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
  const double flop = 2.0 * double(M) * double(N) * double(K);
  auto tflops = [&](double ms) { return flop / (ms * 1e-3) / 1e12; };
  GpuGemmResult r;
  {
    const auto x = filled<__nv_bfloat16>(M * K, 0x3c, stream), w = filled<__nv_bfloat16>(N * K, 0x3c, stream);
    auto y = filled<__nv_bfloat16>(M * N, 0, stream);
    const Timing t = time_calls(
        [&] {
          cuda::gemm_bf16(false, true, M, N, K, 1.0f, x.data(), K, w.data(), K, 0.0f, y.data(), cuda::OutType::BF16, N,
                          stream);
        },
        stream, min_seconds);
    r.bf16_tflops = tflops(t.best_ms);
    r.bf16_median_tflops = tflops(t.median_ms);
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
    r.fp8_tflops = tflops(t.best_ms);
    r.fp8_median_tflops = tflops(t.median_ms);
  }
  return r;
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

}  // namespace ds::bench
