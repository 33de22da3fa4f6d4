// simt's own checks: what the gpu tests rely on it for. Block reductions over shuffles and barriers give the sum, in
// one- and two-dimensional blocks; a read that misses a barrier sees stale data; threads that wait at different
// barriers, or a shuffle that some lanes never reach, fail the launch instead of hanging; a bad launch configuration
// is reported as CUDA reports it.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

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

}  // namespace

TEST_CASE("block reductions over shuffles and barriers") {
  const int blocks = 3, threads = 256;
  std::vector<float> x(blocks * threads), out(2 * blocks);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 37 % 101) - 50);
  DS_LAUNCH(block_sums, blocks, threads, 0, nullptr)(out.data(), x.data());
  REQUIRE(cudaGetLastError() == cudaSuccess);
  for (int b = 0; b < blocks; ++b) {
    const auto first = x.begin() + b * threads, last = first + threads;
    CHECK(out[2 * b] == std::accumulate(first, last, 0.0f));  // integers: exact in any order
    CHECK(out[2 * b + 1] == *std::max_element(first, last));
  }
}

TEST_CASE("the warps of a two-dimensional block") {
  std::vector<float> out(128);
  DS_LAUNCH(warp_sums_2d, 1, dim3(16, 8), 0, nullptr)(out.data());
  for (int i = 0; i < 128; ++i) {
    const int first = i / 32 * 32;
    CHECK(out[i] == float(32 * first + 31 * 32 / 2));  // first + (first + 1) + ... + (first + 31)
  }
}

TEST_CASE("a read that misses a barrier sees stale data") {
  std::vector<float> x(256), out(256, 0.0f);
  std::iota(x.begin(), x.end(), 1.0f);
  DS_LAUNCH(rotate, 1, 256, 0, nullptr)(out.data(), x.data(), true);
  for (int t = 0; t < 256; ++t) CHECK(out[t] == x[(t + 1) % 256]);
  for (float& v : x) v += 1000.0f;  // so that the previous launch's values are stale
  DS_LAUNCH(rotate, 1, 256, 0, nullptr)(out.data(), x.data(), false);
  int stale = 0;
  for (int t = 0; t < 256; ++t) stale += out[t] == x[(t + 1) % 256] - 1000.0f;
  CHECK(stale > 0);
}

TEST_CASE("threads that cannot meet fail the launch") {
  std::vector<float> out(256);
  CHECK_THROWS_WITH_AS(DS_LAUNCH(half_warp_shuffle, 1, 64, 0, nullptr)(out.data()),
                       doctest::Contains("kernel half_warp_shuffle, block (0,0,0)"), std::runtime_error);
  CHECK_THROWS_WITH_AS(DS_LAUNCH(split_barriers, 2, 128, 0, nullptr)(out.data()),
                       doctest::Contains("kernel split_barriers"), std::runtime_error);
}

TEST_CASE("launch configurations CUDA refuses") {
  std::vector<float> out(4096, 0.0f);
  DS_LAUNCH(fill, 1, 2048, 0, nullptr)(out.data());
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  CHECK(cudaGetLastError() == cudaSuccess);  // reading the error clears it
  CHECK(out[0] == 0.0f);
  DS_LAUNCH(fill, 0, 32, 0, nullptr)(out.data());
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  DS_LAUNCH(fill, 2, 64, 0, nullptr)(out.data());
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
