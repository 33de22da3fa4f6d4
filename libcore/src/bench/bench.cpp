#include "ds/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ds/engine.h"
#include "ds/error.h"
#include "ds/flops.h"
#include "ds/inference_model.h"
#include "ds/model.h"
#include "ds/ops.h"
#include "ds/optim.h"
#include "ds/tokenizer.h"

namespace ds::bench {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

GemmShape parse_gemm_shape(const std::string& text) {
  int64_t size[3] = {0, 0, 0};
  const char* p = text.data();
  const char* end = p + text.size();
  for (int i = 0; i < 3; ++i) {
    if (i > 0) {
      if (p == end || *p != 'x') fail("GEMM shape '{}' is not MxNxK", text);
      ++p;
    }
    const auto [next, ec] = std::from_chars(p, end, size[i]);
    if (ec != std::errc() || size[i] <= 0) fail("GEMM shape '{}' is not MxNxK with positive sizes", text);
    p = next;
  }
  if (p != end) fail("GEMM shape '{}' is not MxNxK", text);
  return {text, size[0], size[1], size[2]};
}

std::vector<GemmShape> model_gemm_shapes(const ModelConfig& c, int64_t batch, int64_t seq_len) {
  const int64_t M = batch * seq_len, d = c.hidden_size, H = c.num_attention_heads, dq = c.qk_head_dim(),
                r = c.kv_lora_rank, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
  std::vector<GemmShape> s;
  if (c.q_lora_rank > 0) {
    s.push_back({"model.q_a_proj", M, c.q_lora_rank, d});
    s.push_back({"model.q_b_proj", M, H * dq, c.q_lora_rank});
  } else {
    s.push_back({"model.q_proj", M, H * dq, d});
  }
  s.push_back({"model.kv_a_proj_with_mqa", M, r + dr, d});
  s.push_back({"model.kv_b_proj", M, H * (c.qk_nope_head_dim + dv), r});
  s.push_back({"model.attn.scores", seq_len, seq_len, dq});  // q k^T
  s.push_back({"model.attn.values", seq_len, dv, seq_len});  // p v, timed in linear's layout
  s.push_back({"model.o_proj", M, d, H * dv});
  bool dense = false;
  for (int64_t l = 0; l < c.num_hidden_layers + c.num_nextn_predict_layers; ++l) dense |= !c.is_moe_layer(l);
  if (dense) {
    s.push_back({"model.mlp.gate/up_proj", M, c.intermediate_size, d});
    s.push_back({"model.mlp.down_proj", M, d, c.intermediate_size});
  }
  if (c.n_routed_experts > 0) {
    const int64_t routed = std::max<int64_t>(1, M * c.num_experts_per_tok / c.n_routed_experts);
    const int64_t shared = c.moe_intermediate_size * c.n_shared_experts;
    s.push_back({"model.mlp.gate", M, c.n_routed_experts, d});
    s.push_back({"model.experts.gate/up_proj", routed, c.moe_intermediate_size, d});
    s.push_back({"model.experts.down_proj", routed, d, c.moe_intermediate_size});
    if (shared > 0) {
      s.push_back({"model.shared_experts.gate/up_proj", M, shared, d});
      s.push_back({"model.shared_experts.down_proj", M, d, shared});
    }
  }
  if (c.num_nextn_predict_layers > 0) s.push_back({"model.eh_proj", M, d, 2 * d});
  s.push_back({"model.lm_head", M, c.vocab_size, d});
  return s;
}

std::vector<GemmShape> deepseek_v3_gemm_shapes(int64_t M) {
  return {{"v3.q_a_proj", M, 1536, 7168},
          {"v3.q_b_proj", M, 24576, 1536},
          {"v3.kv_a_proj_with_mqa", M, 576, 7168},
          {"v3.kv_b_proj", M, 32768, 512},
          {"v3.o_proj", M, 7168, 16384},
          {"v3.mlp.gate", M, 256, 7168},
          {"v3.experts.gate/up_proj", M, 2048, 7168},
          {"v3.experts.down_proj", M, 7168, 2048}};
}

GemmResult gemm(int64_t M, int64_t N, int64_t K, double min_seconds) {
  if (M <= 0 || N <= 0 || K <= 0) fail("GEMM sizes must be positive, got {}x{}x{}", M, N, K);
  // sgemm's speed does not depend on the values as long as none is denormal, so constants do.
  const std::vector<float> x(size_t(M * K), 0.5f), w(size_t(N * K), 0.25f);
  std::vector<float> y(size_t(M * N));
  ops::linear(y.data(), x.data(), w.data(), M, N, K);  // warm-up: page faults, thread start, caches

  std::vector<double> seconds;
  const auto start = Clock::now();
  while (seconds.size() < 3 || seconds_since(start) < min_seconds) {
    const auto t0 = Clock::now();
    ops::linear(y.data(), x.data(), w.data(), M, N, K);
    seconds.push_back(seconds_since(t0));
  }
  const double gflop = 2.0 * double(M) * double(N) * double(K) * 1e-9;
  GemmResult r;
  r.repeats = int64_t(seconds.size());
  r.best_gflops = gflop / *std::min_element(seconds.begin(), seconds.end());
  r.median_gflops = gflop / median(seconds);
  return r;
}

double sgemm_peak(double min_seconds) {
  double peak = 0, call_seconds = 0;
  for (int64_t n : {1024, 2048}) {
    if (8 * call_seconds > min_seconds) break;  // doubling n is 8x the work per call
    const GemmResult r = gemm(n, n, n, min_seconds);
    peak = std::max(peak, r.best_gflops);
    call_seconds = 2.0 * double(n * n * n) * 1e-9 / r.median_gflops;
  }
  return peak;
}

StepResult train_step(const ModelConfig& config, int64_t batch, int64_t seq_len, int warmup, int steps,
                      double peak_gflops) {
  if (batch <= 0 || seq_len <= 0 || steps <= 0 || warmup < 0)
    fail("training step benchmark needs positive batch, seq_len and steps, got {}, {}, {}", batch, seq_len, steps);
  Model<float> model(config);
  model.init_random(1234);
  AdamW optimizer(model.param_infos(), int64_t(model.params().size()), AdamWOptions{});
  const int64_t tokens = batch * seq_len;
  const auto [inputs, targets] = random_batch(config.vocab_size, tokens);

  std::vector<double> seconds;
  for (int i = 0; i < warmup + steps; ++i) {
    const auto t0 = Clock::now();
    model.zero_grads();
    model.forward(inputs.data(), targets.data(), batch, seq_len);
    model.backward();
    optimizer.step(model.params(), model.grads(), 1e-4);
    if (i >= warmup) seconds.push_back(seconds_since(t0));
  }

  return step_result(config, seq_len, tokens, median(seconds), peak_gflops);
}

TokenBatch random_batch(int64_t vocab_size, int64_t tokens) {
  std::mt19937_64 rng(1);
  TokenBatch b{std::vector<int32_t>(static_cast<size_t>(tokens)), std::vector<int32_t>(static_cast<size_t>(tokens))};
  for (size_t i = 0; i < b.inputs.size(); ++i) {
    b.inputs[i] = int32_t(rng() % uint64_t(vocab_size));
    b.targets[i] = int32_t(rng() % uint64_t(vocab_size));
  }
  return b;
}

StepResult step_result(const ModelConfig& config, int64_t seq_len, int64_t tokens, double step_seconds,
                       double peak_gflops) {
  StepResult r;
  r.step_ms = step_seconds * 1e3;
  r.tokens_per_s = double(tokens) / step_seconds;
  r.flops_per_token = model_flops(config, seq_len).training_per_token;
  r.gflops = r.flops_per_token * r.tokens_per_s * 1e-9;
  r.mfu = peak_gflops > 0 ? r.gflops / peak_gflops : 0;
  return r;
}

double copy_bandwidth(double min_seconds) {
  const int64_t bytes = int64_t(256) << 20;  // far past any cache
  std::vector<char> from(static_cast<size_t>(bytes), 1), to(static_cast<size_t>(bytes), 0);
  const int64_t chunks = 64, chunk = bytes / chunks;
  const auto copy = [&] {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) std::memcpy(to.data() + c * chunk, from.data() + c * chunk, size_t(chunk));
  };
  copy();  // warm-up: page faults
  double best = 1e30;
  const auto start = Clock::now();
  for (int i = 0; i < 3 || seconds_since(start) < min_seconds; ++i) {
    const auto t0 = Clock::now();
    copy();
    best = std::min(best, seconds_since(t0));
  }
  return 2.0 * double(bytes) / best * 1e-9;
}

DecodeResult decode(const ModelConfig& config, int64_t batch, int64_t context, int steps, bool fp8,
                    const Device& device) {
  if (batch <= 0 || context <= 0 || steps <= 0) fail("decode benchmark needs positive batch, context and steps");
  if (context + steps > config.max_position_embeddings)
    fail("decode benchmark: context {} + {} steps exceeds max_position_embeddings {}", context, steps,
         config.max_position_embeddings);
  const InferenceWeights weights = [&] {
    Model<float> model(config);
    model.init_random(1234);
    return inference_weights(model, fp8);
  }();
  const Tokenizer tokenizer = Tokenizer::byte_level();
  Engine engine(weights, tokenizer, device);
  std::mt19937_64 rng(1);
  const auto random_tokens = [&](int64_t n) {
    std::vector<uint32_t> ids(static_cast<size_t>(n));
    for (uint32_t& id : ids) id = uint32_t(rng() % tokenizer.vocab_size());
    return ids;
  };

  std::vector<std::pair<int64_t, std::vector<uint32_t>>> feed;
  for (int64_t b = 0; b < batch; ++b) feed.emplace_back(engine.open(), random_tokens(context));
  auto t0 = Clock::now();
  engine.append(feed);
  DecodeResult r;
  r.prefill_tokens_per_s = double(batch * context) / seconds_since(t0);
  r.weight_bytes = weights.bytes();
  r.rss_bytes = resident_bytes();

  std::vector<double> seconds;
  for (int i = 0; i < steps; ++i) {
    for (auto& [seq, ids] : feed) ids = random_tokens(1);
    t0 = Clock::now();
    engine.append(feed);
    seconds.push_back(seconds_since(t0));
  }
  r.step_ms = median(seconds) * 1e3;
  r.tokens_per_s = double(batch) / median(seconds);
  r.cache_bytes_per_token = engine.cache_bytes_per_token();
  r.naive_cache_bytes_per_token = engine.naive_cache_bytes_per_token();
  if (device.cuda) return r;

  // Weights: everything but the routed experts, plus the experts some sequence picks, and of an untied embedding
  // only the rows looked up; the cache at its mid-run length.
  const int64_t d = config.hidden_size;
  double bytes = double(r.weight_bytes);
  if (!config.tie_word_embeddings)
    bytes -= double(weights.matrix("model.embed_tokens.weight", {config.vocab_size, d}).bytes()) *
             double(config.vocab_size - std::min(batch, config.vocab_size)) / double(config.vocab_size);
  if (config.n_routed_experts > 0) {
    const double n = double(config.n_routed_experts), k = double(config.num_experts_per_tok);
    const double unread = n * std::pow(1.0 - k / n, double(batch));
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      if (!config.is_moe_layer(l)) continue;
      const std::string expert = fmt::format("model.layers.{}.mlp.experts.0.", l);
      const int64_t h = config.moe_intermediate_size;
      const double expert_bytes = double(weights.matrix(expert + "gate_proj.weight", {h, d}).bytes() +
                                         weights.matrix(expert + "up_proj.weight", {h, d}).bytes() +
                                         weights.matrix(expert + "down_proj.weight", {d, h}).bytes());
      bytes -= unread * expert_bytes;
    }
  }
  const double cached = double(batch) * (double(context) + 0.5 * double(steps));
  r.bytes_per_step = bytes + cached * double(engine.cache_bytes_per_token());
  r.gb_per_s = r.bytes_per_step / median(seconds) * 1e-9;
  return r;
}

AllReduceResult time_all_reduce(dist::Comm& comm, int64_t bytes, double min_seconds,
                                const std::function<void()>& all_reduce) {
  constexpr int kRounds = 5;
  const int ranks = comm.size();
  all_reduce();  // NCCL and MPI set up their channels and registrations on the first call
  auto start = Clock::now();
  all_reduce();
  // Each rank's probe differs a little: the ranks' mean, the same on every rank, sizes the rounds.
  std::vector<double> probe = {seconds_since(start)};
  comm.all_reduce_host(probe);
  const double one = std::max(probe[0] / ranks, 1e-7);
  const auto per_round = int64_t(std::clamp(std::ceil(min_seconds / kRounds / one), 1.0, 100000.0));
  std::vector<double> us(kRounds);
  for (double& round : us) {
    start = Clock::now();
    for (int64_t i = 0; i < per_round; ++i) all_reduce();
    round = seconds_since(start) * 1e6 / double(per_round);
  }
  comm.all_reduce_host(us);
  for (double& round : us) round /= ranks;
  AllReduceResult r{.bytes = bytes, .ranks = ranks, .repeats = kRounds * per_round};
  r.best_us = *std::min_element(us.begin(), us.end());
  r.median_us = median(us);
  r.algbw_gb_per_s = double(bytes) / r.best_us * 1e-3;
  r.busbw_gb_per_s = r.algbw_gb_per_s * 2.0 * (ranks - 1) / ranks;
  return r;
}

int64_t all_reduce_floats(int64_t bytes) {
  if (bytes <= 0 || bytes % 4 != 0) fail("all-reduce size {} bytes: not a positive multiple of 4", bytes);
  return bytes / 4;
}

void check_all_reduce_sum(const std::vector<float>& values, const dist::Comm& comm) {
  const int ranks = comm.size();
  const float expected = float(ranks) * float(ranks + 1) / 2;
  for (size_t i = 0; i < values.size(); ++i)
    if (values[i] != expected)
      fail("the {} all-reduce of {} floats over {} ranks gave {} at {} instead of {}", comm.backend(), values.size(),
           ranks, values[i], i, expected);
}

AllReduceResult all_reduce(dist::Comm& comm, int64_t bytes, double min_seconds) {
  std::vector<float> data(size_t(all_reduce_floats(bytes)), float(comm.rank() + 1));
  comm.all_reduce(data.data(), int64_t(data.size()));
  check_all_reduce_sum(data, comm);
  std::fill(data.begin(), data.end(), 0.0f);  // sums of zeros stay finite however many calls follow
  return time_all_reduce(comm, bytes, min_seconds, [&] { comm.all_reduce(data.data(), int64_t(data.size())); });
}

BusyProcesses::BusyProcesses(int count) {
  const pid_t parent = getpid();
  for (int i = 0; i < count; ++i) {
    const pid_t pid = fork();
    if (pid < 0) {
      const int error = errno;
      stop();
      fail("cannot start a busy process: {}", std::strerror(error));
    }
    if (pid == 0) {
      // Only system calls here: the parent's other threads (OpenMP's) do not exist in the child.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(0);  // the parent died before prctl took effect
      prctl(PR_SET_NAME, kBusyName);
      volatile uint64_t spins = 0;  // volatile: a loop without side effects may be assumed to end
      while (true) spins = spins + 1;
    }
    pids_.push_back(pid);
  }
}

BusyProcesses::~BusyProcesses() { stop(); }

void BusyProcesses::stop() {
  for (const pid_t pid : pids_) kill(pid, SIGKILL);
  for (const pid_t pid : pids_)
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  pids_.clear();
}

std::vector<ContentionRun> contention(const ModelConfig& config, int64_t batch, int64_t seq_len, int steps, int threads,
                                      int busy, const std::function<void(const std::vector<int>&)>& started) {
  if (threads <= 0 || busy < 0) fail("contention needs positive threads and busy >= 0, got {} and {}", threads, busy);
  std::vector<ContentionRun> runs;
  const auto measure = [&](int load) {
    set_threads(1);
    const StepResult one = train_step(config, batch, seq_len, 1, steps);
    set_threads(threads);
    const StepResult many = train_step(config, batch, seq_len, 1, steps);
    set_threads(0);
    const int chosen = get_threads();
    const StepResult automatic = train_step(config, batch, seq_len, 1, steps);
    runs.push_back({load, 1, false, one, 1.0});
    runs.push_back({load, threads, false, many, many.tokens_per_s / one.tokens_per_s});
    runs.push_back({load, chosen, true, automatic, automatic.tokens_per_s / one.tokens_per_s});
  };
  {
    const BusyProcesses processes(busy);
    started(processes.pids());
    measure(busy);
  }
  measure(0);
  set_threads(threads);
  return runs;
}

int64_t resident_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.starts_with("VmRSS:")) return std::stoll(line.substr(6)) * 1024;  // "VmRSS:   123456 kB"
  return 0;
}

}  // namespace ds::bench
