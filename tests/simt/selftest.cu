// simt's own checks: what the gpu tests rely on it for. Block reductions over shuffles and barriers give the sum, in
// one- and two-dimensional blocks; a read that misses a barrier sees stale data; threads that wait at different
// barriers, or a shuffle that some lanes never reach, fail the launch instead of hanging; a bad launch configuration
// is reported as CUDA reports it. The tensor-core product follows common.cuh's fragment layout; cp.async copies land
// when their thread waits; dynamic shared memory starts as NaN and needs opting in above 48 KiB.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "common.cuh"

namespace {

using namespace ds::cuda;

__global__ void block_sums(float* out, const float* x) {
  __shared__ float shared[32];
  const float v = x[blockIdx.x * blockDim.x + threadIdx.x];
  const float sum = block_reduce<false>(v, shared), max = block_reduce<true>(v, shared);
  if (threadIdx.x == 0) out[2 * blockIdx.x] = sum, out[2 * blockIdx.x + 1] = max;
}

// Warps of a two-dimensional block: lanes count along x, then y.
__global__ void warp_sums_2d(float* out) {
  const unsigned linear = threadIdx.y * blockDim.x + threadIdx.x;
  out[linear] = warp_sum(float(linear));
}

// Each thread reads its neighbour's value, after a barrier or, wrongly, without one.
__global__ void rotate(float* out, const float* x, bool barrier) {
  __shared__ float shared[256];
  __syncthreads();
  shared[threadIdx.x] = x[threadIdx.x];
  if (barrier) __syncthreads();
  out[threadIdx.x] = shared[(threadIdx.x + 1) % blockDim.x];
}

__global__ void half_warp_shuffle(float* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = warp_sum(1.0f);
}

// Half of each warp at __syncthreads, the other half at a shuffle that needs them.
__global__ void split_barriers(float* out) {
  if (threadIdx.x % 32 < 16)
    __syncthreads();
  else
    out[threadIdx.x] = warp_sum(1.0f);
}

__global__ void fill(float* out) { out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f; }

// D = A B for A 16x16 row-major, B 16x8 row-major (k, n), D 16x8 row-major, through the fragments of mma_16x8x16.
__global__ void mma_tile(float* d, const __nv_bfloat16* a, const __nv_bfloat16* b) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  const auto pair = [](const __nv_bfloat16* m, int first, int second) {
    return pack_bf16(__bfloat162float(m[first]), __bfloat162float(m[second]));
  };
  const int top = g * 16 + 2 * t, bottom = (g + 8) * 16 + 2 * t;  // A[g][2t], A[g+8][2t]
  const uint32_t af[4] = {pair(a, top, top + 1), pair(a, bottom, bottom + 1), pair(a, top + 8, top + 9),
                          pair(a, bottom + 8, bottom + 9)};
  const uint32_t bf[2] = {pair(b, 2 * t * 8 + g, (2 * t + 1) * 8 + g),
                          pair(b, (2 * t + 8) * 8 + g, (2 * t + 9) * 8 + g)};
  float acc[4] = {0.5f, 0.5f, 0.5f, 0.5f};
  mma_16x8x16(acc, af, bf);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = acc[i];
}

// The same through common.cuh's loaders, B by ldmatrix's transposing load.
__global__ void mma_tile_loaded(float* d, const __nv_bfloat16* a, const __nv_bfloat16* b) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  uint32_t af[4], bf[2];
  fragment_a(af, a, 16);
  fragment_b_rows(bf, b, 8);
  float acc[4] = {0.5f, 0.5f, 0.5f, 0.5f};
  mma_16x8x16(acc, af, bf);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = acc[i];
}

// Each thread copies 16 bytes in two groups and reads its shared memory before, between and after the waits.
__global__ void async_copies(float* out, const float* x) {
  float* shared = reinterpret_cast<float*>(dynamic_shared());
  float* mine = shared + 8 * threadIdx.x;
  copy_async_16(mine, x + 8 * threadIdx.x);
  copy_async_commit();
  copy_async_16(mine + 4, x + 8 * threadIdx.x + 4);
  copy_async_commit();
  out[3 * threadIdx.x] = mine[0];
  copy_async_wait<1>();
  out[3 * threadIdx.x + 1] = mine[0] + mine[4];
  copy_async_wait<0>();
  out[3 * threadIdx.x + 2] = mine[0] + mine[4];
}

__global__ void misaligned_copy(const float* x) { copy_async_16(dynamic_shared(), x + 1); }

__global__ void first_shared_byte(float* out) { out[blockIdx.x] = dynamic_shared()[0]; }

}  // namespace

TEST_CASE("block reductions over shuffles and barriers") {
  const int blocks = 3, threads = 256;
  std::vector<float> x(blocks * threads), out(2 * blocks);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 37 % 101) - 50);
  DS_LAUNCH(block_sums, blocks, threads, 0, nullptr, out.data(), x.data());
  REQUIRE(cudaGetLastError() == cudaSuccess);
  for (int b = 0; b < blocks; ++b) {
    const auto first = x.begin() + b * threads, last = first + threads;
    CHECK(out[2 * b] == std::accumulate(first, last, 0.0f));  // integers: exact in any order
    CHECK(out[2 * b + 1] == *std::max_element(first, last));
  }
}

TEST_CASE("the warps of a two-dimensional block") {
  std::vector<float> out(128);
  DS_LAUNCH(warp_sums_2d, 1, dim3(16, 8), 0, nullptr, out.data());
  for (int i = 0; i < 128; ++i) {
    const int first = i / 32 * 32;
    CHECK(out[i] == float(32 * first + 31 * 32 / 2));  // first + (first + 1) + ... + (first + 31)
  }
}

TEST_CASE("a read that misses a barrier sees stale data") {
  std::vector<float> x(256), out(256, 0.0f);
  std::iota(x.begin(), x.end(), 1.0f);
  DS_LAUNCH(rotate, 1, 256, 0, nullptr, out.data(), x.data(), true);
  for (int t = 0; t < 256; ++t) CHECK(out[t] == x[(t + 1) % 256]);
  for (float& v : x) v += 1000.0f;  // so that the previous launch's values are stale
  DS_LAUNCH(rotate, 1, 256, 0, nullptr, out.data(), x.data(), false);
  int stale = 0;
  for (int t = 0; t < 256; ++t) stale += out[t] == x[(t + 1) % 256] - 1000.0f;
  CHECK(stale > 0);
}

TEST_CASE("threads that cannot meet fail the launch") {
  std::vector<float> out(256);
  CHECK_THROWS_WITH_AS(DS_LAUNCH(half_warp_shuffle, 1, 64, 0, nullptr, out.data()),
                       doctest::Contains("kernel half_warp_shuffle, block (0,0,0)"), std::runtime_error);
  CHECK_THROWS_WITH_AS(DS_LAUNCH(split_barriers, 2, 128, 0, nullptr, out.data()),
                       doctest::Contains("kernel split_barriers"), std::runtime_error);
}

TEST_CASE("launch configurations CUDA refuses") {
  std::vector<float> out(4096, 0.0f);
  DS_LAUNCH(fill, 1, 2048, 0, nullptr, out.data());
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  CHECK(cudaGetLastError() == cudaSuccess);  // reading the error clears it
  CHECK(out[0] == 0.0f);
  DS_LAUNCH(fill, 0, 32, 0, nullptr, out.data());
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  DS_LAUNCH(fill, 2, 64, 0, nullptr, out.data());
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(std::accumulate(out.begin(), out.end(), 0.0f) == 128.0f);
}

TEST_CASE("devices: DS_SIMT_DEVICES of them, one by default") {
  int count = 0, device = -1;
  REQUIRE(cudaGetDeviceCount(&count) == cudaSuccess);
  CHECK(count >= 1);
  CHECK(cudaSetDevice(count) == cudaErrorInvalidDevice);
  CHECK(cudaGetLastError() == cudaErrorInvalidDevice);
  CHECK(cudaSetDevice(count - 1) == cudaSuccess);
  CHECK(cudaGetDevice(&device) == cudaSuccess);
  CHECK(device == count - 1);
  CHECK(cudaSetDevice(0) == cudaSuccess);
}

TEST_CASE("the tensor-core product, fragments as common.cuh lays them out and loads them") {
  std::vector<__nv_bfloat16> a(16 * 16), b(16 * 8);
  for (int i = 0; i < 256; ++i) a[i] = __float2bfloat16(float(i * 7 % 9 - 4));  // small integers: exact sums
  for (int i = 0; i < 128; ++i) b[i] = __float2bfloat16(float(i * 5 % 7 - 3));
  std::vector<float> d(16 * 8), loaded(16 * 8);
  DS_LAUNCH(mma_tile, 1, 32, 0, nullptr, d.data(), a.data(), b.data());
  DS_LAUNCH(mma_tile_loaded, 1, 32, 0, nullptr, loaded.data(), a.data(), b.data());
  for (int row = 0; row < 16; ++row)
    for (int col = 0; col < 8; ++col) {
      float want = 0.5f;
      for (int k = 0; k < 16; ++k) want += __bfloat162float(a[row * 16 + k]) * __bfloat162float(b[k * 8 + col]);
      CHECK(d[row * 8 + col] == want);
      CHECK(loaded[row * 8 + col] == want);
    }
}

TEST_CASE("cp.async copies land when their thread waits for their group") {
  std::vector<float> x(8 * 64), out(3 * 64);
  std::iota(x.begin(), x.end(), 1.0f);
  DS_LAUNCH(async_copies, 1, 64, x.size() * sizeof(float), nullptr, out.data(), x.data());
  REQUIRE(cudaGetLastError() == cudaSuccess);
  for (int t = 0; t < 64; ++t) {
    CHECK(std::isnan(out[3 * t]));      // not yet copied: shared memory starts as NaN
    CHECK(std::isnan(out[3 * t + 1]));  // the second group is still in flight
    CHECK(out[3 * t + 2] == x[8 * t] + x[8 * t + 4]);
  }
  CHECK_THROWS_WITH_AS(DS_LAUNCH(misaligned_copy, 1, 32, 64, nullptr, x.data()), doctest::Contains("cp.async of 16"),
                       std::runtime_error);
}

TEST_CASE("dynamic shared memory above 48 KiB needs opting in, up to 227 KiB") {
  std::vector<float> out(2, 0.0f);
  DS_LAUNCH(first_shared_byte, 2, 32, 64 << 10, nullptr, out.data());
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  CHECK(out[0] == 0.0f);
  DS_ALLOW_SHARED(first_shared_byte, 64 << 10);
  DS_LAUNCH(first_shared_byte, 2, 32, 64 << 10, nullptr, out.data());
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(out[0] == 255.0f);
  CHECK(out[1] == 255.0f);
  CHECK_THROWS_AS(DS_ALLOW_SHARED(first_shared_byte, 228 << 10), std::runtime_error);
}
