// Norms, RoPE, SwiGLU, cross-entropy and AdamW kernels against the CPU ops (ds/ops.h, ds::AdamW).
#include "ds/ops.h"

#include <cmath>
#include <cstring>

#include "cuda_ops.h"
#include "ds/model.h"
#include "ds/optim.h"
#include "gpu_test.h"

using namespace ds;
using namespace ds::cuda;
using namespace ds::gpu_test;

TEST_CASE("f32 <-> bf16 casts round as ds/bf16.h") {
  Stream stream;
  std::vector<float> x = random_floats(10000, 20, 100.0f);
  x[0] = 0.0f, x[1] = -0.0f, x[2] = 1e-40f, x[3] = 3.0e38f, x[4] = 1.00390625f;  // zero, subnormal, huge, a tie
  const DeviceBuffer<float> gx = to_device(x, stream);
  DeviceBuffer<__nv_bfloat16> gb(x.size());
  DeviceBuffer<float> back(x.size());
  cast_f32_to_bf16(gb.data(), gx.data(), int64_t(x.size()), stream);
  cast_bf16_to_f32(back.data(), gb.data(), int64_t(x.size()), stream);
  const std::vector<float> got = to_host(back, stream), want = round_bf16(x);
  size_t differ = 0;
  for (size_t i = 0; i < x.size(); ++i) differ += std::memcmp(&got[i], &want[i], 4) != 0;
  CHECK(differ == 0);
}

TEST_CASE("RMSNorm forward and backward, with a row stride") {
  Stream stream;
  const int64_t N = 37, C = 576, stride = 640;  // normalising the first 576 of 640 values, as kv_a_layernorm
  const std::vector<float> x = random_floats(static_cast<size_t>(N * stride), 1, 2.0f),
                           w = random_floats(static_cast<size_t>(C), 2),
                           dy = random_floats(static_cast<size_t>(N * C), 3);
  std::vector<float> y(static_cast<size_t>(N * C)), rstd(static_cast<size_t>(N)), dx(x.size(), 0.5f),
      dw(static_cast<size_t>(C), 0.25f);
  ops::rmsnorm(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6, stride);
  const DeviceBuffer<float> dx_in = to_device(x, stream), dw_in = to_device(w, stream), ddy = to_device(dy, stream);
  DeviceBuffer<float> dy_out(static_cast<size_t>(N * C)), drstd(static_cast<size_t>(N));
  rmsnorm(dy_out.data(), drstd.data(), dx_in.data(), dw_in.data(), N, C, 1e-6f, stride, stream);
  check_close(to_host(dy_out, stream), y, 1e-5, 1e-6);
  check_close(to_host(drstd, stream), rstd, 1e-5);

  DeviceBuffer<float> gdx = to_device(dx, stream), gdw = to_device(dw, stream);  // backward adds into these
  ops::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C, stride);
  rmsnorm_backward(gdx.data(), gdw.data(), ddy.data(), dx_in.data(), dw_in.data(), drstd.data(), N, C, stride, stream);
  check_close(to_host(gdx, stream), dx, 1e-4, 1e-5);
  check_close(to_host(gdw, stream), dw, 1e-4, 1e-5);
}

TEST_CASE("RMSNorm's weight gradient sums over many row chunks") {
  Stream stream;
  const int64_t N = 1000, C = 300;
  const std::vector<float> x = random_floats(static_cast<size_t>(N * C), 4),
                           w = random_floats(static_cast<size_t>(C), 5),
                           dy = random_floats(static_cast<size_t>(N * C), 6);
  std::vector<float> y(x.size()), rstd(static_cast<size_t>(N)), dx(x.size(), 0.0f), dw(static_cast<size_t>(C), 0.0f);
  ops::rmsnorm(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6, 0);
  ops::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C, 0);
  const DeviceBuffer<float> gx = to_device(x, stream), gw = to_device(w, stream), gdy = to_device(dy, stream),
                            grstd = to_device(rstd, stream);
  DeviceBuffer<float> gdx = to_device(std::vector<float>(x.size(), 0.0f), stream),
                      gdw = to_device(std::vector<float>(static_cast<size_t>(C), 0.0f), stream);
  rmsnorm_backward(gdx.data(), gdw.data(), gdy.data(), gx.data(), gw.data(), grstd.data(), N, C, 0, stream);
  check_close(to_host(gdw, stream), dw, 1e-4, 1e-4);
}

TEST_CASE("YaRN RoPE forward and inverse on interleaved pairs") {
  Stream stream;
  // V3's YaRN (factor 40 over 4096 original positions) on 64 rope dims of 3 heads in rows of 3 x 192.
  const ops::RopeTable table = ops::rope_table(64, 512, 10000.0, true, 40.0, 4096, 32.0, 1.0, 1.0);
  const RopeTable gtable = upload_rope_table(table, stream);
  const int64_t N = 50, H = 3, dq = 192, dn = 128;
  std::vector<float> q = random_floats(static_cast<size_t>(N * H * dq), 7);
  std::vector<int32_t> pos(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) pos[size_t(n)] = int32_t((n * 37) % 512);
  const DeviceBuffer<int32_t> gpos = to_device(pos, stream);
  for (const bool inverse : {false, true}) {
    CAPTURE(inverse);
    DeviceBuffer<float> gq = to_device(q, stream);
    std::vector<float> want = q;
    ops::rope(want.data() + dn, pos.data(), N, H, H * dq, dq, table, inverse);
    rope(gq.data() + dn, gpos.data(), N, H, H * dq, dq, gtable, inverse, stream);
    check_close(to_host(gq, stream), want, 1e-5, 1e-6);
  }
}

TEST_CASE("SwiGLU forward and backward") {
  Stream stream;
  const int64_t n = 10000;
  const std::vector<float> g = random_floats(static_cast<size_t>(n), 8, 3.0f),
                           u = random_floats(static_cast<size_t>(n), 9), da = random_floats(static_cast<size_t>(n), 10);
  std::vector<float> a(static_cast<size_t>(n)), dg(static_cast<size_t>(n), 0.5f), du(static_cast<size_t>(n), -0.5f);
  ops::swiglu(a.data(), g.data(), u.data(), n);
  ops::swiglu_backward(dg.data(), du.data(), da.data(), g.data(), u.data(), n);
  const DeviceBuffer<float> gg = to_device(g, stream), gu = to_device(u, stream), gda = to_device(da, stream);
  DeviceBuffer<float> ga(static_cast<size_t>(n)),
      gdg = to_device(std::vector<float>(static_cast<size_t>(n), 0.5f), stream),
      gdu = to_device(std::vector<float>(static_cast<size_t>(n), -0.5f), stream);
  swiglu(ga.data(), gg.data(), gu.data(), n, stream);
  swiglu_backward(gdg.data(), gdu.data(), gda.data(), gg.data(), gu.data(), n, stream);
  check_close(to_host(ga, stream), a, 1e-5, 1e-6);
  check_close(to_host(gdg, stream), dg, 1e-5, 1e-6);
  check_close(to_host(gdu, stream), du, 1e-5, 1e-6);
}

TEST_CASE(
    "cross-entropy losses, entropies and gradients at a temperature, in place, with ignored rows and row "
    "scales") {
  Stream stream;
  const int64_t N = 9, V = 5000;
  const std::vector<float> logits = random_floats(static_cast<size_t>(N * V), 11, 4.0f),
                           row_scale = random_floats(static_cast<size_t>(N), 12);
  std::vector<int32_t> targets = {3, -1, 4999, 0, 17, -1, 2500, 1, 4000};
  for (const float temperature : {1.0f, 0.7f}) {
    CAPTURE(temperature);
    // The CPU's: the logits divided by the temperature, and the chain rule's 1/temperature in the backward's scale.
    std::vector<float> losses(static_cast<size_t>(N)), entropies(static_cast<size_t>(N)), probs = logits,
                                                                                          dlogits(logits.size());
    for (float& z : probs) z /= temperature;
    for (int64_t n = 0; n < N; ++n) {
      losses[size_t(n)] = float(ops::cross_entropy(probs.data() + n * V, &targets[size_t(n)], 1, V));
      double h = 0;
      for (int64_t v = 0; v < V; ++v) {
        const double p = double(probs[size_t(n * V + v)]);
        h -= p * std::log(p);
      }
      entropies[size_t(n)] = float(h);
    }
    ops::cross_entropy_backward(dlogits.data(), probs.data(), targets.data(), N, V, 0.125 / temperature,
                                row_scale.data());

    const DeviceBuffer<int32_t> gt = to_device(targets, stream);
    const DeviceBuffer<float> grs = to_device(row_scale, stream);
    DeviceBuffer<float> gl = to_device(logits, stream), glosses(static_cast<size_t>(N)),
                        gentropies(static_cast<size_t>(N));
    cross_entropy(glosses.data(), nullptr, nullptr, gl.data(), gt.data(), N, V, 1.0f / temperature, 0.125f, grs.data(),
                  stream);  // loss only
    check_close(to_host(glosses, stream), losses, 1e-5, 1e-5);
    check_close(to_host(gl, stream), logits, 0);  // untouched
    cross_entropy(glosses.data(), gentropies.data(), gl.data(), gl.data(), gt.data(), N, V, 1.0f / temperature, 0.125f,
                  grs.data(), stream);
    check_close(to_host(glosses, stream), losses, 1e-5, 1e-5);
    check_close(to_host(gentropies, stream), entropies, 1e-5, 1e-5);
    check_close(to_host(gl, stream), dlogits, 1e-4, 1e-9);
  }
}

TEST_CASE("AdamW steps match ds::AdamW") {
  Stream stream;
  const int64_t n = 5000;
  const std::vector<ParamInfo> infos = {{"w", {n}, 0, ParamKind::Matrix}};
  const AdamWOptions options{0.9, 0.95, 1e-8, 0.1};
  AdamW cpu(infos, n, options);
  std::vector<float> params = random_floats(static_cast<size_t>(n), 13);
  DeviceBuffer<float> gp = to_device(params, stream),
                      gm = to_device(std::vector<float>(static_cast<size_t>(n), 0.0f), stream),
                      gv = to_device(std::vector<float>(static_cast<size_t>(n), 0.0f), stream);
  for (int t = 1; t <= 3; ++t) {
    const std::vector<float> grads = random_floats(static_cast<size_t>(n), 100 + uint64_t(t), 0.01f);
    const double lr = 1e-3 * t;
    cpu.step(params, grads, lr);
    const DeviceBuffer<float> gg = to_device(grads, stream);
    AdamWStep step;
    step.lr = float(lr);
    step.beta1 = float(options.beta1);
    step.beta2 = float(options.beta2);
    step.eps = float(options.eps);
    step.decay = float(lr * options.weight_decay);
    step.bc1 = float(1 - std::pow(options.beta1, t));
    step.bc2 = float(1 - std::pow(options.beta2, t));
    adamw(gp.data(), gg.data(), gm.data(), gv.data(), n, step, stream);
  }
  check_close(to_host(gp, stream), params, 1e-5, 1e-6);
  check_close(to_host(gm, stream), cpu.m(), 1e-5, 1e-9);
  check_close(to_host(gv, stream), cpu.v(), 1e-5, 1e-12);
}
