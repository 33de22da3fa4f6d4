// Distillation losses against hand-computed values, and their gradients against central finite differences.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "ds/error.h"
#include "ds/kd.h"

using namespace ds;

namespace {

// Logits whose softmax at temperature tau is exactly the distribution p.
std::vector<double> logits_of(const std::vector<double>& p, double tau = 1.0) {
  std::vector<double> z;
  for (double x : p) z.push_back(tau * std::log(x));
  return z;
}

double div(const std::vector<double>& q, const std::vector<double>& p, kd::Options o) {
  const std::vector<double> zs = logits_of(q, o.temperature), zt = logits_of(p, o.temperature);
  return kd::divergence(zs.data(), zt.data(), int64_t(zs.size()), o, static_cast<double*>(nullptr), 1.0);
}

kd::Options opts(kd::Divergence d, double tau = 1.0, int64_t top_k = 0, double beta = 0.5) {
  kd::Options o;
  o.divergence = d, o.temperature = tau, o.top_k = top_k, o.beta = beta;
  return o;
}

const std::vector<double> P = {0.5, 0.25, 0.25}, Q = {0.125, 0.125, 0.75};  // teacher, student
const double ln2 = std::log(2.0), ln3 = std::log(3.0);

}  // namespace

TEST_CASE("forward KL, reverse KL and JSD equal their hand-computed values") {
  using D = kd::Divergence;
  // KL(P||Q) = 0.5 ln 4 + 0.25 ln 2 + 0.25 ln(1/3); KL(Q||P) = 0.125 ln(1/4) + 0.125 ln(1/2) + 0.75 ln 3.
  const double forward = 1.25 * ln2 - 0.25 * ln3, reverse = -0.375 * ln2 + 0.75 * ln3;
  // M = (0.3125, 0.1875, 0.5).
  const double kl_pm = 0.5 * std::log(1.6) + 0.25 * std::log(4.0 / 3) + 0.25 * std::log(0.5);
  const double kl_qm = 0.125 * std::log(0.4) + 0.125 * std::log(2.0 / 3) + 0.75 * std::log(1.5);
  for (double tau : {1.0, 2.5}) {  // the logits are tau * log p, so the temperature gives back the same P and Q
    CHECK(div(Q, P, opts(D::forward_kl, tau)) == doctest::Approx(forward).epsilon(1e-12));
    CHECK(div(Q, P, opts(D::reverse_kl, tau)) == doctest::Approx(reverse).epsilon(1e-12));
    CHECK(div(Q, P, opts(D::jsd, tau)) == doctest::Approx(0.5 * kl_pm + 0.5 * kl_qm).epsilon(1e-12));
  }
  // beta = 0.25: M = 0.25 P + 0.75 Q = (0.21875, 0.15625, 0.625).
  const double pm = 0.5 * std::log(0.5 / 0.21875) + 0.25 * std::log(0.25 / 0.15625) + 0.25 * std::log(0.25 / 0.625);
  const double qm =
      0.125 * std::log(0.125 / 0.21875) + 0.125 * std::log(0.125 / 0.15625) + 0.75 * std::log(0.75 / 0.625);
  CHECK(div(Q, P, opts(D::jsd, 1.0, 0, 0.25)) == doctest::Approx(0.25 * pm + 0.75 * qm).epsilon(1e-12));
  // The limits: JSD(beta) / beta -> forward KL as beta -> 0, JSD / (1 - beta) -> reverse KL as beta -> 1.
  CHECK(div(Q, P, opts(D::jsd, 1.0, 0, 1e-6)) / 1e-6 == doctest::Approx(forward).epsilon(1e-4));
  CHECK(div(Q, P, opts(D::jsd, 1.0, 0, 1 - 1e-6)) / 1e-6 == doctest::Approx(reverse).epsilon(1e-4));
  CHECK(div(P, P, opts(D::reverse_kl)) == doctest::Approx(0.0));
}

TEST_CASE("a temperature flattens both distributions before comparing them") {
  // Logits log P, log Q at tau = 2 compare sqrt(P) and sqrt(Q), renormalised.
  auto sqrt_norm = [](std::vector<double> p) {
    double s = 0;
    for (double& x : p) s += (x = std::sqrt(x));
    for (double& x : p) x /= s;
    return p;
  };
  const std::vector<double> p2 = sqrt_norm(P), q2 = sqrt_norm(Q);
  double expected = 0;
  for (size_t i = 0; i < 3; ++i) expected += p2[i] * std::log(p2[i] / q2[i]);
  const std::vector<double> zs = logits_of(Q), zt = logits_of(P);
  const double got =
      kd::divergence(zs.data(), zt.data(), 3, opts(kd::Divergence::forward_kl, 2.0), (double*)nullptr, 1);
  CHECK(got == doctest::Approx(expected).epsilon(1e-12));
}

TEST_CASE("top-k keeps the teacher's k most likely tokens and one bucket for the rest") {
  using D = kd::Divergence;
  // k = 1: outcomes {0} and {1, 2}: P = (0.5, 0.5), Q = (0.125, 0.875).
  CHECK(div(Q, P, opts(D::forward_kl, 1.0, 1)) == doctest::Approx(0.5 * std::log(4.0) + 0.5 * std::log(0.5 / 0.875)));
  CHECK(div(Q, P, opts(D::reverse_kl, 1.0, 1)) ==
        doctest::Approx(0.125 * std::log(0.25) + 0.875 * std::log(0.875 / 0.5)));
  // k = 2 with a tie for second place (tokens 1 and 2): the lower id wins, so the outcomes are {0}, {1} and the rest
  // {2}, the full distribution again.
  CHECK(div(Q, P, opts(D::forward_kl, 1.0, 2)) == doctest::Approx(div(Q, P, opts(D::forward_kl))));
  // k = 1 with tied teacher tokens 0 and 1: token 0 is kept, so P = (0.4, 0.6) over {0}, {1, 2}.
  const std::vector<double> tied = {0.4, 0.4, 0.2}, q = {0.2, 0.3, 0.5};
  CHECK(div(q, tied, opts(D::forward_kl, 1.0, 1)) == doctest::Approx(0.4 * std::log(2.0) + 0.6 * std::log(0.6 / 0.8)));
  // k >= V is the full distribution; coarsening never increases the divergence.
  CHECK(div(Q, P, opts(D::jsd, 1.0, 3)) == doctest::Approx(div(Q, P, opts(D::jsd))));
  CHECK(div(Q, P, opts(D::jsd, 1.0, 1)) < div(Q, P, opts(D::jsd)));
}

TEST_CASE("divergence gradients match finite differences (full, top-k, temperature)") {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal(0.0, 2.0);
  const int64_t V = 7;
  for (auto d : {kd::Divergence::forward_kl, kd::Divergence::reverse_kl, kd::Divergence::jsd})
    for (int64_t top_k : {0, 1, 3})
      for (double tau : {1.0, 1.7}) {
        const kd::Options o = opts(d, tau, top_k, 0.3);
        std::vector<double> zs(V), zt(V), grad(V, 0.0);
        for (auto& x : zs) x = normal(rng);
        for (auto& x : zt) x = normal(rng);
        kd::divergence(zs.data(), zt.data(), V, o, grad.data(), 2.0);
        for (int64_t j = 0; j < V; ++j) {
          const double eps = 1e-6, saved = zs[size_t(j)];
          zs[size_t(j)] = saved + eps;
          const double up = kd::divergence(zs.data(), zt.data(), V, o, (double*)nullptr, 1);
          zs[size_t(j)] = saved - eps;
          const double down = kd::divergence(zs.data(), zt.data(), V, o, (double*)nullptr, 1);
          zs[size_t(j)] = saved;
          const double numeric = 2.0 * (up - down) / (2 * eps);
          CHECK_MESSAGE(std::fabs(grad[size_t(j)] - numeric) < 1e-7,
                        "divergence " << int(d) << " top_k " << top_k << " tau " << tau << " logit " << j);
        }
      }
}

TEST_CASE("the distillation objective mixes KD and cross-entropy over the positions with a target") {
  const int64_t N = 3, V = 3;
  // Rows: (Q vs P, target 2), (no target), (P vs P, target 0).
  std::vector<double> student, teacher;
  for (const auto* p : {&Q, &P, &P}) student.insert(student.end(), p->begin(), p->end());
  for (int i = 0; i < 3; ++i) teacher.insert(teacher.end(), P.begin(), P.end());
  for (double& z : student) z = std::log(z);
  for (double& z : teacher) z = std::log(z);
  const std::vector<int32_t> targets = {2, -1, 0};
  std::vector<double> grad(N * V, 9.0);
  const kd::Options o = opts(kd::Divergence::forward_kl);
  const kd::Loss L = kd::distill_loss(student.data(), teacher.data(), targets.data(), N, V, o, 0.25, grad.data());
  CHECK(L.tokens == 2);
  CHECK(L.kd == doctest::Approx((1.25 * ln2 - 0.25 * ln3) / 2));
  CHECK(L.ce == doctest::Approx((-std::log(0.75) - std::log(0.5)) / 2));
  CHECK(L.total == doctest::Approx(0.25 * L.kd + 0.75 * L.ce));
  for (int64_t j = 0; j < V; ++j) CHECK(grad[size_t(V + j)] == 0.0);  // the row without a target
  // Row 0: 0.25 * (Q - P) / 2 + 0.75 * (Q - onehot(2)) / 2.
  CHECK(grad[0] == doctest::Approx(0.125 * (0.125 - 0.5) + 0.375 * 0.125));
  CHECK(grad[2] == doctest::Approx(0.125 * (0.75 - 0.25) + 0.375 * (0.75 - 1)));

  // Gradient of the whole objective by finite differences, top-k JSD at a temperature.
  const kd::Options j = opts(kd::Divergence::jsd, 1.3, 2, 0.7);
  kd::distill_loss(student.data(), teacher.data(), targets.data(), N, V, j, 0.6, grad.data());
  std::vector<double> scratch(N * V);
  for (size_t i = 0; i < student.size(); ++i) {
    const double eps = 1e-6, saved = student[i];
    student[i] = saved + eps;
    const double up =
        kd::distill_loss(student.data(), teacher.data(), targets.data(), N, V, j, 0.6, scratch.data()).total;
    student[i] = saved - eps;
    const double down =
        kd::distill_loss(student.data(), teacher.data(), targets.data(), N, V, j, 0.6, scratch.data()).total;
    student[i] = saved;
    CHECK(grad[i] == doctest::Approx((up - down) / (2 * eps)).epsilon(1e-6));
  }
  // alpha = 0 is plain cross-entropy and needs no teacher.
  const kd::Loss ce =
      kd::distill_loss(student.data(), static_cast<const double*>(nullptr), targets.data(), N, V, o, 0.0, grad.data());
  CHECK(ce.total == doctest::Approx(L.ce));
}

TEST_CASE("bad distillation options are refused") {
  CHECK(kd::parse_divergence("reverse-kl") == kd::Divergence::reverse_kl);
  CHECK_THROWS_AS(kd::parse_divergence("kl"), Error);
  CHECK_THROWS_AS(kd::validate(opts(kd::Divergence::jsd, 1.0, 0, 1.0)), Error);
  CHECK_THROWS_AS(kd::validate(opts(kd::Divergence::forward_kl, 0.0)), Error);
  CHECK_THROWS_AS(kd::validate(opts(kd::Divergence::forward_kl, 1.0, -1)), Error);
}
