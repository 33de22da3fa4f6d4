// Comm: rank discovery from launcher variables, and every collective checked against its definition. The tests hold
// for any number of ranks: ds-unit runs them as one process (single backend) and tests/e2e/mpi_comm.sh under
// `mpirun -np 2` (MPI backend).
#include "ds/comm.h"

#include <doctest/doctest.h>

#include <map>
#include <numeric>

#include "ds/error.h"

using namespace ds::dist;

namespace {
Launch launch_from(std::map<std::string, std::string> env) {
  return discover_launch([&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}
int64_t offset_of(const std::vector<int64_t>& counts, int rank) {
  return std::accumulate(counts.begin(), counts.begin() + rank, int64_t(0));
}
}  // namespace

TEST_CASE("discover_launch reads Open MPI, Slurm and torchrun variables") {
  Launch none = launch_from({});
  CHECK(none.size == 1);
  CHECK(none.rank == 0);
  CHECK(none.launcher == "none");
  Launch ompi = launch_from({{"OMPI_COMM_WORLD_RANK", "3"},
                             {"OMPI_COMM_WORLD_SIZE", "4"},
                             {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                             {"SLURM_NTASKS", "9"}});
  CHECK(ompi.launcher == "mpi");
  CHECK(ompi.rank == 3);
  CHECK(ompi.size == 4);
  CHECK(ompi.local_rank == 1);
  Launch slurm = launch_from({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"}});
  CHECK(slurm.launcher == "slurm");
  CHECK(slurm.rank == 5);
  CHECK(slurm.size == 8);
  Launch torch = launch_from(
      {{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29500"}});
  CHECK(torch.launcher == "torchrun");
  CHECK(torch.master_addr == "node0");
  CHECK(torch.master_port == 29500);
  CHECK_THROWS_AS(launch_from({{"RANK", "1"}, {"WORLD_SIZE", "2"}}), ds::Error);  // no MASTER_ADDR
  CHECK_THROWS_AS(launch_from({{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "2"}}), ds::Error);
  CHECK_THROWS_AS(launch_from({{"SLURM_PROCID", "x"}, {"SLURM_NTASKS", "2"}}), ds::Error);
}

TEST_CASE("split_evenly gives contiguous near-equal parts") {
  CHECK(split_evenly(10, 3) == std::vector<int64_t>{4, 3, 3});
  CHECK(split_evenly(2, 4) == std::vector<int64_t>{1, 1, 0, 0});
  CHECK(split_evenly(6, 1) == std::vector<int64_t>{6});
}

TEST_CASE("make_comm refuses unknown backends, bad timeouts and NCCL for host buffers") {
  CHECK_THROWS_AS(make_comm({.backend = "carrier-pigeon"}), ds::Error);
  CHECK_THROWS_AS(make_comm({.backend = "auto", .timeout_s = 0}), ds::Error);
  CHECK_THROWS_WITH_AS(make_comm({.backend = "nccl", .host_buffers = true}),
                       doctest::Contains("NCCL reduces device buffers"), ds::Error);
}

TEST_CASE("collectives match their definitions on every rank") {
  auto comm = make_comm({.timeout_s = 60});
  const int R = comm->size(), r = comm->rank();
  REQUIRE(r < R);
  INFO("rank ", r, " of ", R, " (", comm->backend(), ")");

  SUBCASE("all_reduce sums floats, doubles and integers, and all_reduce_host host values") {
    std::vector<float> f(1000);
    std::vector<double> d(5);
    std::vector<int64_t> n(3);
    for (size_t i = 0; i < f.size(); ++i) f[i] = float(r + 1) * float(i);
    for (size_t i = 0; i < d.size(); ++i) d[i] = 0.5 * r + double(i);
    for (size_t i = 0; i < n.size(); ++i) n[i] = (int64_t(1) << 40) * r + int64_t(i);
    comm->all_reduce(f.data(), int64_t(f.size()));
    std::vector<double> host = d;
    comm->all_reduce(d.data(), int64_t(d.size()));
    comm->all_reduce_host(host);
    CHECK(host == d);
    comm->all_reduce(n.data(), int64_t(n.size()));
    const double ranks_sum = R * (R + 1) / 2.0;
    for (size_t i = 0; i < f.size(); ++i) CHECK(f[i] == doctest::Approx(ranks_sum * double(i)));
    for (size_t i = 0; i < d.size(); ++i) CHECK(d[i] == 0.5 * (ranks_sum - R) + R * double(i));
    for (size_t i = 0; i < n.size(); ++i) CHECK(n[i] == (int64_t(1) << 40) * int64_t(ranks_sum - R) + R * int64_t(i));
  }
  SUBCASE("broadcast copies the root's bytes") {
    const int root = R - 1;
    std::string text = r == root ? "from the last rank" : "..................";
    comm->broadcast(text.data(), int64_t(text.size()), root);
    CHECK(text == "from the last rank");
  }
  SUBCASE("all_gather and reduce_scatter over uneven parts") {
    const std::vector<int64_t> counts = split_evenly(2 * R + 1, R);
    const int64_t n = 2 * R + 1, mine = offset_of(counts, r);
    std::vector<double> x(static_cast<size_t>(n), -1.0);
    for (int64_t j = 0; j < counts[size_t(r)]; ++j) x[size_t(mine + j)] = 100.0 * r + double(j);
    comm->all_gather(x.data(), counts);
    for (int q = 0; q < R; ++q)
      for (int64_t j = 0; j < counts[size_t(q)]; ++j)
        CHECK(x[size_t(offset_of(counts, q) + j)] == 100.0 * q + double(j));

    std::vector<float> g(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) g[size_t(i)] = float(i + r);
    comm->reduce_scatter(g.data(), counts);
    for (int64_t j = 0; j < counts[size_t(r)]; ++j)
      CHECK(g[size_t(mine + j)] == float(R * (mine + j) + R * (R - 1) / 2));
  }
  SUBCASE("ireduce_scatter equals reduce_scatter, several in flight, zero counts included") {
    // As AdamW's gradient buckets: the array's ZeRO parts, reduced in two pieces started before either is waited
    // for; the first piece lies within rank 0's part, so every other rank has nothing of it.
    const int64_t n = 5 * R + 2;
    const std::vector<int64_t> parts = split_evenly(n, R);
    std::vector<float> whole(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) whole[size_t(i)] = float(i * (r + 1) + 7 * r);
    std::vector<float> pieces = whole;
    comm->reduce_scatter(whole.data(), parts);

    const int64_t cut = parts[0] / 2;
    std::vector<int64_t> low(static_cast<size_t>(R), 0), high = parts;
    low[0] = cut, high[0] -= cut;
    const auto first = comm->ireduce_scatter(pieces.data(), low);
    const auto second = comm->ireduce_scatter(pieces.data() + cut, high);
    first->test();  // either answer is right; it only lets the collectives progress
    second->wait();
    first->wait();
    CHECK(first->test());
    CHECK(second->test());
    const int64_t mine = offset_of(parts, r);
    for (int64_t j = 0; j < parts[size_t(r)]; ++j) CHECK(pieces[size_t(mine + j)] == whole[size_t(mine + j)]);
  }
  SUBCASE("all_to_all_v sends each rank its own count") {
    // Rank r sends q+1 values 1000 r + q to rank q, so it receives r+1 values 1000 q + r from each q.
    std::vector<int64_t> send_counts(static_cast<size_t>(R)), recv_counts(static_cast<size_t>(R), r + 1);
    std::vector<float> send;
    for (int q = 0; q < R; ++q) {
      send_counts[size_t(q)] = q + 1;
      send.insert(send.end(), size_t(q + 1), float(1000 * r + q));
    }
    std::vector<float> recv(size_t(R * (r + 1)), -1.0f);
    comm->all_to_all_v(send.data(), send_counts, recv.data(), recv_counts);
    for (int q = 0; q < R; ++q)
      for (int j = 0; j <= r; ++j) CHECK(recv[size_t(q * (r + 1) + j)] == float(1000 * q + r));
  }
  SUBCASE("split makes groups by color, ordered by key") {
    auto half = comm->split(r % 2, -r);  // reversed order inside each group
    const int members = R / 2 + (r % 2 == 0 ? R % 2 : 0);
    CHECK(half->size() == members);
    CHECK(half->rank() == (members - 1 - r / 2));
    double x = 1;
    half->all_reduce(&x, 1);
    CHECK(x == members);
    half->barrier();
  }
  comm->barrier();
  CHECK(comm->seconds() >= 0);
}
