// FP8 e4m3 quantisation in DeepSeek-V3's tiles, writing the layouts of fp8_layout.h. The arithmetic is the CPU's
// (amax in float, scale = amax / 448, code = e4m3(x / scale) with IEEE division), so codes and scales match it bit
// for bit.
#include "common.cuh"
#include "cuda_ops.h"
#include "fp8_layout.h"

namespace ds::cuda {

namespace {

constexpr int kTile = int(kFp8Tile);

// Activations and gradients: DeepSeek's 1e-4 floor on amax.
__device__ inline float group_scale(float amax) { return fmaxf(amax, 1e-4f) / 448.0f; }
// Weights: an all-zero block keeps scale 1 (as quant::quantize_weight).
__device__ inline float block_scale(float amax) {
  const float s = amax / 448.0f;
  return s == 0.0f ? 1.0f : s;
}

// One warp per (row, group of 128 columns); lane l holds columns l, l+32, l+64, l+96 of the group.
template <typename T>
__global__ void quantize_groups_kernel(uint8_t* codes, float* scales, const T* x, int64_t rows, int64_t cols) {
  const int64_t groups = (cols + kTile - 1) / kTile;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= rows * groups) return;  // whole warps leave together
  const int64_t row = warp / groups, group = warp % groups;
  float v[4];
  float amax = 0;
  for (int i = 0; i < 4; ++i) {
    const int64_t c = group * kTile + lane + 32 * i;
    v[i] = c < cols ? to_float(x[row * cols + c]) : 0.0f;
    amax = fmaxf(amax, fabsf(v[i]));
  }
  const float s = group_scale(warp_max(amax));
  for (int i = 0; i < 4; ++i) {
    const int64_t c = group * kTile + lane + 32 * i;
    if (c < cols) codes[row * cols + c] = to_e4m3(v[i] / s);
  }
  if (lane == 0) scales[group * rows + row] = s;
}

// A tile of 128 rows x 32 columns of x per block of 32 x 8 threads: read along rows of x, written along rows of
// x^T, one group (one scale) per column.
template <typename T>
__global__ void quantize_groups_transposed_kernel(uint8_t* codes, float* scales, const T* x, int64_t rows,
                                                  int64_t cols) {
  __shared__ float tile[kTile][33];  // 33: columns of the tile fall in different banks
  __shared__ float tile_scale[32];
  const int64_t r0 = int64_t(blockIdx.y) * kTile, c0 = int64_t(blockIdx.x) * 32;
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int i = ty; i < kTile; i += 8) {
    const int64_t r = r0 + i, c = c0 + tx;
    tile[i][tx] = r < rows && c < cols ? to_float(x[r * cols + c]) : 0.0f;
  }
  __syncthreads();
  for (int j = ty; j < 32; j += 8) {  // warp ty: columns ty, ty+8, ty+16, ty+24
    float amax = 0;
    for (int i = tx; i < kTile; i += 32) amax = fmaxf(amax, fabsf(tile[i][j]));
    amax = warp_max(amax);
    if (tx == 0) tile_scale[j] = group_scale(amax);
  }
  __syncthreads();
  for (int j = ty; j < 32; j += 8) {
    const int64_t c = c0 + j;
    if (c >= cols) continue;
    const float s = tile_scale[j];
    for (int i = tx; i < kTile; i += 32)
      if (r0 + i < rows) codes[c * rows + r0 + i] = to_e4m3(tile[i][j] / s);
    if (tx == 0) scales[int64_t(blockIdx.y) * cols + c] = s;
  }
}

// The amax of the 128x128 block (blockIdx.y, blockIdx.x) of w, by 256 threads: thread t reads column t % 128 of
// every other row.
template <typename T>
__device__ float block_amax(const T* w, int64_t rows, int64_t cols) {
  __shared__ float shared[32];
  const int64_t r0 = int64_t(blockIdx.y) * kTile, c = int64_t(blockIdx.x) * kTile + threadIdx.x % kTile;
  float amax = 0;
  if (c < cols)
    for (int64_t r = r0 + threadIdx.x / kTile; r < rows && r < r0 + kTile; r += 2)
      amax = fmaxf(amax, fabsf(to_float(w[r * cols + c])));
  return block_reduce<true>(amax, shared);
}

template <typename T>
__global__ void quantize_blocks_kernel(uint8_t* codes, float* scales, const T* w, int64_t rows, int64_t cols,
                                       int64_t scale_stride) {
  const float s = block_scale(block_amax(w, rows, cols));
  const int64_t r0 = int64_t(blockIdx.y) * kTile, c = int64_t(blockIdx.x) * kTile + threadIdx.x % kTile;
  if (c < cols)
    for (int64_t r = r0 + threadIdx.x / kTile; r < rows && r < r0 + kTile; r += 2)
      codes[r * cols + c] = to_e4m3(to_float(w[r * cols + c]) / s);
  if (threadIdx.x == 0) scales[blockIdx.y * scale_stride + blockIdx.x] = s;
}

// As quantize_blocks_kernel, writing w^T through 32x32 sub-tiles in shared memory so both sides stay coalesced.
template <typename T>
__global__ void quantize_blocks_transposed_kernel(uint8_t* codes, float* scales, const T* w, int64_t rows, int64_t cols,
                                                  int64_t scale_stride) {
  __shared__ float tile[32][33];
  const float s = block_scale(block_amax(w, rows, cols));
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;  // 32 x 8
  const int64_t r0 = int64_t(blockIdx.y) * kTile, c0 = int64_t(blockIdx.x) * kTile;
  for (int sy = 0; sy < kTile; sy += 32)
    for (int sx = 0; sx < kTile; sx += 32) {
      for (int i = ty; i < 32; i += 8) {
        const int64_t r = r0 + sy + i, c = c0 + sx + tx;
        tile[i][tx] = r < rows && c < cols ? to_float(w[r * cols + c]) : 0.0f;
      }
      __syncthreads();
      for (int i = ty; i < 32; i += 8) {
        const int64_t c = c0 + sx + i, r = r0 + sy + tx;  // element (r, c) of w is (c, r) of w^T
        if (c < cols && r < rows) codes[c * rows + r] = to_e4m3(tile[tx][i] / s);
      }
      __syncthreads();
    }
  if (threadIdx.x == 0) scales[blockIdx.x * scale_stride + blockIdx.y] = s;
}

void check_grid(int64_t blocks, const char* what) {
  if (blocks > 65535) fail_text(std::string(what) + ": more than 65535 x 128 rows in one call");
}

}  // namespace

template <typename T>
void quantize_groups(uint8_t* codes, float* scales, const T* x, int64_t rows, int64_t cols, cudaStream_t stream) {
  const int64_t warps = rows * fp8_tiles(cols);
  if (warps == 0) return;
  DS_LAUNCH(quantize_groups_kernel, blocks_for(warps * 32, 256), 256, 0, stream, codes, scales, x, rows, cols);
  DS_CUDA_LAUNCHED();
}

template <typename T>
void quantize_groups_transposed(uint8_t* codes, float* scales, const T* x, int64_t rows, int64_t cols,
                                cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  check_grid(fp8_tiles(rows), "quantize_groups_transposed");
  const dim3 grid(blocks_for(cols, 32), unsigned(fp8_tiles(rows)));
  DS_LAUNCH(quantize_groups_transposed_kernel, grid, dim3(32, 8), 0, stream, codes, scales, x, rows, cols);
  DS_CUDA_LAUNCHED();
}

template <typename T>
void quantize_blocks(uint8_t* codes, float* scales, const T* w, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  check_grid(fp8_tiles(rows), "quantize_blocks");
  // The padding of each scale row is never read by the GEMM; zeroed so the buffer holds no garbage.
  DS_CUDA_CHECK(
      cudaMemsetAsync(scales, 0, size_t(fp8_scale_count(Fp8Scaling::Blocks, rows, cols)) * sizeof(float), stream));
  const dim3 grid(unsigned(fp8_tiles(cols)), unsigned(fp8_tiles(rows)));
  DS_LAUNCH(quantize_blocks_kernel, grid, 256, 0, stream, codes, scales, w, rows, cols, fp8_block_scale_stride(cols));
  DS_CUDA_LAUNCHED();
}

template <typename T>
void quantize_blocks_transposed(uint8_t* codes, float* scales, const T* w, int64_t rows, int64_t cols,
                                cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  check_grid(fp8_tiles(rows), "quantize_blocks_transposed");
  DS_CUDA_CHECK(
      cudaMemsetAsync(scales, 0, size_t(fp8_scale_count(Fp8Scaling::Blocks, cols, rows)) * sizeof(float), stream));
  const dim3 grid(unsigned(fp8_tiles(cols)), unsigned(fp8_tiles(rows)));
  DS_LAUNCH(quantize_blocks_transposed_kernel, grid, 256, 0, stream, codes, scales, w, rows, cols,
            fp8_block_scale_stride(rows));
  DS_CUDA_LAUNCHED();
}

#define DS_INSTANTIATE(T)                                                                                  \
  template void quantize_groups<T>(uint8_t*, float*, const T*, int64_t, int64_t, cudaStream_t);            \
  template void quantize_groups_transposed<T>(uint8_t*, float*, const T*, int64_t, int64_t, cudaStream_t); \
  template void quantize_blocks<T>(uint8_t*, float*, const T*, int64_t, int64_t, cudaStream_t);            \
  template void quantize_blocks_transposed<T>(uint8_t*, float*, const T*, int64_t, int64_t, cudaStream_t);
DS_INSTANTIATE(float)
DS_INSTANTIATE(__nv_bfloat16)

}  // namespace ds::cuda
