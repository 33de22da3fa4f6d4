#pragma once
// The measurements behind ds-bench: sgemm through ops::linear, the machine's practical sgemm peak (the MFU
// denominator, measured in the same run so the ratio holds on any machine), a whole training step of a randomly
// initialised model, decode, and the all-reduce of the ranks of a launch. Logic only: the tool prints.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ds/comm.h"
#include "ds/config.h"
#include "ds/cuda.h"

namespace ds::bench {

// One y[M,N] = x[M,K] w[N,K]^T product, as ops::linear computes it: M tokens, N outputs, K inputs.
struct GemmShape {
  std::string name;
  int64_t M = 0, N = 0, K = 0;
};

// "MxNxK" with positive sizes, e.g. "128x7168x2048"; throws ds::Error otherwise. The name is the text itself.
GemmShape parse_gemm_shape(const std::string& text);

// The forward GEMMs of a training step of config on batch sequences of seq_len tokens, named "model.<weight>".
// Routed experts get their mean load (tokens * num_experts_per_tok / n_routed_experts rows); the attention products
// are per sequence and head.
std::vector<GemmShape> model_gemm_shapes(const ModelConfig& config, int64_t batch, int64_t seq_len);

// DeepSeek-V3 671B's per-layer GEMMs (shapes from its checkpoint tensors) at M tokens, named "v3.<weight>". The dense
// MLP and the head are left out: their weights (0.5 and 3.7 GB in f32) would dominate the run's time and memory.
std::vector<GemmShape> deepseek_v3_gemm_shapes(int64_t M);

struct GemmResult {
  int64_t repeats = 0;       // timed calls
  double best_gflops = 0;    // the fastest call
  double median_gflops = 0;  // the median call
};

// Times ops::linear<float> (OpenBLAS sgemm) after one warm-up call, repeating until min_seconds have passed and
// at least 3 calls were made.
GemmResult gemm(int64_t M, int64_t N, int64_t K, double min_seconds);

// The best GFLOP/s of large square sgemms (1024^3, then 2048^3 where one call of it fits in min_seconds): what this
// machine and thread count practically reach.
double sgemm_peak(double min_seconds);

struct StepResult {
  double step_ms = 0;          // median over the timed steps
  double tokens_per_s = 0;     // from the median step
  double flops_per_token = 0;  // model_flops(config, seq_len).training_per_token, MTP included
  double gflops = 0;           // achieved
  double mfu = 0;              // gflops / peak_gflops; 0 without a peak
};

// What both training step benchmarks (CPU and GPU) train on: tokens random inputs and targets, the same every run.
struct TokenBatch {
  std::vector<int32_t> inputs, targets;
};
TokenBatch random_batch(int64_t vocab_size, int64_t tokens);
// A training step's figures from its median time (peak_gflops 0: no MFU).
StepResult step_result(const ModelConfig& config, int64_t seq_len, int64_t tokens, double step_seconds,
                       double peak_gflops);

// Times zero_grads + forward with loss + backward + AdamW step of a Model<float> with random weights on random
// tokens: warmup untimed steps, then steps timed ones.
StepResult train_step(const ModelConfig& config, int64_t batch, int64_t seq_len, int warmup, int steps,
                      double peak_gflops = 0);

// Memory bandwidth as STREAM's copy counts it (bytes read + bytes written per second) of large buffers copied on
// all threads: the ceiling of a decode step, which reads every weight it uses and the whole cache once.
double copy_bandwidth(double min_seconds);

struct DecodeResult {
  int64_t weight_bytes = 0;         // the engine's weights in memory (InferenceWeights::bytes)
  int64_t rss_bytes = 0;            // the process's resident memory (VmRSS) after the prefill; 0 where unknown
  double prefill_tokens_per_s = 0;  // prompts of `context` tokens appended in one batched pass
  double step_ms = 0;               // median batched decode step (one token for each sequence)
  double tokens_per_s = 0;          // batch / step
  double bytes_per_step = 0;        // weights a step reads (expected distinct experts) + the latent cache
  double gb_per_s = 0;              // bytes_per_step / step
  int64_t cache_bytes_per_token = 0, naive_cache_bytes_per_token = 0;  // latent vs per-head K/V, all layers
};

// Random weights, held as inference_weights(model, fp8) holds them (F32, or FP8 where ds-quantize would quantize)
// with the float model freed before timing; `batch` sequences of `context` random tokens prefilled, then steps
// timed decode steps through the MLA latent cache. Routed experts count as read when at least one sequence picks
// them, in expectation under uniform routing: n * (1 - (1 - k/n)^batch) per layer. On a CUDA device the engine holds
// everything in BF16 there, and only the times are measured (bytes_per_step and gb_per_s stay 0).
DecodeResult decode(const ModelConfig& config, int64_t batch, int64_t context, int steps, bool fp8 = false,
                    const Device& device = {});

// One size of an in-place all-reduce (sum of float32) over the ranks, reported as nccl-tests' all_reduce_perf
// reports it: the algorithm bandwidth bytes / time, and the bus bandwidth algbw * 2 (n - 1) / n, what each rank's
// link carries in a ring all-reduce, comparable across rank counts and against the link's speed.
struct AllReduceResult {
  int64_t bytes = 0;
  int ranks = 0;
  int64_t repeats = 0;                            // timed all-reduces
  double best_us = 0, median_us = 0;              // per all-reduce: the mean of a round, averaged over the ranks
  double algbw_gb_per_s = 0, busbw_gb_per_s = 0;  // from best_us
};

// Times all_reduce (one in-place all-reduce of bytes over comm) after a warm-up call: five rounds of the same number
// of calls on every rank (agreed through comm), sized from a probe call so that they take about min_seconds in all.
AllReduceResult time_all_reduce(dist::Comm& comm, int64_t bytes, double min_seconds,
                                const std::function<void()>& all_reduce);
// The floats in bytes; throws ds::Error unless it is a positive multiple of 4.
int64_t all_reduce_floats(int64_t bytes);
// Throws ds::Error unless every value of an all-reduced buffer whose rank r held r + 1 everywhere is the sum
// n (n + 1) / 2 over comm's n ranks.
void check_all_reduce_sum(const std::vector<float>& values, const dist::Comm& comm);
// The all-reduce of comm over host buffers (the MPI backend), checked once, then timed. Every rank calls it with the
// same bytes (a multiple of 4).
AllReduceResult all_reduce(dist::Comm& comm, int64_t bytes, double min_seconds);

// count child processes that each spin on a core until this object is destroyed: other programs competing for the
// CPU. The destructor kills and reaps them; a child also dies with its parent (PR_SET_PDEATHSIG), so none outlives
// a killed benchmark. Their name (/proc/PID/comm) is kBusyName.
class BusyProcesses {
 public:
  explicit BusyProcesses(int count);
  ~BusyProcesses();
  BusyProcesses(const BusyProcesses&) = delete;
  BusyProcesses& operator=(const BusyProcesses&) = delete;
  const std::vector<int>& pids() const { return pids_; }

 private:
  void stop();
  std::vector<int> pids_;
};
inline constexpr const char* kBusyName = "ds-bench-busy";

// One training step measurement of contention(): with `busy` competing processes (0: quiet) on `threads` threads.
struct ContentionRun {
  int busy = 0, threads = 0;
  bool automatic = false;  // threads is what the default (--threads 0) chose under this load
  StepResult step;
  double vs_one_thread = 0;  // tokens/s over those of 1 thread under the same load
};

// train_step on 1 thread, on `threads` threads and on the default count (ds/threads.h), first with `busy`
// BusyProcesses spinning (contended), then without them (quiet): how far more threads help, or hurt, when other
// programs share the cores, and whether the default avoids the harm. started(pids) is called once the busy processes
// run. Leaves the thread count at `threads`.
std::vector<ContentionRun> contention(const ModelConfig& config, int64_t batch, int64_t seq_len, int steps, int threads,
                                      int busy, const std::function<void(const std::vector<int>&)>& started);

// This process's resident memory (VmRSS of /proc/self/status); 0 where unknown.
int64_t resident_bytes();

#ifdef DS_CUDA
// ds-bench's GPU measurements (builds with CUDA: libcore/src/cuda/bench_cuda.cpp), on the current device: cuBLASLt
// GEMMs in BF16 and in FP8 with DeepSeek-V3's block scaling on the same shapes (so the FP8 figure is a ratio to BF16
// measured in the same run), the MLA decode kernel's bandwidth over the latent cache, and a training step through
// cuda::TrainModel with its MFU against the BF16 peak measured in the same run.
std::string gpu_name();  // of the current device, e.g. "NVIDIA H200"

// DeepSeek-V3's per-layer GEMMs (deepseek_v3_gemm_shapes) at each of these token counts.
inline const std::vector<int64_t> kGpuGemmTokens = {64, 128, 512, 2048, 8192};

struct GpuGemmResult {
  double bf16_tflops = 0, fp8_tflops = 0;  // best call of each; fp8 excludes quantising its inputs
  double bf16_median_tflops = 0, fp8_median_tflops = 0;
};
// Times y[M,N] = x[M,K] W[N,K]^T with bf16 operands and output, then with e4m3 operands (1x128 activation scales,
// 128x128 weight scales) and bf16 output: one warm-up call, then calls until min_seconds have passed (at least 3).
// Values do not change the speed of either, so the operands are constant patterns.
GpuGemmResult gpu_gemm(int64_t M, int64_t N, int64_t K, double min_seconds);

// The BF16 dense peak: the best TFLOP/s of square bf16 GEMMs of 4096 and 8192 through cuBLASLt, timed as gpu_gemm
// times them. What this GPU practically reaches now, shared or throttled as it may be: the MFU denominator.
double gpu_bf16_peak(double min_seconds);

// Times zero_grads + forward with loss + backward + clipping to norm 1 + DeviceAdamW step of a cuda::TrainModel
// with random weights on random tokens, in BF16 or, with fp8, in FP8 GEMMs (TrainModel::set_fp8): warmup untimed
// steps, then steps timed ones, each a wall time up to the device's end of the update. gflops counts the model FLOPs
// of ds/flops.h, as train_step does; mfu is gflops over peak_tflops (0 without a peak), for FP8 steps too.
StepResult gpu_train_step(const ModelConfig& config, int64_t batch, int64_t seq_len, int warmup, int steps, bool fp8,
                          double peak_tflops);

struct MlaDecodeResult {
  double best_ms = 0, median_ms = 0;
  double gbytes_per_s = 0;  // bytes read and written (cache, queries, output) over the best call
};
// One decode step of cuda::mla_decode: batch sequences of `context` cached tokens each, `heads` query heads, V3's
// widths (512 latent + 64 rope, bf16 cache, the 0.1352 softmax scale).
MlaDecodeResult gpu_mla_decode(int64_t batch, int64_t context, int64_t heads, double min_seconds);

// all_reduce (ds/bench.h) over device buffers on the current device: comm is NCCL's.
AllReduceResult gpu_all_reduce(dist::Comm& comm, int64_t bytes, double min_seconds);
#endif

}  // namespace ds::bench
