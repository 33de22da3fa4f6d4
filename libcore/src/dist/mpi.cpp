// The MPI backend: host buffers, nonblocking collectives polled under the deadline (a blocking MPI call would wait
// forever for a peer that died or hangs).
#include <mpi.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "backends.h"
#include "ds/error.h"

namespace ds::dist {

namespace {

// MPI is initialised once per process and finalised at exit, unless a collective timed out: then peers are gone or
// stuck and MPI_Finalize could wait for them, so the process just exits (the launcher tears the job down).
struct MpiRuntime {
  bool broken = false;
  MpiRuntime() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      // Collectives are called from the main thread only; OpenMP threads never touch MPI.
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        fail("MPI_Init_thread failed");
    }
  }
  ~MpiRuntime() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && !broken) MPI_Finalize();
  }
};

MpiRuntime& runtime() {
  static MpiRuntime r;
  return r;
}

MPI_Datatype mpi_type(Scalar type) {
  switch (type) {
    case Scalar::F32:
      return MPI_FLOAT;
    case Scalar::F64:
      return MPI_DOUBLE;
    case Scalar::I64:
      return MPI_INT64_T;
  }
  return MPI_DATATYPE_NULL;
}

int to_int(int64_t n, const char* what) {
  if (n < 0 || n > INT_MAX) fail("MPI {}: {} values do not fit MPI's int counts", what, n);
  return int(n);
}

class MpiComm final : public Comm {
 public:
  MpiComm(MPI_Comm comm, double timeout_s) : comm_(comm), timeout_s_(timeout_s) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiComm() override {
    if (comm_ != MPI_COMM_WORLD && !runtime().broken) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void all_reduce(void* data, int64_t count, Scalar type) override {
    MPI_Request r;
    check(MPI_Iallreduce(MPI_IN_PLACE, data, to_int(count, "all_reduce"), mpi_type(type), MPI_SUM, comm_, &r),
          "all_reduce");
    wait(r, "all_reduce");
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    MPI_Request r;
    check(MPI_Ibcast(data, to_int(bytes, "broadcast"), MPI_BYTE, root, comm_, &r), "broadcast");
    wait(r, "broadcast");
  }
  void all_gather(void* data, const std::vector<int64_t>& counts, Scalar type) override {
    std::vector<int> c, displs;
    layout(counts, c, displs, "all_gather");
    MPI_Request r;
    check(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, c.data(), displs.data(), mpi_type(type), comm_, &r),
          "all_gather");
    wait(r, "all_gather");
  }
  std::unique_ptr<Request> ireduce_scatter(void* data, const std::vector<int64_t>& counts, Scalar type) override {
    auto p = std::make_unique<ReduceScatter>(*this, data, type);
    std::vector<int> displs;
    layout(counts, p->counts, displs, "reduce_scatter");
    p->offset = size_t(displs[size_t(rank_)]);
    check(MPI_Ireduce_scatter(MPI_IN_PLACE, data, p->counts.data(), mpi_type(type), MPI_SUM, comm_, &p->request),
          "reduce_scatter");
    return p;
  }
  void all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                    const std::vector<int64_t>& recv_counts, Scalar type) override {
    std::vector<int> sc, sd, rc, rd;
    layout(send_counts, sc, sd, "all_to_all_v");
    layout(recv_counts, rc, rd, "all_to_all_v");
    MPI_Request r;
    check(MPI_Ialltoallv(send, sc.data(), sd.data(), mpi_type(type), recv, rc.data(), rd.data(), mpi_type(type), comm_,
                         &r),
          "all_to_all_v");
    wait(r, "all_to_all_v");
  }
  void barrier() override {
    MPI_Request r;
    check(MPI_Ibarrier(comm_, &r), "barrier");
    wait(r, "barrier");
  }
  std::unique_ptr<Comm> split(int color, int key) override {
    // MPI_Comm_split has no nonblocking form; a barrier under the deadline first makes sure every peer is there.
    barrier();
    MPI_Comm sub;
    check(MPI_Comm_split(comm_, color, key, &sub), "split");
    return std::make_unique<MpiComm>(sub, timeout_s_);
  }

 private:
  // An MPI_Ireduce_scatter in flight. MPI reads the counts until it completes, so they live here.
  struct ReduceScatter final : Request {
    MpiComm& comm;
    char* data;
    Scalar type;
    std::vector<int> counts;
    size_t offset = 0;  // of this rank's part, in values
    MPI_Request request = MPI_REQUEST_NULL;
    bool done = false;

    ReduceScatter(MpiComm& c, void* d, Scalar t) : comm(c), data(static_cast<char*>(d)), type(t) {}
    bool test() override {
      if (done) return true;
      int flag = 0;
      comm.check(MPI_Test(&request, &flag, MPI_STATUS_IGNORE), "reduce_scatter");
      if (flag) finish();
      return done;
    }
    void wait() override {
      if (done) return;
      comm.wait(request, "reduce_scatter");
      finish();
    }
    // In place, MPI leaves this rank's part at the start of the buffer; move it to its offset.
    void finish() {
      const size_t bytes = scalar_bytes(type);
      std::memmove(data + offset * bytes, data, size_t(counts[size_t(comm.rank_)]) * bytes);
      done = true;
    }
  };

  void check(int code, const char* what) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(code, text, &len);
    fail("MPI {} failed on rank {} of {}: {}", what, rank_, size_, std::string(text, size_t(len)));
  }
  void wait(MPI_Request& request, const char* what) {
    int code = MPI_SUCCESS;
    seconds_ += wait_until(
        [&] {
          int flag = 0;
          code = MPI_Test(&request, &flag, MPI_STATUS_IGNORE);
          return flag != 0 || code != MPI_SUCCESS;
        },
        timeout_s_, fmt::format("MPI {}", what), rank_, size_, [] { runtime().broken = true; });
    check(code, what);
  }
  void layout(const std::vector<int64_t>& counts, std::vector<int>& c, std::vector<int>& displs, const char* what) {
    if (counts.size() != size_t(size_)) fail("MPI {}: {} counts for {} ranks", what, counts.size(), size_);
    c.resize(counts.size()), displs.resize(counts.size());
    int64_t offset = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
      c[i] = to_int(counts[i], what), displs[i] = to_int(offset, what);
      offset += counts[i];
    }
  }

  MPI_Comm comm_;
  double timeout_s_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Comm> make_mpi_comm(const Launch& launch, double timeout_s) {
  runtime();
  auto comm = std::make_unique<MpiComm>(MPI_COMM_WORLD, timeout_s);
  if (comm->size() != launch.size || comm->rank() != launch.rank)
    fail("the {} launch says rank {} of {} but MPI sees rank {} of {} (under srun, pass --mpi=pmix)", launch.launcher,
         launch.rank, launch.size, comm->rank(), comm->size());
  return comm;
}

}  // namespace ds::dist
