// DeepSeekMoE on the GPU: routing (route_token of libcore/src/model/moe.cpp, one thread per token) and the token
// permutation to and from expert-major rows. Both are small next to the expert GEMMs, so they favour being plainly
// the CPU's algorithm over speed: selections are repeated argmax scans, which give best-first order with ties to the
// lower index exactly as the CPU's sorts do.
#include "common.cuh"
#include "cuda_ops.h"

namespace ds::cuda {

namespace {

constexpr int kMaxExperts = int(kMaxRoutedExperts);
constexpr int kMaxGroups = 64;

struct RouterParams {
  int E, K, G, topk_group;
  bool sigmoid, limit_groups, top2_groups, renormalise;
  float routed_scale;
};

// The best of `n` values not yet taken (taken[i] set), ties to the lower index; marks and returns it.
__device__ int take_best(const float* values, bool* taken, int n) {
  int best = -1;
  for (int i = 0; i < n; ++i)
    if (!taken[i] && (best < 0 || values[i] > values[best])) best = i;
  taken[best] = true;
  return best;
}

__global__ void route_kernel(int32_t* chosen, float* weights, float* scores, const float* logits, const float* bias,
                             int64_t N, RouterParams p) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const float* l = logits + n * p.E;
  float* s = scores + n * p.E;
  if (p.sigmoid) {
    for (int e = 0; e < p.E; ++e) s[e] = 1.0f / (1.0f + expf(-l[e]));
  } else {  // ops::softmax_rows
    float mx = l[0], sum = 0;
    for (int e = 1; e < p.E; ++e) mx = fmaxf(mx, l[e]);
    for (int e = 0; e < p.E; ++e) sum += (s[e] = expf(l[e] - mx));
    for (int e = 0; e < p.E; ++e) s[e] /= sum;
  }
  float choice[kMaxExperts];   // what experts are chosen by; the weights come from s
  bool excluded[kMaxExperts];  // outside the kept groups, or already chosen
  for (int e = 0; e < p.E; ++e) {
    choice[e] = s[e] + (bias ? bias[e] : 0.0f);
    excluded[e] = false;
  }
  if (p.limit_groups) {
    // Group score: the sum of the group's two best (noaux_tc) or its best (group_limited_greedy); keep topk_group.
    const int per_group = p.E / p.G;
    float group_score[kMaxGroups];
    bool group_taken[kMaxGroups];
    for (int g = 0; g < p.G; ++g) {
      float first = -INFINITY, second = -INFINITY;
      for (int e = g * per_group; e < (g + 1) * per_group; ++e) {
        if (choice[e] > first) {
          second = first;
          first = choice[e];
        } else if (choice[e] > second) {
          second = choice[e];
        }
      }
      group_score[g] = p.top2_groups ? first + second : first;
      group_taken[g] = false;
    }
    for (int k = 0; k < p.topk_group; ++k) take_best(group_score, group_taken, p.G);
    for (int e = 0; e < p.E; ++e) excluded[e] = !group_taken[e / per_group];
  }
  int32_t* c = chosen + n * p.K;
  float* w = weights + n * p.K;
  float sum = 0;
  for (int k = 0; k < p.K; ++k) {
    c[k] = take_best(choice, excluded, p.E);
    sum += s[c[k]];
  }
  const float norm = p.renormalise ? 1.0f / (sum + 1e-20f) : 1.0f;
  for (int k = 0; k < p.K; ++k) w[k] = s[c[k]] * norm * p.routed_scale;
}

// One block of E threads: thread e counts its assignments, thread 0 turns the counts into offsets, then thread e
// lists its rows in token order. Every thread reads the same assignment at a time, a broadcast.
__global__ void moe_plan_kernel(int32_t* offsets, int32_t* source, int32_t* row_of, const int32_t* chosen,
                                int64_t assignments, int64_t K, int E) {
  const int e = threadIdx.x;
  int32_t count = 0;
  if (e < E)
    for (int64_t i = 0; i < assignments; ++i) count += chosen[i] == e;
  __shared__ int32_t counts[1024];
  counts[e] = count;
  __syncthreads();
  if (e == 0) {
    int32_t total = 0;
    for (int x = 0; x < E; ++x) {
      offsets[x] = total;
      total += counts[x];
    }
    offsets[E] = total;
  }
  __syncthreads();
  if (e >= E) return;
  int32_t row = offsets[e];
  for (int64_t i = 0; i < assignments; ++i)
    if (chosen[i] == e) {
      source[row] = int32_t(i / K);
      row_of[i] = row++;
    }
}

__global__ void moe_gather_kernel(float* xe, const float* x, const int32_t* source, int64_t rows, int64_t d) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < rows * d) xe[i] = x[int64_t(source[i / d]) * d + i % d];
}

__global__ void moe_combine_kernel(float* y, const float* ye, const int32_t* row_of, const float* weights, int64_t N,
                                   int64_t K, int64_t d) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * d) return;
  const int64_t n = i / d, c = i % d;
  float acc = 0;
  for (int64_t k = 0; k < K; ++k) acc += (weights ? weights[n * K + k] : 1.0f) * ye[int64_t(row_of[n * K + k]) * d + c];
  y[i] += acc;
}

}  // namespace

void moe_plan(int32_t* offsets, int32_t* source, int32_t* row_of, const int32_t* chosen, int64_t N, int64_t K,
              int64_t E, cudaStream_t stream) {
  if (E < 1 || E > 1024) fail_text("moe_plan: " + std::to_string(E) + " experts; at most 1024");
  const unsigned threads = unsigned((E + 31) / 32 * 32);
  DS_LAUNCH(moe_plan_kernel, 1, threads, 0, stream, offsets, source, row_of, chosen, N * K, K, int(E));
  DS_CUDA_LAUNCHED();
}

void moe_gather(float* xe, const float* x, const int32_t* source, int64_t rows, int64_t d, cudaStream_t stream) {
  if (rows * d == 0) return;
  DS_LAUNCH(moe_gather_kernel, blocks_for(rows * d, 256), 256, 0, stream, xe, x, source, rows, d);
  DS_CUDA_LAUNCHED();
}

void moe_combine(float* y, const float* ye, const int32_t* row_of, const float* weights, int64_t N, int64_t K,
                 int64_t d, cudaStream_t stream) {
  if (N * d == 0) return;
  DS_LAUNCH(moe_combine_kernel, blocks_for(N * d, 256), 256, 0, stream, y, ye, row_of, weights, N, K, d);
  DS_CUDA_LAUNCHED();
}

void route(int32_t* chosen, float* weights, float* scores, const float* logits, const float* bias, int64_t N,
           const ModelConfig& config, cudaStream_t stream) {
  RouterParams p{};
  p.E = int(config.n_routed_experts);
  p.K = int(config.num_experts_per_tok);
  p.G = int(config.n_group);
  p.topk_group = int(config.topk_group);
  p.sigmoid = config.scoring_func == ScoringFunc::Sigmoid;
  p.limit_groups = config.topk_method != TopkMethod::Greedy && p.G > 1;
  p.top2_groups = config.topk_method == TopkMethod::NoauxTc;
  p.renormalise = config.norm_topk_prob && p.K > 1;
  p.routed_scale = float(config.routed_scaling_factor);
  if (p.E < 1 || p.E > kMaxExperts || p.K < 1 || p.K > p.E || p.G < 1 || p.G > kMaxGroups || p.E % p.G != 0 ||
      p.topk_group < 1 || p.topk_group > p.G || (p.limit_groups && p.K > p.topk_group * (p.E / p.G)))
    fail_text("route: unsupported routing (" + std::to_string(p.E) + " experts, top " + std::to_string(p.K) + ", " +
              std::to_string(p.G) + " groups, top " + std::to_string(p.topk_group) + " groups)");
  if (N == 0) return;
  DS_LAUNCH(route_kernel, blocks_for(N, 128), 128, 0, stream, chosen, weights, scores, logits, bias, N, p);
  DS_CUDA_LAUNCHED();
}

}  // namespace ds::cuda
