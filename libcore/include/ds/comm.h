#pragma once
// Comm: the collectives data-parallel and expert-parallel training need, over one of three backends:
//   single  one process (every collective is a copy or nothing),
//   mpi     host buffers through MPI (OpenMPI, MPICH), launched with mpirun or srun,
//   nccl    device buffers through NCCL; its unique id goes over MPI or, under torchrun-style launchers, over TCP
//           to MASTER_ADDR:MASTER_PORT.
// Every collective has a deadline (CommOptions::timeout_s): a peer that died or hangs makes the others throw
// ds::Error naming the collective instead of waiting forever. After such an error the Comm is unusable and the
// process should exit (the launcher then tears the job down).
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ds::dist {

enum class Scalar { F32, F64, I64 };
template <typename T>
constexpr Scalar scalar_of();
template <>
constexpr Scalar scalar_of<float>() {
  return Scalar::F32;
}
template <>
constexpr Scalar scalar_of<double>() {
  return Scalar::F64;
}
template <>
constexpr Scalar scalar_of<int64_t>() {
  return Scalar::I64;
}
size_t scalar_bytes(Scalar type);

// A nonblocking collective in flight (Comm::ireduce_scatter). Its buffer must stay untouched until it is complete,
// and it must be waited for before its Comm goes away; one destroyed unfinished is abandoned (only after an error,
// when the process is about to exit).
class Request {
 public:
  virtual ~Request() = default;
  // Lets the collective progress without blocking (MPI moves only inside its calls); true once it is complete.
  virtual bool test() = 0;
  // Blocks until it is complete, under the Comm's deadline (a dead peer gives the same timeout error as a blocking
  // collective); the time waited counts in Comm::seconds().
  virtual void wait() = 0;
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "single", "mpi", "nccl"

  // Sum over ranks, in place.
  virtual void all_reduce(void* data, int64_t count, Scalar type) = 0;
  // The same for a few host values (losses, counts) whatever the backend: NCCL, which reduces device memory only,
  // takes them through a device copy.
  virtual void all_reduce_host(std::vector<double>& values) { all_reduce(values.data(), int64_t(values.size())); }
  // root's bytes to every rank.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  // In place over data [sum(counts)]: rank r's part, counts[r] values at offset sum(counts[<r]), goes to all ranks.
  virtual void all_gather(void* data, const std::vector<int64_t>& counts, Scalar type) = 0;
  // In place over data [sum(counts)]: afterwards rank r's part (same layout as all_gather) holds the sum over ranks
  // of that part; the rest of data is unspecified. Counts may be zero.
  void reduce_scatter(void* data, const std::vector<int64_t>& counts, Scalar type) {
    ireduce_scatter(data, counts, type)->wait();
  }
  // The same started in the background: the result is in place once the request is complete. Collectives on one
  // Comm, blocking or not, must start in the same order on every rank.
  virtual std::unique_ptr<Request> ireduce_scatter(void* data, const std::vector<int64_t>& counts, Scalar type) = 0;
  // send holds send_counts[q] values for each rank q in rank order; recv gets recv_counts[q] values from each q.
  virtual void all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                            const std::vector<int64_t>& recv_counts, Scalar type) = 0;
  virtual void barrier() = 0;
  // Ranks with the same color form a new Comm, ordered by key (MPI_Comm_split).
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;

  template <typename T>
  void all_reduce(T* data, int64_t count) {
    all_reduce(data, count, scalar_of<T>());
  }
  template <typename T>
  void all_gather(T* data, const std::vector<int64_t>& counts) {
    all_gather(data, counts, scalar_of<T>());
  }
  template <typename T>
  void reduce_scatter(T* data, const std::vector<int64_t>& counts) {
    reduce_scatter(data, counts, scalar_of<T>());
  }
  template <typename T>
  std::unique_ptr<Request> ireduce_scatter(T* data, const std::vector<int64_t>& counts) {
    return ireduce_scatter(data, counts, scalar_of<T>());
  }
  template <typename T>
  void all_to_all_v(const T* send, const std::vector<int64_t>& send_counts, T* recv,
                    const std::vector<int64_t>& recv_counts) {
    all_to_all_v(send, send_counts, recv, recv_counts, scalar_of<T>());
  }

  // Seconds spent inside collectives and Request::wait since the Comm was made (waiting for slower ranks included).
  double seconds() const { return seconds_; }

 protected:
  double seconds_ = 0;
};

// Where this process sits in the job, from the launcher's environment: Open MPI (OMPI_COMM_WORLD_*), PMI / PMIx
// (MPICH, srun --mpi=pmix), Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) or torchrun (RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without any of them: rank 0 of 1.
struct Launch {
  int rank = 0, size = 1, local_rank = 0;
  std::string launcher = "none";  // "none", "mpi", "slurm", "torchrun"
  std::string master_addr;        // torchrun only
  int master_port = 0;
};
Launch discover_launch();
// The same from an explicit environment lookup (tests).
Launch discover_launch(const std::function<const char*(const char*)>& getenv);

struct CommOptions {
  // auto, single, mpi, nccl. auto: single without a launcher, nccl under torchrun-style variables, else mpi.
  std::string backend = "auto";
  double timeout_s = 300;     // deadline of every collective
  int device = 0;             // nccl: the CUDA device (usually the local rank)
  bool host_buffers = false;  // the caller reduces host memory, so NCCL is refused
};
// Throws ds::Error when the backend is not built in or the launch does not fit it.
std::unique_ptr<Comm> make_comm(const CommOptions& options = {});
// Backends this build has, e.g. "single mpi".
std::string available_backends();

// Expert parallel: the Comm of this rank's group of `ep` consecutive ranks, over which a model's n_experts routed
// experts are split (Model::set_expert_parallel); null when ep is 1. Throws when ep does not divide the ranks or
// the experts.
std::unique_ptr<Comm> expert_parallel_comm(Comm* comm, int ep, int64_t n_experts);

// Contiguous near-equal parts of n values over `parts` ranks (the first n % parts get one more): the counts
// all_gather and reduce_scatter take, and the ZeRO-1 shard of each rank.
std::vector<int64_t> split_evenly(int64_t n, int parts);

}  // namespace ds::dist
