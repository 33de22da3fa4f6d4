// simt's scheduler and its CUDA runtime: device memory is host memory, every call completes before it returns, and a
// launch runs the grid's blocks one after another on the calling thread.
#include "simt.h"

#include <unistd.h>

#include <array>
#include <boost/context/fiber.hpp>
#include <boost/context/stack_context.hpp>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "ds/bf16.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define DS_SIMT_ASAN 1
#endif

namespace ds::simt {

uint3 thread_idx, block_idx, block_dim, grid_dim;

namespace {

namespace context = boost::context;

thread_local cudaError_t last_error = cudaSuccess;

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error("simt: " + message); }

constexpr size_t kStackBytes = size_t(64) << 10;  // kernels keep a few KiB of locals

// A reused stack keeps AddressSanitizer's marks of the frames that were on it when its fiber was abandoned (a failed
// block): they go before the stack is used again.
#ifdef DS_SIMT_ASAN
void unpoison(char* base, size_t size) { ASAN_UNPOISON_MEMORY_REGION(base, size); }
#else
void unpoison(char*, size_t) {}
#endif

// Boost.Context's stack allocator interface over stacks kept for the next launch: a launch makes a fiber per CUDA
// thread.
class StackPool {
 public:
  context::stack_context allocate() {
    if (free_.empty()) {
      stacks_.push_back(std::make_unique<char[]>(kStackBytes));
      // Stack tops at the same offset in 64 KiB would share cache sets, and every switch would miss: stagger them.
      const size_t stagger = (stacks_.size() % 16) * 1088;
      free_.push_back({stacks_.back().get(), kStackBytes - stagger});
    }
    const auto [base, size] = free_.back();
    free_.pop_back();
    unpoison(base, size);
    context::stack_context stack;
    stack.sp = base + size;  // stacks grow down
    stack.size = size;
    return stack;
  }
  void deallocate(context::stack_context& stack) {
    free_.push_back({static_cast<char*>(stack.sp) - stack.size, stack.size});
  }

 private:
  std::vector<std::unique_ptr<char[]>> stacks_;
  std::vector<std::pair<char*, size_t>> free_;
};

StackPool stack_pool;

enum class Wait { None, Block, Warp };

constexpr size_t kLaneBytes = 32;  // what one lane gives to a warp exchange, at most

// A thread's cp.async copies: committed groups, oldest first, and those not yet committed.
struct AsyncCopy {
  void* shared;
  const void* global;
  size_t bytes;
};
struct AsyncCopies {
  std::vector<std::vector<AsyncCopy>> committed;
  std::vector<AsyncCopy> open;
};

// Thrown in the waiting threads of a block that failed, so that each fiber returns before it is destroyed.
struct Abandoned {};

struct Fiber {
  context::fiber self;          // where the thread goes on when resumed
  context::fiber scheduler;     // where it returns to when it waits
  const void* stack = nullptr;  // the lowest address of its stack
  size_t stack_size = 0;
  uint3 index{};
  unsigned linear = 0;  // its place in the block: x fastest, then y, then z
  bool done = false;
  Wait wait = Wait::None;
  uint64_t shuffles = 0;
  AsyncCopies copies;
};

// What Boost.Context copies and calls: the pool, noting the stack in the fiber.
struct StackAllocator {
  Fiber* fiber;
  context::stack_context allocate() {
    context::stack_context stack = stack_pool.allocate();
    fiber->stack = static_cast<char*>(stack.sp) - stack.size;
    fiber->stack_size = stack.size;
    return stack;
  }
  void deallocate(context::stack_context& stack) { stack_pool.deallocate(stack); }
};

// The block being run, with its CUDA threads as fibers unless its kernel is known never to synchronise.
struct Block {
  const char* kernel = nullptr;
  bool with_fibers = true;
  const std::function<void()>* thread = nullptr;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  bool synchronised = false;
  std::exception_ptr error;  // what a thread threw
  bool abandoned = false;
  // Each warp's values of its last two shuffles, kLaneBytes per lane.
  std::vector<std::array<std::array<std::array<unsigned char, kLaneBytes>, 32>, 2>> lanes;
  std::vector<unsigned char> dynamic_shared;
  AsyncCopies direct_copies;              // the running thread's, without fibers
  const void* scheduler_stack = nullptr;  // for AddressSanitizer
  size_t scheduler_stack_size = 0;
};
Block* running = nullptr;  // the block of the launch under way

// AddressSanitizer follows the stack switches when told of them: the side that leaves names the stack it goes to, the
// side that arrives learns the stack it came from.
#ifdef DS_SIMT_ASAN
void leaving(void** fake_stack, const void* bottom, size_t size) {
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
}
void arrived(void* fake_stack, const void** bottom, size_t* size) {
  __sanitizer_finish_switch_fiber(fake_stack, bottom, size);
}
#else
void leaving(void**, const void*, size_t) {}
void arrived(void*, const void**, size_t*) {}
#endif

void resume(Block& b, Fiber& f) {
  b.current = &f;
  thread_idx = f.index;
  void* fake_stack = nullptr;
  leaving(&fake_stack, f.stack, f.stack_size);
  f.self = std::move(f.self).resume();
  arrived(fake_stack, nullptr, nullptr);
}

// Back to the scheduler until it releases the barrier this thread waits at.
void wait_at(Wait barrier) {
  Block& b = *running;
  Fiber& f = *b.current;
  f.wait = barrier;
  void* fake_stack = nullptr;
  leaving(&fake_stack, b.scheduler_stack, b.scheduler_stack_size);
  f.scheduler = std::move(f.scheduler).resume();
  arrived(fake_stack, &b.scheduler_stack, &b.scheduler_stack_size);
  if (b.abandoned) throw Abandoned{};
}

// The coordinates of thread `linear` of the running block.
uint3 thread_index(unsigned linear) {
  return {linear % block_dim.x, linear / block_dim.x % block_dim.y, linear / (block_dim.x * block_dim.y)};
}

// A fiber that starts thread `linear` of the block at its first resume.
void prepare(Block& b, Fiber& f, unsigned linear) {
  f.index = thread_index(linear);
  f.linear = linear;
  f.done = false;
  f.wait = Wait::None;
  f.shuffles = 0;
  f.copies = {};
  f.self = context::fiber(std::allocator_arg, StackAllocator{&f}, [&b, &f](context::fiber&& scheduler) {
    arrived(nullptr, &b.scheduler_stack, &b.scheduler_stack_size);
    f.scheduler = std::move(scheduler);
    try {
      if (!b.abandoned) (*b.thread)();
    } catch (const Abandoned&) {
    } catch (...) {
      b.error = std::current_exception();  // rethrown by the scheduler: nothing may leave a fiber
    }
    f.done = true;
    leaving(nullptr, b.scheduler_stack, b.scheduler_stack_size);  // this stack is done with
    return std::move(f.scheduler);
  });
}

int warp_of(const Fiber& f) { return int(f.linear / 32); }

// Ends a failed block: its waiting threads unwind and return, then `error` goes to the launch's caller.
[[noreturn]] void abandon(Block& b, std::exception_ptr error) {
  b.abandoned = true;
  for (Fiber& f : b.fibers)
    if (!f.done) resume(b, f);
  std::rethrow_exception(error);
}

// Runs the block's threads until all have returned; between rounds, releases the warps whose 32 lanes all wait at a
// shuffle, else the block if every thread that has not returned waits at __syncthreads. Later threads run first in
// each round, so a read that misses a barrier sees stale data here as it may on a GPU.
void run_fibers(Block& b) {
  std::vector<int> waiting(b.lanes.size());
  for (;;) {
    for (auto f = b.fibers.rbegin(); f != b.fibers.rend(); ++f)
      if (!f->done && f->wait == Wait::None) {
        resume(b, *f);
        if (b.error) abandon(b, b.error);
      }
    std::fill(waiting.begin(), waiting.end(), 0);
    bool live = false, all_at_block = true;
    for (const Fiber& f : b.fibers) {
      if (f.done) continue;
      live = true;
      waiting[size_t(warp_of(f))] += f.wait == Wait::Warp;
      all_at_block = all_at_block && f.wait == Wait::Block;
    }
    if (!live) return;
    // A shuffle with the full mask needs all 32 lanes: one that returned before it leaves the others waiting.
    bool released = false;
    for (Fiber& f : b.fibers) {
      const size_t w = size_t(warp_of(f));
      if (!f.done && waiting[w] == 32) {
        f.wait = Wait::None;
        released = true;
      }
    }
    if (released) continue;
    if (all_at_block) {
      for (Fiber& f : b.fibers) f.wait = Wait::None;
      continue;
    }
    abandon(b, std::make_exception_ptr(std::runtime_error(
                   std::string("simt: kernel ") + b.kernel + ", block (" + std::to_string(block_idx.x) + "," +
                   std::to_string(block_idx.y) + "," + std::to_string(block_idx.z) +
                   "): threads wait at different barriers, or at a shuffle some lanes never reach; on a GPU this "
                   "hangs or is undefined")));
  }
}

constexpr size_t kDefaultSharedBytes = 48 << 10, kMaxSharedBytes = 227 << 10;  // sm_90's, with and without opting in

std::mutex shared_limits_mutex;
std::unordered_map<std::string, size_t> shared_limits;  // allow_shared's, by kernel

size_t max_dynamic_shared(const char* kernel) {
  std::lock_guard lock(shared_limits_mutex);
  const auto it = shared_limits.find(kernel);
  return it == shared_limits.end() ? kDefaultSharedBytes : it->second;
}

std::mutex launch_mutex;  // one launch at a time: the globals above are the running one's
std::unordered_map<std::string, bool> kernel_synchronises;  // learned on each kernel's first launch

// The running block, where a thread is about to wait.
Block& waiting_block(const char* what) {
  Block& b = *running;
  if (!b.with_fibers)
    fail(std::string("kernel ") + b.kernel + " " + what +
         " after launches that never did, which simt runs without fibers");
  b.synchronised = true;
  return b;
}

}  // namespace

void sync_threads() {
  waiting_block("called __syncthreads");
  wait_at(Wait::Block);
}

namespace {

// Gives `bytes` of `value` to the warp, waits for all 32 lanes, and returns what they gave, by lane.
const std::array<std::array<unsigned char, kLaneBytes>, 32>& warp_gather(const char* what, const void* value,
                                                                         size_t bytes) {
  Block& b = waiting_block(what);
  if (bytes > kLaneBytes) fail("a lane exchanges at most 32 bytes");
  // Exchanges alternate between two sets of values: a lane writes the set of exchange n + 2 only after every lane has
  // reached exchange n + 1, so after every lane has read exchange n.
  Fiber& f = *b.current;
  auto& lanes = b.lanes[size_t(warp_of(f))][f.shuffles++ % 2];
  std::memcpy(&lanes[f.linear % 32], value, bytes);
  wait_at(Wait::Warp);
  return lanes;
}

}  // namespace

void warp_exchange(unsigned mask, const void* value, void* out, size_t bytes, int lane_mask) {
  if (mask != 0xffffffffu) fail("only full-warp shuffles are emulated");
  const auto& lanes = warp_gather("shuffled", value, bytes);
  std::memcpy(out, &lanes[(running->current->linear % 32) ^ unsigned(lane_mask)], bytes);
}

void mma_16x8x16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  struct Fragments {
    uint32_t a[4], b[2];
  };
  const Fragments mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  const auto& lanes = warp_gather("used the tensor cores", &mine, sizeof mine);
  std::array<Fragments, 32> all;
  for (size_t lane = 0; lane < 32; ++lane) std::memcpy(&all[lane], &lanes[lane], sizeof(Fragments));
  // Where common.cuh's layout keeps A[row][k] and B[k][col]: lane, register, and half of the register.
  const auto A = [&](unsigned row, unsigned k) {
    const uint32_t reg = all[(row % 8) * 4 + (k % 8) / 2].a[(row / 8) + 2 * (k / 8)];
    return bf16_to_float(uint16_t(k % 2 ? reg >> 16 : reg));
  };
  const auto B = [&](unsigned k, unsigned col) {
    const uint32_t reg = all[col * 4 + (k % 8) / 2].b[k / 8];
    return bf16_to_float(uint16_t(k % 2 ? reg >> 16 : reg));
  };
  const unsigned lane = running->current->linear % 32, g = lane / 4, t = lane % 4;
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned row = g + 8 * (i / 2), col = 2 * t + i % 2;
    float sum = 0;
    for (unsigned k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
    d[i] += sum;
  }
}

void allow_shared(const char* kernel, size_t bytes) {
  if (bytes > kMaxSharedBytes)
    fail(std::string("kernel ") + kernel + ": " + std::to_string(bytes) +
         " bytes of shared memory, more than a block has");
  std::lock_guard lock(shared_limits_mutex);
  shared_limits[kernel] = bytes;
}

void ldmatrix_x2_trans(uint32_t (&b)[2], const void* row) {
  const auto& lanes = warp_gather("loaded a matrix", &row, sizeof row);
  std::array<const uint16_t*, 16> rows;
  for (size_t i = 0; i < 16; ++i) {
    std::memcpy(&rows[i], &lanes[i], sizeof(const void*));
    if (reinterpret_cast<uintptr_t>(rows[i]) % 16) fail("ldmatrix from a row that is not 16-byte aligned");
  }
  // Lane (g, t) gets rows 2t and 2t + 1 of column g of each matrix: the transposes' row g, columns 2t and 2t + 1.
  const unsigned lane = running->current->linear % 32, g = lane / 4, t = lane % 4;
  for (unsigned m = 0; m < 2; ++m) b[m] = uint32_t(rows[8 * m + 2 * t][g]) | uint32_t(rows[8 * m + 2 * t + 1][g]) << 16;
}

unsigned char* dynamic_shared() { return running->dynamic_shared.data(); }

namespace {

AsyncCopies& running_copies() {
  Block& b = *running;
  return b.with_fibers ? b.current->copies : b.direct_copies;
}

}  // namespace

void copy_async(void* shared, const void* global, size_t bytes) {
  if (reinterpret_cast<uintptr_t>(shared) % bytes || reinterpret_cast<uintptr_t>(global) % bytes)
    fail("cp.async of " + std::to_string(bytes) + " bytes from or to an address that is not a multiple of it");
  running_copies().open.push_back({shared, global, bytes});
}

void copy_async_commit() {
  AsyncCopies& copies = running_copies();
  copies.committed.push_back(std::move(copies.open));
  copies.open.clear();
}

void copy_async_wait(int pending_groups) {
  AsyncCopies& copies = running_copies();
  while (copies.committed.size() > size_t(pending_groups)) {
    for (const AsyncCopy& c : copies.committed.front()) std::memcpy(c.shared, c.global, c.bytes);
    copies.committed.erase(copies.committed.begin());
  }
}

void launch(const char* name, dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& thread) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (shared_bytes > kDefaultSharedBytes && shared_bytes > max_dynamic_shared(name)) {
    last_error = cudaErrorInvalidValue;
    return;
  }
  if (threads % 32 != 0) fail(std::string("kernel ") + name + ": blocks must be whole warps here");
  std::lock_guard lock(launch_mutex);
  const auto it = kernel_synchronises.find(name);
  const bool known = it != kernel_synchronises.end();
  grid_dim = {grid.x, grid.y, grid.z};
  block_dim = {block.x, block.y, block.z};
  Block b;
  b.kernel = name;
  b.thread = &thread;
  b.with_fibers = !known || it->second;
  if (b.with_fibers) {
    b.fibers.resize(threads);
    b.lanes.resize(threads / 32);
  }
  b.dynamic_shared.resize(shared_bytes);
  running = &b;
  struct Done {
    ~Done() { running = nullptr; }
  } done;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        block_idx = {x, y, z};
        std::fill(b.dynamic_shared.begin(), b.dynamic_shared.end(), 0xff);
        if (b.with_fibers) {
          for (unsigned i = 0; i < threads; ++i) prepare(b, b.fibers[i], i);
          run_fibers(b);
        } else {
          for (unsigned i = 0; i < threads; ++i) {
            thread_idx = thread_index(i);
            thread();
          }
        }
      }
  if (!known) kernel_synchronises[name] = b.synchronised;
}

}  // namespace ds::simt

// ---- The CUDA runtime calls the project makes, on devices whose memory is the host's.

using ds::simt::last_error;

namespace {

cudaError_t record(cudaError_t status) {
  if (status != cudaSuccess) last_error = status;
  return status;
}

struct Event {
  std::chrono::steady_clock::time_point at;
};

// DS_SIMT_DEVICES devices (1 by default), all of them the host: a process per rank under mpirun can take its own.
int device_count() {
  static const int count = [] {
    const char* text = std::getenv("DS_SIMT_DEVICES");
    const int n = text ? std::atoi(text) : 1;
    return n > 0 ? n : 1;
  }();
  return count;
}
thread_local int current_device = 0;

// Device memory, as cudaFree checks it. Never destroyed, so memory that the runtime's caching allocator still holds
// at exit, as it may, stays reachable for LeakSanitizer.
std::mutex allocations_mutex;
auto* const allocations = new std::unordered_map<void*, size_t>;

}  // namespace

extern "C" {

cudaError_t cudaGetLastError() {
  const cudaError_t status = last_error;
  last_error = cudaSuccess;
  return status;
}
const char* cudaGetErrorName(cudaError_t status) {
  switch (status) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    default:
      return "cudaError";
  }
}
const char* cudaGetErrorString(cudaError_t status) {
  return status == cudaSuccess ? "no error" : "simt: emulated CUDA error";
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = device_count();
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = current_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= device_count()) return record(cudaErrorInvalidDevice);
  current_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= device_count()) return record(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::strcpy(prop->name, "simt (CUDA kernels on the CPU)");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 4;
  prop->totalGlobalMem = size_t(sysconf(_SC_PHYS_PAGES)) * size_t(sysconf(_SC_PAGE_SIZE));
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device < 0 || device >= device_count()) return record(cudaErrorInvalidDevice);
  if (attribute != cudaDevAttrMultiProcessorCount) return record(cudaErrorInvalidValue);
  *value = 4;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  *ptr = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (!*ptr) return record(cudaErrorMemoryAllocation);
  std::lock_guard lock(allocations_mutex);
  allocations->emplace(*ptr, bytes);
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  std::lock_guard lock(allocations_mutex);
  if (allocations->erase(ptr) == 0) return record(cudaErrorInvalidValue);
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t) { return cudaMalloc(ptr, bytes); }
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) { return cudaFree(ptr); }

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind, cudaStream_t) {
  if (count) std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind, cudaStream_t) {
  if (width > dpitch || width > spitch) return record(cudaErrorInvalidValue);
  for (size_t r = 0; r < height; ++r)
    std::memmove(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  if (count) std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  *stream = reinterpret_cast<cudaStream_t>(new int(0));
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) { return cudaStreamCreate(stream); }
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete reinterpret_cast<int*>(stream);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = reinterpret_cast<cudaEvent_t>(new Event{});
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) { return cudaEventCreate(event); }
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<Event*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  reinterpret_cast<Event*>(event)->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t begin, cudaEvent_t end) {
  *ms =
      std::chrono::duration<float, std::milli>(reinterpret_cast<Event*>(end)->at - reinterpret_cast<Event*>(begin)->at)
          .count();
  return cudaSuccess;
}

}  // extern "C"
