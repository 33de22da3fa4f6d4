// The host-side logic of the CUDA layer, which every build compiles: device names, the caching allocator's
// bookkeeping, and the FP8 scale layouts the GPU GEMMs read.
#include <doctest/doctest.h>

#include <vector>

#include "cuda_cache.h"
#include "ds/cuda.h"
#include "ds/error.h"
#include "ds/quantize.h"
#include "ds/tensor.h"
#include "fp8_layout.h"

using namespace ds;
using namespace ds::cuda;

TEST_CASE("device names parse as cpu, cuda and cuda:N") {
  CHECK_FALSE(parse_device("cpu").cuda);
  const Device d = parse_device("cuda");
  CHECK(d.cuda);
  CHECK(d.index == 0);
  CHECK(parse_device("cuda:3").index == 3);
  CHECK(parse_device("cuda:12").name() == "cuda:12");
  CHECK(parse_device("cpu").name() == "cpu");
  for (const char* bad : {"", "gpu", "cuda:", "cuda:-1", "cuda:+1", "cuda:1x", "cuda: 1", "CUDA", "cuda:99999999999"})
    CHECK_THROWS_AS(parse_device(bad), Error);
  CHECK_THROWS_WITH(parse_device("tpu"), "device 'tpu' is not cpu, cuda or cuda:N");
}

TEST_CASE("the block cache rounds sizes and reuses blocks that fit") {
  CHECK(BlockCache::round_size(0) == 0);
  CHECK(BlockCache::round_size(1) == 512);
  CHECK(BlockCache::round_size(512) == 512);
  CHECK(BlockCache::round_size(513) == 1024);
  CHECK(BlockCache::round_size(size_t(1) << 20) == size_t(1) << 20);
  CHECK(BlockCache::round_size((size_t(1) << 20) + 1) == size_t(2) << 20);
  CHECK(BlockCache::round_size(size_t(5) << 20) == size_t(6) << 20);

  BlockCache cache;
  int a = 0, b = 0, c = 0;  // stand-ins for device pointers
  CHECK(cache.take(512).first == nullptr);
  cache.put(&a, 4096);
  cache.put(&b, 1024);
  cache.put(&c, 1024);
  CHECK(cache.cached_bytes() == 6144);
  // The smallest block that fits; a block more than twice the request is not handed out.
  const auto first = cache.take(1024);
  CHECK(first.second == 1024);
  CHECK((first.first == &b || first.first == &c));
  CHECK(cache.take(1536).first == nullptr);
  CHECK(cache.take(512).first != nullptr);  // the other 1024-byte block
  CHECK(cache.take(512).first == nullptr);  // 4096 is too big for 512
  CHECK(cache.take(2048).first == &a);
  CHECK(cache.cached_bytes() == 0);
  cache.put(&a, 4096);
  cache.put(&b, 512);
  const auto drained = cache.drain();
  CHECK(drained.size() == 2);
  CHECK(cache.cached_bytes() == 0);
  CHECK(cache.take(512).first == nullptr);
}

TEST_CASE("FP8 scale layouts are cuBLASLt's") {
  // Groups: [ceil(K/128)][rows], rows fastest.
  CHECK(fp8_scale_count(Fp8Scaling::Groups, 4, 300) == 12);
  CHECK(fp8_scale_index(Fp8Scaling::Groups, 4, 300, 1, 0) == 1);
  CHECK(fp8_scale_index(Fp8Scaling::Groups, 4, 300, 1, 129) == 5);
  CHECK(fp8_scale_index(Fp8Scaling::Groups, 4, 300, 3, 299) == 11);
  // Blocks: [ceil(rows/128)][round_up(ceil(K/128), 4)], K fastest; V3's kv_a_proj [576, 7168] has 5 x 56.
  CHECK(fp8_block_scale_stride(7168) == 56);
  CHECK(fp8_block_scale_stride(512) == 4);
  CHECK(fp8_block_scale_stride(640) == 8);
  CHECK(fp8_scale_count(Fp8Scaling::Blocks, 576, 7168) == 5 * 56);
  CHECK(fp8_scale_count(Fp8Scaling::Blocks, 300, 640) == 3 * 8);
  CHECK(fp8_scale_index(Fp8Scaling::Blocks, 300, 640, 299, 639) == 2 * 8 + 4);
}

TEST_CASE("CPU quantisation scales convert to the GPU layouts and back") {
  // A weight [300, 640] (3 x 5 blocks, the last row block partial) and its weight_scale_inv.
  std::vector<float> w(static_cast<size_t>(300 * 640));
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(i % 97) - 48.0f + float(i / 640 / 128);
  const quant::QuantizedWeight q = quant::quantize_weight(Tensor::from_f32(w, {300, 640}));
  const float* s = q.scale_inv.data<float>();
  const std::vector<float> gpu = fp8_scales_to_gpu(Fp8Scaling::Blocks, s, 300, 640);
  REQUIRE(gpu.size() == 24);
  for (int64_t r = 0; r < 300; r += 37)
    for (int64_t k = 0; k < 640; k += 53)
      CHECK(gpu[size_t(fp8_scale_index(Fp8Scaling::Blocks, 300, 640, r, k))] == s[r / 128 * 5 + k / 128]);
  CHECK(gpu[5] == 0.0f);  // padding
  CHECK(fp8_scales_from_gpu(Fp8Scaling::Blocks, gpu.data(), 300, 640) ==
        std::vector<float>(s, s + q.scale_inv.numel()));

  // Activations [5, 300]: scales [5, 3] on the CPU.
  std::vector<float> x(static_cast<size_t>(5 * 300));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 13) * 0.25f - float(i / 300);
  const quant::QuantizedActivations a = quant::quantize_activations(Tensor::from_f32(x, {5, 300}));
  const float* as = a.scales.data<float>();
  const std::vector<float> ga = fp8_scales_to_gpu(Fp8Scaling::Groups, as, 5, 300);
  REQUIRE(ga.size() == 15);
  for (int64_t r = 0; r < 5; ++r)
    for (int64_t t = 0; t < 3; ++t) CHECK(ga[size_t(t * 5 + r)] == as[r * 3 + t]);
  CHECK(fp8_scales_from_gpu(Fp8Scaling::Groups, ga.data(), 5, 300) == std::vector<float>(as, as + 15));
}
