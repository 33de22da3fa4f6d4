// The absorbed MLA decode kernel against the CPU's decode attention over the latent cache (the loop of
// Engine::attention in libcore/src/infer/engine.cpp), at V3's widths and a small one, with sequences of very
// different lengths in one batch.
#include <algorithm>
#include <cmath>

#include "ds/cuda_ops.h"
#include "gpu_test.h"

using namespace ds;
using namespace ds::cuda;
using namespace ds::gpu_test;

namespace {

void check_decode(int64_t H, int64_t r, int64_t dr, const std::vector<int32_t>& lengths) {
  Stream stream;
  const int64_t B = int64_t(lengths.size()), width = r + dr,
                max_len = *std::max_element(lengths.begin(), lengths.end());
  const float scale = 0.135234f;
  const std::vector<float> q = random_floats(static_cast<size_t>(B * H * width), 1, 0.5f);
  const std::vector<float> cache = round_bf16(random_floats(static_cast<size_t>(B * max_len * width), 2));
  std::vector<float> want(static_cast<size_t>(B * H * r), 0.0f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t n = lengths[size_t(b)];
      const float* qh = &q[size_t((b * H + h) * width)];
      std::vector<float> p(static_cast<size_t>(n));
      float mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        const float* kj = &cache[size_t((b * max_len + j) * width)];
        float s = 0;
        for (int64_t e = 0; e < width; ++e) s += qh[e] * kj[e];
        p[size_t(j)] = s * scale;
        mx = std::max(mx, p[size_t(j)]);
      }
      float sum = 0;
      for (float& v : p) sum += (v = std::exp(v - mx));
      float* out = &want[size_t((b * H + h) * r)];
      for (int64_t j = 0; j < n; ++j)
        for (int64_t e = 0; e < r; ++e) out[e] += p[size_t(j)] / sum * cache[size_t((b * max_len + j) * width + e)];
    }
  const DeviceBuffer<float> gq = to_device(q, stream);
  const DeviceBuffer<__nv_bfloat16> gcache = to_device(to_bf16(cache), stream);
  const DeviceBuffer<int32_t> glen = to_device(lengths, stream);
  DeviceBuffer<float> gout(static_cast<size_t>(B * H * r));
  mla_decode(gout.data(), gq.data(), gcache.data(), glen.data(), B, H, max_len, r, dr, scale, stream);
  check_close(to_host(gout, stream), want, 1e-4, 1e-5);
}

}  // namespace

TEST_CASE("MLA decode at V3's widths (512 latent + 64 rope), 20 heads, lengths 1 to 1500") {
  check_decode(20, 512, 64, {1, 100, 1500, 64, 65});
}

TEST_CASE("MLA decode at small widths (64 + 32), one head") { check_decode(1, 64, 32, {7, 300}); }

TEST_CASE("MLA decode refuses widths the kernel does not hold") {
  Stream stream;
  CHECK_THROWS(mla_decode(nullptr, nullptr, nullptr, nullptr, 1, 1, 1, 600, 64, 1.0f, stream));
  CHECK_THROWS(mla_decode(nullptr, nullptr, nullptr, nullptr, 1, 1, 1, 100, 64, 1.0f, stream));
}
