// The NCCL backend: device buffers, collectives on one CUDA stream, each waited for under the deadline (the stream
// is polled, and NCCL's asynchronous errors checked; on a timeout the communicator is aborted). The unique id rank 0
// creates reaches the others over MPI (mpirun, srun) or over TCP to MASTER_ADDR:MASTER_PORT (torchrun-style).
#include <arpa/inet.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "backends.h"
#include "ds/error.h"

namespace ds::dist {

namespace {

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA {} failed: {}", what, cudaGetErrorString(e));
}

ncclDataType_t nccl_type(Scalar type) {
  switch (type) {
    case Scalar::F32:
      return ncclFloat32;
    case Scalar::F64:
      return ncclFloat64;
    case Scalar::I64:
      return ncclInt64;
  }
  return ncclFloat32;
}

// A file descriptor closed when it goes out of scope.
struct Socket {
  int fd = -1;
  explicit Socket(int f) : fd(f) {}
  ~Socket() {
    if (fd >= 0) close(fd);
  }
};

void send_all(int fd, const void* data, size_t n) {
  for (size_t done = 0; done < n;) {
    const ssize_t k = send(fd, static_cast<const char*>(data) + done, n - done, MSG_NOSIGNAL);
    if (k <= 0) fail("NCCL bootstrap: sending the unique id failed: {}", std::strerror(errno));
    done += size_t(k);
  }
}

// Rank 0 listens on MASTER_PORT and hands the id to each of the other ranks; they connect to MASTER_ADDR, retrying
// until the deadline (rank 0 may start later than they do).
void tcp_broadcast_id(const Launch& l, ncclUniqueId& id, double timeout_s) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  if (l.rank == 0) {
    Socket server(socket(AF_INET, SOCK_STREAM, 0));
    const int one = 1;
    setsockopt(server.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET, addr.sin_addr.s_addr = htonl(INADDR_ANY), addr.sin_port = htons(uint16_t(l.master_port));
    if (bind(server.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(server.fd, l.size) != 0)
      fail("NCCL bootstrap: cannot listen on port {}: {}", l.master_port, std::strerror(errno));
    for (int peers = 1; peers < l.size; ++peers) {
      timeval tv{static_cast<time_t>(timeout_s), 0};
      setsockopt(server.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      Socket peer(accept(server.fd, nullptr, nullptr));
      if (peer.fd < 0)
        fail("NCCL bootstrap: {} of {} ranks connected to port {} within {:g} s", peers, l.size, l.master_port,
             timeout_s);
      send_all(peer.fd, &id, sizeof id);
    }
    return;
  }
  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_INET, hints.ai_socktype = SOCK_STREAM;
  const std::string port = std::to_string(l.master_port);
  if (getaddrinfo(l.master_addr.c_str(), port.c_str(), &hints, &found) != 0 || !found)
    fail("NCCL bootstrap: cannot resolve MASTER_ADDR '{}'", l.master_addr);
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(found, freeaddrinfo);
  for (;;) {
    Socket s(socket(AF_INET, SOCK_STREAM, 0));
    if (connect(s.fd, found->ai_addr, found->ai_addrlen) == 0) {
      size_t got = 0;
      while (got < sizeof id) {
        const ssize_t k = recv(s.fd, reinterpret_cast<char*>(&id) + got, sizeof id - got, 0);
        if (k <= 0) fail("NCCL bootstrap: {}:{} closed the connection", l.master_addr, l.master_port);
        got += size_t(k);
      }
      return;
    }
    if (Clock::now() > deadline)
      fail("NCCL bootstrap: rank 0 did not accept at {}:{} within {:g} s", l.master_addr, l.master_port, timeout_s);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// Waits until a nonblocking communicator has finished initialising (or failed, or run past the deadline).
void wait_ready(ncclComm_t comm, double timeout_s, const char* what, int rank, int size) {
  ncclResult_t state = ncclInProgress;
  wait_until([&] { return ncclCommGetAsyncError(comm, &state), state != ncclInProgress; }, timeout_s, what, rank, size,
             [&] { ncclCommAbort(comm); });
  if (state != ncclSuccess) fail("{} failed: {}", what, ncclGetErrorString(state));
}

class NcclComm final : public Comm {
 public:
  NcclComm(ncclComm_t comm, cudaStream_t stream, double timeout_s)
      : comm_(comm), stream_(stream), timeout_s_(timeout_s) {
    ncclCommUserRank(comm_, &rank_);
    ncclCommCount(comm_, &size_);
  }
  ~NcclComm() override {
    if (!aborted_) ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }

  void all_reduce(void* data, int64_t count, Scalar type) override {
    check(ncclAllReduce(data, data, size_t(count), nccl_type(type), ncclSum, comm_, stream_), "all_reduce");
    wait("all_reduce");
  }
  void all_reduce_host(std::vector<double>& values) override {
    const size_t bytes = values.size() * sizeof(double);
    void* copy = nullptr;
    cuda_check(cudaMallocAsync(&copy, bytes, stream_), "cudaMallocAsync");
    cuda_check(cudaMemcpyAsync(copy, values.data(), bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    all_reduce(copy, int64_t(values.size()), Scalar::F64);
    cuda_check(cudaMemcpyAsync(values.data(), copy, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
    cuda_check(cudaFreeAsync(copy, stream_), "cudaFreeAsync");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    check(ncclBroadcast(data, data, size_t(bytes), ncclUint8, root, comm_, stream_), "broadcast");
    wait("broadcast");
  }
  void all_gather(void* data, const std::vector<int64_t>& counts, Scalar type) override {
    char* base = static_cast<char*>(data);
    const size_t bytes = scalar_bytes(type);
    if (equal(counts)) {  // in place: this rank's part already sits at rank * count
      const size_t n = size_t(counts[0]);
      check(ncclAllGather(base + size_t(rank_) * n * bytes, base, n, nccl_type(type), comm_, stream_), "all_gather");
    } else {  // uneven parts: one broadcast from each owner, grouped into one launch
      check(ncclGroupStart(), "all_gather");
      for (int r = 0, offset = 0; r < size_; offset += int(counts[size_t(r)]), ++r)
        check(ncclBroadcast(base + size_t(offset) * bytes, base + size_t(offset) * bytes, size_t(counts[size_t(r)]),
                            nccl_type(type), r, comm_, stream_),
              "all_gather");
      check(ncclGroupEnd(), "all_gather");
    }
    wait("all_gather");
  }
  // Enqueued on the comm's stream like every collective, with an event after it that the request polls.
  std::unique_ptr<Request> ireduce_scatter(void* data, const std::vector<int64_t>& counts, Scalar type) override {
    char* base = static_cast<char*>(data);
    if (equal(counts)) {
      const size_t n = size_t(counts[0]);
      check(ncclReduceScatter(base, base + size_t(rank_) * n * scalar_bytes(type), n, nccl_type(type), ncclSum, comm_,
                              stream_),
            "reduce_scatter");
    } else {  // uneven parts: a full all-reduce leaves every part summed in place
      check(ncclAllReduce(base, base, size_t(total(counts)), nccl_type(type), ncclSum, comm_, stream_),
            "reduce_scatter");
    }
    // A nonblocking communicator may return before the collective is on the stream; the event must follow it.
    wait("reduce_scatter", [&] { return enqueued("reduce_scatter"); });
    auto p = std::make_unique<Pending>(*this);
    cuda_check(cudaEventRecord(p->event, stream_), "cudaEventRecord");
    return p;
  }
  void all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                    const std::vector<int64_t>& recv_counts, Scalar type) override {
    const size_t bytes = scalar_bytes(type);
    check(ncclGroupStart(), "all_to_all_v");
    size_t so = 0, ro = 0;
    for (int q = 0; q < size_; ++q) {
      const size_t sn = size_t(send_counts.at(size_t(q))), rn = size_t(recv_counts.at(size_t(q)));
      if (sn)
        check(ncclSend(static_cast<const char*>(send) + so * bytes, sn, nccl_type(type), q, comm_, stream_), "send");
      if (rn) check(ncclRecv(static_cast<char*>(recv) + ro * bytes, rn, nccl_type(type), q, comm_, stream_), "recv");
      so += sn, ro += rn;
    }
    check(ncclGroupEnd(), "all_to_all_v");
    wait("all_to_all_v");
  }
  void barrier() override {
    // NCCL has no barrier: an all-reduce of one value is one.
    void* one = nullptr;
    cuda_check(cudaMallocAsync(&one, sizeof(float), stream_), "cudaMallocAsync");
    cuda_check(cudaMemsetAsync(one, 0, sizeof(float), stream_), "cudaMemsetAsync");
    all_reduce(one, 1, Scalar::F32);
    cuda_check(cudaFreeAsync(one, stream_), "cudaFreeAsync");
  }
  std::unique_ptr<Comm> split(int color, int key) override {
    ncclComm_t sub = nullptr;
    check(ncclCommSplit(comm_, color, key, &sub, nullptr), "split");
    wait_ready(sub, timeout_s_, "NCCL split", rank_, size_);
    return std::make_unique<NcclComm>(sub, stream_, timeout_s_);
  }

 private:
  struct Pending final : Request {
    NcclComm& comm;
    cudaEvent_t event = nullptr;
    bool done = false;

    explicit Pending(NcclComm& c) : comm(c) {
      cuda_check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
    }
    ~Pending() override { cudaEventDestroy(event); }
    bool test() override { return done = done || comm.finished("reduce_scatter", event); }
    void wait() override {
      if (!done) comm.wait("reduce_scatter", [&] { return comm.finished("reduce_scatter", event); });
      done = true;
    }
  };

  static bool equal(const std::vector<int64_t>& counts) {
    for (int64_t c : counts)
      if (c != counts[0]) return false;
    return true;
  }
  static int64_t total(const std::vector<int64_t>& counts) {
    int64_t n = 0;
    for (int64_t c : counts) n += c;
    return n;
  }
  void check(ncclResult_t r, const char* what) {
    if (r != ncclSuccess && r != ncclInProgress)
      fail("NCCL {} failed on rank {} of {}: {} ({})", what, rank_, size_, ncclGetErrorString(r),
           ncclGetLastError(comm_));
  }
  // Whether NCCL has put everything asked so far on the stream (nonblocking communicators report ncclInProgress
  // while enqueuing); an asynchronous error aborts the communicator and throws.
  bool enqueued(const char* what) {
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async == ncclInProgress) return false;
    if (async != ncclSuccess) {
      ncclCommAbort(comm_), aborted_ = true;
      check(async, what);
    }
    return true;
  }
  // Whether the work enqueued before event (without one: everything on the stream) has finished.
  bool finished(const char* what, cudaEvent_t event = nullptr) {
    if (!enqueued(what)) return false;
    const cudaError_t status = event ? cudaEventQuery(event) : cudaStreamQuery(stream_);
    if (status == cudaErrorNotReady) return false;
    cuda_check(status, what);
    return true;
  }
  void wait(const char* what, const std::function<bool()>& done) {
    seconds_ += wait_until(done, timeout_s_, fmt::format("NCCL {}", what), rank_, size_,
                           [&] { ncclCommAbort(comm_), aborted_ = true; });
  }
  void wait(const char* what) {
    wait(what, [&] { return finished(what); });
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  double timeout_s_;
  int rank_ = 0, size_ = 1;
  bool aborted_ = false;
};

}  // namespace

std::unique_ptr<Comm> make_nccl_comm(const Launch& launch, const CommOptions& options) {
  cuda_check(cudaSetDevice(options.device), "cudaSetDevice");
  ncclUniqueId id{};
  if (launch.rank == 0 && ncclGetUniqueId(&id) != ncclSuccess) fail("ncclGetUniqueId failed");
  if (launch.launcher == "torchrun") {
    tcp_broadcast_id(launch, id, options.timeout_s);
  } else if (launch.size > 1) {
#ifdef DS_HAVE_MPI
    make_mpi_comm(launch, options.timeout_s)->broadcast(&id, sizeof id, 0);
#else
    fail(
        "a {} launch needs MPI to start NCCL; this build has none (set MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE "
        "instead)",
        launch.launcher);
#endif
  }
  cudaStream_t stream = nullptr;
  cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  // Nonblocking initialisation, so the deadline covers a rank that never arrives.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRankConfig(&comm, launch.size, id, launch.rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) fail("ncclCommInitRank failed: {}", ncclGetErrorString(r));
  wait_ready(comm, options.timeout_s, "NCCL initialisation", launch.rank, launch.size);
  return std::make_unique<NcclComm>(comm, stream, options.timeout_s);
}

}  // namespace ds::dist
