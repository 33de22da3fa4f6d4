// The FP8 quantisation kernels against the CPU's quantisers: codes and scales bit for bit, from f32 and bf16, on
// shapes with partial tiles.
#include <cstring>

#include "cuda_ops.h"
#include "ds/quantize.h"
#include "ds/tensor.h"
#include "fp8_layout.h"
#include "gpu_test.h"

using namespace ds;
using namespace ds::cuda;
using namespace ds::gpu_test;

namespace {

std::vector<float> transpose(const std::vector<float>& x, int64_t rows, int64_t cols) {
  std::vector<float> t(x.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[size_t(c * rows + r)] = x[size_t(r * cols + c)];
  return t;
}

std::vector<uint8_t> bytes(const Tensor& t) {
  return std::vector<uint8_t>(t.data<uint8_t>(), t.data<uint8_t>() + t.numel());
}
std::vector<float> floats(const Tensor& t) { return std::vector<float>(t.data<float>(), t.data<float>() + t.numel()); }

// The expected operand [rows, K] of x given as the CPU quantises it (x already laid out as the operand).
struct Expected {
  std::vector<uint8_t> codes;
  std::vector<float> scales;  // GPU layout
};
Expected expected(Fp8Scaling scaling, const std::vector<float>& operand, int64_t rows, int64_t K) {
  const Tensor t = Tensor::from_f32(operand, {rows, K});
  if (scaling == Fp8Scaling::Groups) {
    const quant::QuantizedActivations q = quant::quantize_activations(t);
    return {bytes(q.values), fp8_scales_to_gpu(scaling, q.scales.data<float>(), rows, K)};
  }
  const quant::QuantizedWeight q = quant::quantize_weight(t);
  return {bytes(q.weight), fp8_scales_to_gpu(scaling, q.scale_inv.data<float>(), rows, K)};
}

// Runs one kernel on x [rows, cols] (as T) and compares with the CPU on the operand it should produce.
template <typename T, typename Kernel>
void check_kernel(Kernel kernel, Fp8Scaling scaling, bool transposed, int64_t rows, int64_t cols, bool bf16) {
  Stream stream;
  std::vector<float> x = random_floats(static_cast<size_t>(rows * cols), 7 + uint64_t(rows), 3.0f);
  for (int64_t c = 0; rows > 5 && c < cols; ++c) x[size_t(5 * cols + c)] = 0.0f;  // an all-zero row: the 1e-4 floor
  if (bf16) x = round_bf16(x);
  const int64_t op_rows = transposed ? cols : rows, K = transposed ? rows : cols;
  const Expected want = expected(scaling, transposed ? transpose(x, rows, cols) : x, op_rows, K);
  DeviceBuffer<uint8_t> codes(static_cast<size_t>(rows * cols));
  DeviceBuffer<float> scales(static_cast<size_t>(fp8_scale_count(scaling, op_rows, K)));
  DS_CUDA_CHECK(cudaMemsetAsync(scales.data(), 0, scales.bytes(), stream));
  if constexpr (std::is_same_v<T, float>) {
    const DeviceBuffer<float> dx = to_device(x, stream);
    kernel(codes.data(), scales.data(), dx.data(), rows, cols, stream.get());
  } else {
    const DeviceBuffer<__nv_bfloat16> dx = to_device(to_bf16(x), stream);
    kernel(codes.data(), scales.data(), dx.data(), rows, cols, stream.get());
  }
  const std::vector<uint8_t> got_codes = to_host(codes, stream);
  const std::vector<float> got_scales = to_host(scales, stream);
  CHECK(got_scales == want.scales);
  size_t mismatches = 0;
  for (size_t i = 0; i < got_codes.size(); ++i) mismatches += got_codes[i] != want.codes[i];
  CHECK(mismatches == 0);
}

template <typename T>
void check_all(bool bf16) {
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{256, 512}, {200, 300}, {3, 130}}) {
    CAPTURE(rows);
    CAPTURE(cols);
    check_kernel<T>(quantize_groups<T>, Fp8Scaling::Groups, false, rows, cols, bf16);
    check_kernel<T>(quantize_groups_transposed<T>, Fp8Scaling::Groups, true, rows, cols, bf16);
    check_kernel<T>(quantize_blocks<T>, Fp8Scaling::Blocks, false, rows, cols, bf16);
    check_kernel<T>(quantize_blocks_transposed<T>, Fp8Scaling::Blocks, true, rows, cols, bf16);
  }
}

}  // namespace

TEST_CASE("FP8 quantisation of f32 matches the CPU bit for bit") { check_all<float>(false); }
TEST_CASE("FP8 quantisation of bf16 matches the CPU bit for bit") { check_all<__nv_bfloat16>(true); }
