// cuBLASLt GEMMs against double-precision products of the same (rounded) inputs: BF16 with every transpose, and the
// FP8 block-scaled forward, data-gradient and weight-gradient GEMMs, quantised by the CPU and by the GPU kernels.
#include <cmath>

#include "cuda_gemm.h"
#include "cuda_ops.h"
#include "ds/error.h"
#include "ds/fp8.h"
#include "ds/ops.h"
#include "ds/quantize.h"
#include "ds/tensor.h"
#include "gpu_test.h"

using namespace ds;
using namespace ds::cuda;
using namespace ds::gpu_test;

namespace {

// C = alpha op(A) op(B) + beta C0 in double, row-major; also the sum of |terms| per entry (the error scale).
struct Product {
  std::vector<float> c, magnitude;
};
Product reference(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const std::vector<float>& A,
                  int64_t lda, const std::vector<float>& B, int64_t ldb, float beta, const std::vector<float>& C0) {
  Product p{std::vector<float>(static_cast<size_t>(M * N)), std::vector<float>(static_cast<size_t>(M * N))};
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = A[size_t(ta ? k * lda + m : m * lda + k)], b = B[size_t(tb ? n * ldb + k : k * ldb + n)];
        acc += a * b;
        mag += std::fabs(a * b);
      }
      const double c0 = C0.empty() ? 0.0 : double(C0[size_t(m * N + n)]);
      p.c[size_t(m * N + n)] = float(alpha * acc + beta * c0);
      p.magnitude[size_t(m * N + n)] = float(std::fabs(alpha) * mag + std::fabs(beta * c0));
    }
  return p;
}

// got within tol * magnitude of want, entry by entry.
void check_product(const std::vector<float>& got, const Product& want, double tol) {
  REQUIRE(got.size() == want.c.size());
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::fabs(double(got[i]) - want.c[i]) > tol * want.magnitude[i] + 1e-30) {
      if (bad++ < 5) FAIL_CHECK("entry " << i << ": got " << got[i] << ", want " << want.c[i]);
    }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("BF16 GEMM with every transpose, alpha and beta, F32 and BF16 outputs") {
  Stream stream;
  const int64_t M = 72, N = 96, K = 200;
  for (const bool ta : {false, true})
    for (const bool tb : {false, true})
      for (const OutType out : {OutType::F32, OutType::BF16}) {
        CAPTURE(ta);
        CAPTURE(tb);
        CAPTURE(int(out));
        const int64_t lda = ta ? M : K, ldb = tb ? K : N;
        const std::vector<float> A = round_bf16(random_floats(static_cast<size_t>(M * K), 1)),
                                 B = round_bf16(random_floats(static_cast<size_t>(K * N), 2));
        std::vector<float> C0 = round_bf16(random_floats(static_cast<size_t>(M * N), 3));
        const Product want = reference(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 1.0f, C0);
        const DeviceBuffer<__nv_bfloat16> dA = to_device(to_bf16(A), stream), dB = to_device(to_bf16(B), stream);
        std::vector<float> got;
        if (out == OutType::F32) {
          DeviceBuffer<float> dC = to_device(C0, stream);
          gemm_bf16(ta, tb, M, N, K, 0.5f, dA.data(), lda, dB.data(), ldb, 1.0f, dC.data(), out, N, stream);
          got = to_host(dC, stream);
          check_product(got, want, 1e-4);
        } else {
          DeviceBuffer<__nv_bfloat16> dC = to_device(to_bf16(C0), stream);
          gemm_bf16(ta, tb, M, N, K, 0.5f, dA.data(), lda, dB.data(), ldb, 1.0f, dC.data(), out, N, stream);
          got = from_bf16(to_host(dC, stream));
          check_product(got, want, 1e-2);  // the output's own rounding (2^-9 relative) dominates
        }
      }
}

TEST_CASE("grouped BF16 GEMMs over expert-major rows, an expert without rows included") {
  Stream stream;
  const int64_t E = 4, N = 48, K = 64;
  const std::vector<int32_t> offsets = {0, 10, 10, 37, 40};
  const int64_t rows = offsets.back();
  const std::vector<float> x = round_bf16(random_floats(static_cast<size_t>(rows * K), 30));
  std::vector<std::vector<float>> w;
  std::vector<DeviceBuffer<__nv_bfloat16>> gw;
  std::vector<const __nv_bfloat16*> pointers;
  for (int64_t e = 0; e < E; ++e) {
    w.push_back(round_bf16(random_floats(static_cast<size_t>(N * K), 31 + uint64_t(e))));
    gw.push_back(to_device(to_bf16(w.back()), stream));
    pointers.push_back(gw.back().data());
  }
  const DeviceBuffer<__nv_bfloat16> gx = to_device(to_bf16(x), stream);
  DeviceBuffer<float> gy(static_cast<size_t>(rows * N));
  grouped_linear_bf16(gy.data(), OutType::F32, gx.data(), pointers.data(), offsets.data(), E, N, K, stream);
  const std::vector<float> got = to_host(gy, stream);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = offsets[size_t(e)], n = offsets[size_t(e) + 1] - begin;
    if (n == 0) continue;
    const std::vector<float> xe(x.begin() + begin * K, x.begin() + (begin + n) * K);
    const std::vector<float> ge(got.begin() + begin * N, got.begin() + (begin + n) * N);
    check_product(ge, reference(false, true, n, N, K, 1.0f, xe, K, w[size_t(e)], K, 0.0f, {}), 1e-4);
  }
}

namespace {

// x [M, K] and w [N, K] quantised by the CPU (1x128 activations, 128x128 weights), their dequantised values, and
// device copies in the GPU layouts.
struct Fp8Inputs {
  std::vector<float> x, w;  // dequantised
  DeviceBuffer<uint8_t> xq, wq;
  DeviceBuffer<float> xs, ws;
};
Fp8Inputs quantise_on_cpu(int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  Fp8Inputs in;
  const Tensor x = Tensor::from_f32(random_floats(static_cast<size_t>(M * K), 11, 2.0f), {M, K});
  const Tensor w = Tensor::from_f32(random_floats(static_cast<size_t>(N * K), 12, 0.05f), {N, K});
  const quant::QuantizedActivations qx = quant::quantize_activations(x);
  const quant::QuantizedWeight qw = quant::quantize_weight(w);
  in.x = quant::dequantize_activations(qx.values, qx.scales).to_vector<float>();
  in.w = quant::dequantize_weight(qw.weight, qw.scale_inv).to_vector<float>();
  auto codes = [](const Tensor& t) { return std::vector<uint8_t>(t.data<uint8_t>(), t.data<uint8_t>() + t.numel()); };
  in.xq = to_device(codes(qx.values), stream);
  in.wq = to_device(codes(qw.weight), stream);
  in.xs = to_device(fp8_scales_to_gpu(Fp8Scaling::Groups, qx.scales.data<float>(), M, K), stream);
  in.ws = to_device(fp8_scales_to_gpu(Fp8Scaling::Blocks, qw.scale_inv.data<float>(), N, K), stream);
  return in;
}

}  // namespace

TEST_CASE("FP8 forward GEMM (1x128 x 128x128 scales) equals the product of the dequantised operands") {
  Stream stream;
  const int64_t M = 68, N = 200, K = 512;  // partial row tiles on both sides
  const Fp8Inputs in = quantise_on_cpu(M, N, K, stream);
  const Product want = reference(false, true, M, N, K, 1.0f, in.x, K, in.w, K, 0.0f, {});
  const Fp8Operand a{in.xq.data(), in.xs.data(), Fp8Scaling::Groups}, b{in.wq.data(), in.ws.data(), Fp8Scaling::Blocks};
  DeviceBuffer<float> y(static_cast<size_t>(M * N));
  gemm_fp8(a, b, M, N, K, 0.0f, y.data(), OutType::F32, stream);
  // FP8 tensor cores add within each 128-wide K block at reduced precision before the FP32 promotion.
  check_product(to_host(y, stream), want, 5e-4);
  DeviceBuffer<__nv_bfloat16> yb(static_cast<size_t>(M * N));
  gemm_fp8(a, b, M, N, K, 0.0f, yb.data(), OutType::BF16, stream);
  check_product(from_bf16(to_host(yb, stream)), want, 1e-2);
}

TEST_CASE("FP8 GEMMs of a linear layer's backward, quantised on the GPU, match the CPU emulation") {
  // dx = dy W and dW = dy^T x as ds-pretrain --fp8 emulates them on the CPU: dy and W quantised as in the forward
  // (1x128 along N, 128x128), and for dW both dy and x in 128x1 tiles down the token dimension.
  Stream stream;
  const int64_t M = 256, N = 384, K = 512;
  const std::vector<float> x = random_floats(static_cast<size_t>(M * K), 21),
                           w = random_floats(static_cast<size_t>(N * K), 22, 0.05f),
                           dy = random_floats(static_cast<size_t>(M * N), 23, 1e-3f);
  const DeviceBuffer<float> dx_in = to_device(x, stream), dw_in = to_device(w, stream), ddy = to_device(dy, stream);

  std::vector<float> dyq(dy.size()), wq(w.size()), dyq_cols(dy.size()), xq_cols(x.size());
  ops::fp8_round_trip(dyq.data(), dy.data(), M, N, ops::Fp8Tiles::Rows);
  ops::fp8_round_trip(wq.data(), w.data(), N, K, ops::Fp8Tiles::Blocks);
  ops::fp8_round_trip(dyq_cols.data(), dy.data(), M, N, ops::Fp8Tiles::Columns);
  ops::fp8_round_trip(xq_cols.data(), x.data(), M, K, ops::Fp8Tiles::Columns);

  SUBCASE("data gradient") {
    DeviceBuffer<uint8_t> dyc(static_cast<size_t>(M * N)), wtc(static_cast<size_t>(N * K));
    DeviceBuffer<float> dys(static_cast<size_t>(fp8_scale_count(Fp8Scaling::Groups, M, N))),
        wts(static_cast<size_t>(fp8_scale_count(Fp8Scaling::Blocks, K, N)));
    quantize_groups(dyc.data(), dys.data(), ddy.data(), M, N, stream);
    quantize_blocks_transposed(wtc.data(), wts.data(), dw_in.data(), N, K, stream);
    DeviceBuffer<float> dx(static_cast<size_t>(M * K));
    gemm_fp8({dyc.data(), dys.data(), Fp8Scaling::Groups}, {wtc.data(), wts.data(), Fp8Scaling::Blocks}, M, K, N, 0.0f,
             dx.data(), OutType::F32, stream);
    check_product(to_host(dx, stream), reference(false, false, M, K, N, 1.0f, dyq, N, wq, K, 0.0f, {}), 5e-4);
  }
  SUBCASE("weight gradient, accumulated") {
    DeviceBuffer<uint8_t> dytc(static_cast<size_t>(M * N)), xtc(static_cast<size_t>(M * K));
    DeviceBuffer<float> dyts(static_cast<size_t>(fp8_scale_count(Fp8Scaling::Groups, N, M))),
        xts(static_cast<size_t>(fp8_scale_count(Fp8Scaling::Groups, K, M)));
    quantize_groups_transposed(dytc.data(), dyts.data(), ddy.data(), M, N, stream);
    quantize_groups_transposed(xtc.data(), xts.data(), dx_in.data(), M, K, stream);
    const std::vector<float> dw0 = random_floats(static_cast<size_t>(N * K), 24, 1e-3f);
    DeviceBuffer<float> dw = to_device(dw0, stream);
    gemm_fp8({dytc.data(), dyts.data(), Fp8Scaling::Groups}, {xtc.data(), xts.data(), Fp8Scaling::Groups}, N, K, M,
             1.0f, dw.data(), OutType::F32, stream);
    check_product(to_host(dw, stream), reference(true, false, N, K, M, 1.0f, dyq_cols, N, xq_cols, K, 1.0f, dw0), 5e-4);
  }
}

TEST_CASE("FP8 GEMM rejects shapes cuBLASLt cannot take") {
  Stream stream;
  DeviceBuffer<uint8_t> codes(4096);
  DeviceBuffer<float> scales(64), y(4096);
  const Fp8Operand a{codes.data(), scales.data(), Fp8Scaling::Groups},
      b{codes.data(), scales.data(), Fp8Scaling::Blocks};
  CHECK_THROWS_AS(gemm_fp8(a, b, 6, 8, 128, 0.0f, y.data(), OutType::F32, stream), Error);   // M % 4
  CHECK_THROWS_AS(gemm_fp8(a, b, 8, 12, 128, 0.0f, y.data(), OutType::F32, stream), Error);  // N % 8
  CHECK_THROWS_AS(gemm_fp8(b, b, 8, 8, 128, 0.0f, y.data(), OutType::F32, stream), Error);   // 128x128 twice
}
