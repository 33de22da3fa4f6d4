// Data- and expert-parallel training against one process. The tests hold for any number of ranks R (dividing 4):
// ds-unit runs them as one process, tests/e2e/mpi_comm.sh under `mpirun -np 2`, where they compare R ranks on a
// global batch with one process on the same batch.
//
// Tolerances: ranks sum gradients in a different order than one process does, so results agree to float rounding,
// amplified by AdamW (its update m / sqrt(v) has magnitude ~lr whatever the gradient's size). After 4 steps at
// lr 1e-3 every weight is within 2e-4 of the 1-rank run (measured: 4e-6); forward losses within 1e-5 relative,
// gradients within 1e-5 of their largest magnitude.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "ds/checkpoint.h"
#include "ds/comm.h"
#include "ds/config.h"
#include "ds/model.h"
#include "ds/pretrain.h"
#include "temp_dir.h"

using namespace ds;

namespace {

// A directory every rank sees: rank 0 makes it and tells the others; it is removed after all ranks are done.
struct SharedDir {
  dist::Comm& comm;
  std::unique_ptr<TempDir> owned;
  std::string path;
  explicit SharedDir(dist::Comm& c) : comm(c) {
    if (comm.rank() == 0) owned = std::make_unique<TempDir>(), path = owned->path.string();
    std::vector<char> bytes(4096, 0);
    std::copy(path.begin(), path.end(), bytes.begin());
    comm.broadcast(bytes.data(), int64_t(bytes.size()), 0);
    path = bytes.data();
  }
  ~SharedDir() { comm.barrier(); }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

PretrainOptions tiny_run(const std::string& dir, dist::Comm* comm) {
  PretrainOptions o;
  o.run_dir = dir, o.model_config = "tiny", o.comm = comm;
  o.batch = 4, o.seq_len = 16, o.steps = 4, o.log_every = 100;
  o.schedule.lr = 1e-3;
  o.loss.balance_alpha = 0.01;
  return o;
}

void train(const PretrainOptions& o) {
  const std::atomic<bool> no_stop{false};
  pretrain(o, no_stop, {});
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - double(b[i])));
  return d;
}

double weight_diff(const std::string& run_a, const std::string& run_b) {
  return max_diff(load_model_dir(run_a).model.params(), load_model_dir(run_b).model.params());
}

}  // namespace

TEST_CASE("data-parallel pretraining follows one process on the same global batch") {
  auto comm = dist::make_comm({.timeout_s = 120});
  SharedDir dir(*comm);
  if (comm->rank() == 0) train(tiny_run(dir / "single", nullptr));

  // Data parallel with ZeRO-1.
  train(tiny_run(dir / "dp", comm.get()));
  if (comm->rank() == 0) CHECK(weight_diff(dir / "dp", dir / "single") < 2e-4);

  // The same with the experts split over all ranks.
  PretrainOptions ep = tiny_run(dir / "ep", comm.get());
  ep.expert_parallel = comm->size();
  train(ep);
  if (comm->rank() == 0) CHECK(weight_diff(dir / "ep", dir / "single") < 2e-4);

  // Resume on another number of ranks: R ranks for 2 steps, then one process to 4; one process for 2, R ranks to 4.
  PretrainOptions a = tiny_run(dir / "a", comm.get());
  a.stop_after = 2;
  train(a);
  PretrainOptions b = tiny_run(dir / "b", nullptr);
  b.stop_after = 2;
  if (comm->rank() == 0) {
    train(b);
    a.comm = nullptr, a.resume = true, a.stop_after = 0;
    train(a);
    CHECK(weight_diff(dir / "a", dir / "single") < 2e-4);
  }
  comm->barrier();
  b.comm = comm.get(), b.resume = true, b.stop_after = 0;
  train(b);
  if (comm->rank() == 0) {
    CHECK(weight_diff(dir / "b", dir / "single") < 2e-4);
    const size_t n = load_model_dir(dir / "b").model.params().size();
    const auto [m, v] = read_optimizer_state(resolve_model_dir(dir / "b"), n);
    const auto [m1, v1] = read_optimizer_state(resolve_model_dir(dir / "single"), n);
    CHECK(max_diff(m, m1) < 1e-5);
  }
}

TEST_CASE("expert-parallel forward and backward equal one process") {
  auto comm = dist::make_comm({.timeout_s = 120});
  const int R = comm->size(), rank = comm->rank();
  const ModelConfig config = resolve_model_config("tiny");
  REQUIRE(config.n_routed_experts % R == 0);
  const int64_t B = 4, Tn = 12, local = B / R;
  REQUIRE(B % R == 0);
  std::mt19937 rng(7);
  std::vector<int32_t> inputs(static_cast<size_t>(B * Tn)), targets(static_cast<size_t>(B * Tn));
  for (auto& t : inputs) t = int32_t(rng() % uint32_t(config.vocab_size));
  for (auto& t : targets) t = int32_t(rng() % uint32_t(config.vocab_size));
  const LossOptions loss{.mtp_weight = 0.3, .balance_alpha = 0.01};

  Model<float> one(config);
  one.init_random(3);
  const ForwardStats ref = one.forward(inputs.data(), targets.data(), B, Tn, loss);
  one.zero_grads();
  one.backward();

  Model<float> ep(config);
  ep.init_random(3);
  ep.set_expert_parallel(comm.get());
  const int64_t first = rank * local * Tn;
  const ForwardStats s = ep.forward(inputs.data() + first, targets.data() + first, local, Tn, loss);
  ep.zero_grads();
  ep.backward();

  // Experts this rank does not hold got no gradient here: their rows were computed by their owners.
  const int64_t per_rank = config.n_routed_experts / R;
  for (const ParamInfo& p : ep.param_infos()) {
    const size_t at = p.name.find(".experts.");
    if (at == std::string::npos) continue;
    const int64_t expert = std::stoll(p.name.substr(at + 9));
    if (expert / per_rank == rank) continue;
    const auto* g = ep.grads().data() + p.offset;
    CHECK(std::all_of(g, g + shape_numel(p.shape), [](float x) { return x == 0.0f; }));
  }

  double losses[3] = {s.loss, s.main_loss, s.mtp_loss};
  comm->all_reduce(losses, 3);
  CHECK(losses[0] / R == doctest::Approx(ref.loss).epsilon(1e-5));
  CHECK(losses[1] / R == doctest::Approx(ref.main_loss).epsilon(1e-5));
  CHECK(losses[2] / R == doctest::Approx(ref.mtp_loss).epsilon(1e-5));
  std::vector<float>& g = ep.grads();
  comm->all_reduce(g.data(), int64_t(g.size()));
  for (float& x : g) x /= float(R);
  double largest = 0;
  for (float x : one.grads()) largest = std::max(largest, double(std::abs(x)));
  CHECK(max_diff(g, one.grads()) < 1e-5 * largest);
}

TEST_CASE("gradients reduced in buckets during the backward give the weights of one reduction after it") {
  // Both sum the same values: on up to 2 ranks each sum is one addition, so the weights are bitwise equal; more ranks
  // may add in another order (then the tolerance of the tests above).
  auto comm = dist::make_comm({.timeout_s = 120});
  SharedDir dir(*comm);
  const double tolerance = comm->size() <= 2 ? 0.0 : 2e-4;
  for (const int ep : std::set<int>{1, comm->size()}) {
    INFO("--ep ", ep);
    const std::string name = std::to_string(ep);
    PretrainOptions whole = tiny_run(dir / ("whole" + name), comm.get());
    whole.grad_accum = 2, whole.expert_parallel = ep, whole.bucket_mb = 0;
    PretrainOptions buckets = whole;
    buckets.run_dir = dir / ("buckets" + name);
    buckets.bucket_mb = 0.02;  // about 5k values: tiny's gradients in several buckets
    train(whole);
    train(buckets);
    if (comm->rank() == 0) CHECK(weight_diff(dir / ("buckets" + name), dir / ("whole" + name)) <= tolerance);
  }
}
