// The absorbed MLA decode kernel against the CPU's attention over the latent cache (the loop of the CPU engine in
// libcore/src/infer/engine.cpp), at V3's widths and small ones that are not multiples of 32, with query rows of very
// different lengths in one batch, reading cache slots in any order (prefill: several rows of one slot), and the cache
// writes. The kernel rounds q and the softmax probabilities to bf16 for the tensor cores. The reference takes the same
// q; rounding a probability p_j moves an output by at most 2^-9 p_j |v_j| / sum p, so each output gets twice that sum
// as its tolerance, while a wrong key, head or dim would be off by about a value.
#include <algorithm>
#include <cmath>

#include "cuda_ops.h"
#include "gpu_test.h"

using namespace ds;
using namespace ds::cuda;
using namespace ds::gpu_test;

namespace {

// Query row b reads slots[b] (empty: slot b) up to lengths[b]; the cache has `slot_count` slots.
void check_decode(int64_t H, int64_t r, int64_t dr, const std::vector<int32_t>& lengths,
                  const std::vector<int32_t>& slots = {}, int64_t slot_count = 0) {
  Stream stream;
  const int64_t B = int64_t(lengths.size()), width = r + dr, S = slots.empty() ? B : slot_count,
                capacity = *std::max_element(lengths.begin(), lengths.end()) + 3;
  const float scale = 0.135234f;
  const std::vector<float> q = round_bf16(random_floats(static_cast<size_t>(B * H * width), 1, 0.5f));
  const std::vector<float> cache = round_bf16(random_floats(static_cast<size_t>(S * capacity * width), 2));
  std::vector<float> want(static_cast<size_t>(B * H * r), 0.0f), tolerance(want.size(), 1e-5f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t n = lengths[size_t(b)], slot = slots.empty() ? b : slots[size_t(b)];
      const float* qh = &q[size_t((b * H + h) * width)];
      std::vector<float> p(static_cast<size_t>(n));
      float mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        const float* kj = &cache[size_t((slot * capacity + j) * width)];
        float s = 0;
        for (int64_t e = 0; e < width; ++e) s += qh[e] * kj[e];
        p[size_t(j)] = s * scale;
        mx = std::max(mx, p[size_t(j)]);
      }
      float sum = 0;
      for (float& v : p) sum += (v = std::exp(v - mx));
      float* out = &want[size_t((b * H + h) * r)];
      float* tol = &tolerance[size_t((b * H + h) * r)];
      for (int64_t j = 0; j < n; ++j)
        for (int64_t e = 0; e < r; ++e) {
          const float v = cache[size_t((slot * capacity + j) * width + e)];
          out[e] += p[size_t(j)] / sum * v;
          tol[e] += std::ldexp(p[size_t(j)] / sum * std::fabs(v), -8);
        }
    }
  const DeviceBuffer<float> gq = to_device(q, stream);
  const DeviceBuffer<__nv_bfloat16> gcache = to_device(to_bf16(cache), stream);
  const DeviceBuffer<int32_t> glen = to_device(lengths, stream);
  const DeviceBuffer<int32_t> gslots = to_device(slots, stream);
  DeviceBuffer<float> gout(static_cast<size_t>(B * H * r));
  mla_decode(gout.data(), gq.data(), gcache.data(), slots.empty() ? nullptr : gslots.data(), glen.data(), B, H,
             capacity, r, dr, scale, stream);
  const std::vector<float> got = to_host(gout, stream);
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(got[i] - want[i]) <= tolerance[i]) && bad++ < 5)
      FAIL_CHECK("index " << i << ": got " << got[i] << ", want " << want[i] << " +- " << tolerance[i]);
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("MLA decode at V3's widths (512 latent + 64 rope), 20, 80 and 128 heads, lengths 1 to 1500") {
  check_decode(20, 512, 64, {1, 100, 1500, 64, 65});
  check_decode(128, 512, 64, {33, 700});
  check_decode(80, 512, 64, {40});  // a second block of 64 heads, 16 of them real
}

TEST_CASE("MLA decode at the small config's widths (256 + 32), 16 heads") { check_decode(16, 256, 32, {31, 32, 500}); }

TEST_CASE("MLA decode at small widths (64 + 32), one head") { check_decode(1, 64, 32, {7, 300}); }

TEST_CASE("MLA decode at widths that are not multiples of 32: the demo's 64 + 16 and tiny's 16 + 4") {
  check_decode(4, 64, 16, {5, 77, 130});
  check_decode(2, 16, 4, {1, 2, 3});
}

TEST_CASE("MLA prefill: rows of one slot with rising lengths, slots read in any order") {
  check_decode(3, 64, 16, {1, 2, 3, 4, 9, 1, 2}, {2, 2, 2, 2, 0, 1, 1}, 3);
}

TEST_CASE("MLA cache writes: rows land in their slot and position as bf16, the rest untouched") {
  Stream stream;
  const int64_t r = 16, dr = 4, width = r + dr, capacity = 5, slots_n = 3, R = 3, stride = 7;
  const std::vector<float> latent = random_floats(size_t(R * r), 3), k_pe = random_floats(size_t(R * stride), 4);
  const std::vector<int32_t> slots = {2, 0, 2}, pos = {0, 4, 1};
  std::vector<float> want(size_t(slots_n * capacity * width), 0.5f);
  DeviceBuffer<__nv_bfloat16> cache = to_device(to_bf16(want), stream);
  for (int64_t i = 0; i < R; ++i)
    for (int64_t e = 0; e < width; ++e)
      want[size_t((slots[size_t(i)] * capacity + pos[size_t(i)]) * width + e)] =
          e < r ? latent[size_t(i * r + e)] : k_pe[size_t(i * stride + e - r)];
  const DeviceBuffer<float> glatent = to_device(latent, stream), gk_pe = to_device(k_pe, stream);
  const DeviceBuffer<int32_t> gslots = to_device(slots, stream), gpos = to_device(pos, stream);
  mla_cache_write(cache.data(), capacity, glatent.data(), gk_pe.data(), stride, gslots.data(), gpos.data(), R, r, dr,
                  stream);
  check_close(from_bf16(to_host(cache, stream)), round_bf16(want), 0);
}

TEST_CASE("MLA decode refuses widths the kernel does not hold") {
  Stream stream;
  CHECK_THROWS(mla_decode(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 1, 600, 64, 1.0f, stream));
  CHECK_THROWS(mla_decode(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 1, 0, 64, 1.0f, stream));
}
