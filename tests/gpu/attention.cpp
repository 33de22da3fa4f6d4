// The causal attention kernels against ops::attention and ops::attention_backward, at MLA's expanded head widths
// and at small widths that do not fill a warp, with one document per sequence or several packed into each, over more
// than one block of 64 rows; the backward repeats bit for bit.
#include <algorithm>
#include <cmath>

#include "cuda_ops.h"
#include "ds/ops.h"
#include "gpu_test.h"

using namespace ds;
using namespace ds::cuda;
using namespace ds::gpu_test;

namespace {

// Positions of packed documents: sequence b restarts at 0 every T / (b + 2) tokens (the last sequence: once).
std::vector<int32_t> packed_positions(int64_t B, int64_t T) {
  std::vector<int32_t> pos;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t length = std::max<int64_t>(1, T / (b + 2));
    for (int64_t t = 0; t < T; ++t) pos.push_back(int32_t(t % length));
  }
  return pos;
}

// Every |got - want| within `share` of the spread (root mean square about the mean) of want. The kernels round the
// probabilities and dS to bf16 for the tensor cores; the inputs are bf16 already. That leaves errors of a few per mille
// of the spread, with the worst of 10^5 outputs near 3%, while a key missed or taken wrongly moves outputs by more than
// the spread.
void check_close_to_spread(const std::vector<float>& got, const std::vector<float>& want, double share) {
  REQUIRE(got.size() == want.size());
  double mean = 0, spread = 0;
  for (float w : want) mean += w;
  mean /= double(want.size());
  for (float w : want) spread += (w - mean) * (w - mean);
  spread = std::sqrt(spread / double(want.size()));
  check_close(got, want, 0, share * spread);
}

void check_attention(int64_t B, int64_t T, int64_t H, int64_t dk, int64_t dv, bool packed = false) {
  Stream stream;
  const float scale = 1.0f / std::sqrt(float(dk));
  const size_t nq = static_cast<size_t>(B * T * H * dk), nv = static_cast<size_t>(B * T * H * dv);
  const std::vector<float> q = round_bf16(random_floats(nq, 1)), k = round_bf16(random_floats(nq, 2)),
                           v = round_bf16(random_floats(nv, 3)), dout = round_bf16(random_floats(nv, 4));
  std::vector<float> o(nv), p(static_cast<size_t>(B * H * T * T)), dq(nq, 0.5f), dk_(nq, -0.5f), dv_(nv, 0.25f);
  const std::vector<int32_t> pos = packed ? packed_positions(B, T) : std::vector<int32_t>();
  ops::attention(o.data(), p.data(), q.data(), k.data(), v.data(), B, T, H, dk, dv, scale,
                 packed ? pos.data() : nullptr);
  ops::attention_backward(dq.data(), dk_.data(), dv_.data(), dout.data(), q.data(), k.data(), v.data(), p.data(), B, T,
                          H, dk, dv, scale);

  const DeviceBuffer<float> gq = to_device(q, stream), gk = to_device(k, stream), gv = to_device(v, stream),
                            gdout = to_device(dout, stream);
  const DeviceBuffer<int32_t> gpos = to_device(pos, stream);
  const int32_t* device_pos = packed ? gpos.data() : nullptr;
  DeviceBuffer<float> go(nv), glse(static_cast<size_t>(B * H * T));
  attention(go.data(), glse.data(), gq.data(), gk.data(), gv.data(), device_pos, B, T, H, dk, dv, scale, stream);
  check_close_to_spread(to_host(go, stream), o, 0.06);

  DeviceBuffer<float> gdq = to_device(std::vector<float>(nq, 0.5f), stream),
                      gdk = to_device(std::vector<float>(nq, -0.5f), stream),
                      gdv = to_device(std::vector<float>(nv, 0.25f), stream);
  attention_backward(gdq.data(), gdk.data(), gdv.data(), gdout.data(), gq.data(), gk.data(), gv.data(), go.data(),
                     glse.data(), device_pos, B, T, H, dk, dv, scale, stream);
  const std::vector<float> got_dq = to_host(gdq, stream), got_dk = to_host(gdk, stream), got_dv = to_host(gdv, stream);
  check_close_to_spread(got_dq, dq, 0.06);
  check_close_to_spread(got_dk, dk_, 0.06);
  check_close_to_spread(got_dv, dv_, 0.06);

  // Each gradient element is summed by one thread in a fixed order: a second run gives the same bits.
  gdq = to_device(std::vector<float>(nq, 0.5f), stream);
  gdk = to_device(std::vector<float>(nq, -0.5f), stream);
  gdv = to_device(std::vector<float>(nv, 0.25f), stream);
  attention_backward(gdq.data(), gdk.data(), gdv.data(), gdout.data(), gq.data(), gk.data(), gv.data(), go.data(),
                     glse.data(), device_pos, B, T, H, dk, dv, scale, stream);
  CHECK(to_host(gdq, stream) == got_dq);
  CHECK(to_host(gdk, stream) == got_dk);
  CHECK(to_host(gdv, stream) == got_dv);
}

}  // namespace

TEST_CASE("causal attention at MLA's widths (192 q/k, 128 v)") { check_attention(2, 70, 4, 192, 128); }
TEST_CASE("causal attention at small widths, and at odd ones") {
  check_attention(3, 17, 2, 24, 40);
  check_attention(2, 70, 2, 13, 7);
}
TEST_CASE("attention over packed documents") { check_attention(3, 40, 2, 192, 128, true); }
TEST_CASE("packed documents across blocks of 64 rows, at the small config's widths (96 q/k, 64 v)") {
  check_attention(2, 200, 2, 96, 64, true);
}
TEST_CASE("the largest head dims (256)") { check_attention(1, 80, 1, 256, 256); }
