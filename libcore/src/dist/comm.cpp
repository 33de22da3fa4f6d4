// The single-process backend, rank discovery, the collective deadline and the backend factory.
#include "ds/comm.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "backends.h"
#include "ds/error.h"

namespace ds::dist {

size_t scalar_bytes(Scalar type) { return type == Scalar::F32 ? 4 : 8; }

std::vector<int64_t> split_evenly(int64_t n, int parts) {
  std::vector<int64_t> counts(static_cast<size_t>(parts), n / parts);
  for (int64_t i = 0; i < n % parts; ++i) ++counts[size_t(i)];
  return counts;
}

namespace {

int env_int(const std::function<const char*(const char*)>& getenv, const char* name, int fallback) {
  const char* v = getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end || x < 0) fail("environment variable {}='{}' is not a non-negative integer", name, v);
  return int(x);
}

// One process: every collective leaves its data as it is (all_to_all_v copies send to recv).
class SingleComm final : public Comm {
  struct Done final : Request {
    bool test() override { return true; }
    void wait() override {}
  };

 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }
  void all_reduce(void*, int64_t, Scalar) override {}
  void broadcast(void*, int64_t, int) override {}
  void all_gather(void*, const std::vector<int64_t>&, Scalar) override {}
  std::unique_ptr<Request> ireduce_scatter(void*, const std::vector<int64_t>&, Scalar) override {
    return std::make_unique<Done>();
  }
  void all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                    const std::vector<int64_t>& recv_counts, Scalar type) override {
    if (send_counts.at(0) != recv_counts.at(0))
      fail("all_to_all_v: one rank sends {} values but receives {}", send_counts[0], recv_counts[0]);
    if (send != recv) std::memmove(recv, send, size_t(send_counts[0]) * scalar_bytes(type));
  }
  void barrier() override {}
  std::unique_ptr<Comm> split(int, int) override { return std::make_unique<SingleComm>(); }
};

}  // namespace

Launch discover_launch(const std::function<const char*(const char*)>& getenv) {
  Launch l;
  auto from = [&](const char* launcher, const char* rank, const char* size, const char* local) {
    if (!getenv(size)) return false;
    l.launcher = launcher;
    l.size = env_int(getenv, size, 1);
    l.rank = env_int(getenv, rank, 0);
    l.local_rank = env_int(getenv, local, 0);
    return true;
  };
  if (!from("mpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK") &&
      !from("mpi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID") &&
      !from("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID") &&
      from("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK")) {
    const char* addr = getenv("MASTER_ADDR");
    l.master_addr = addr ? addr : "";
    l.master_port = env_int(getenv, "MASTER_PORT", 0);
    if (l.size > 1 && (l.master_addr.empty() || l.master_port == 0))
      fail("WORLD_SIZE={} but MASTER_ADDR or MASTER_PORT is not set", l.size);
  }
  if (l.size < 1 || l.rank >= l.size)
    fail("{} launch: rank {} is not below the job size {}", l.launcher, l.rank, l.size);
  return l;
}

Launch discover_launch() {
  return discover_launch([](const char* name) { return std::getenv(name); });
}

double wait_until(const std::function<bool()>& done, double timeout_s, const std::string& what, int rank, int size,
                  const std::function<void()>& on_timeout) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  // Spin briefly (collectives between ranks of one node finish in microseconds), then sleep between polls so a
  // rank that waits for a slower one leaves the cores to it.
  for (int polls = 0; !done(); ++polls) {
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (waited > timeout_s) {
      if (on_timeout) on_timeout();
      fail("{} timed out after {:g} s on rank {} of {}: a peer rank died or stopped responding (--comm-timeout)", what,
           timeout_s, rank, size);
    }
    if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string available_backends() {
  std::string s = "single";
#ifdef DS_HAVE_MPI
  s += " mpi";
#endif
#ifdef DS_HAVE_NCCL
  s += " nccl";
#endif
  return s;
}

std::unique_ptr<Comm> make_comm(const CommOptions& options) {
  if (options.timeout_s <= 0) fail("--comm-timeout must be positive");
  const Launch launch = discover_launch();
  std::string backend = options.backend;
  if (backend == "auto") backend = launch.size == 1 ? "single" : launch.launcher == "torchrun" ? "nccl" : "mpi";
  if (backend == "nccl" && options.host_buffers)
    fail("NCCL reduces device buffers, and this program's are in host memory: launch it with mpirun or srun{}",
         launch.launcher == "torchrun" ? " instead of torchrun-style variables" : "");
  if (backend == "single") {
    if (launch.size > 1)
      fail("launched as rank {} of {} ({}) but the single-process backend was asked for", launch.rank, launch.size,
           launch.launcher);
    return std::make_unique<SingleComm>();
  }
  if (backend == "mpi") {
#ifdef DS_HAVE_MPI
    return make_mpi_comm(launch, options.timeout_s);
#else
    fail("this build has no MPI (backends: {}); install libopenmpi-dev and rebuild", available_backends());
#endif
  }
  if (backend == "nccl") {
#ifdef DS_HAVE_NCCL
    return make_nccl_comm(launch, options);
#else
    fail("this build has no NCCL (backends: {}); it needs the CUDA Toolkit and NCCL", available_backends());
#endif
  }
  fail("unknown communication backend '{}' (auto, single, mpi, nccl)", options.backend);
}

std::unique_ptr<Comm> expert_parallel_comm(Comm* comm, int ep, int64_t n_experts) {
  const int ranks = comm ? comm->size() : 1;
  if (ep < 1 || ranks % ep != 0) fail("--ep {} must divide the number of ranks, {}", ep, ranks);
  if (ep == 1) return nullptr;
  if (n_experts % ep != 0) fail("the model's {} routed experts do not split evenly over --ep {} ranks", n_experts, ep);
  return comm->split(comm->rank() / ep, comm->rank());
}

}  // namespace ds::dist
