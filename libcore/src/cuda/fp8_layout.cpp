#include <cstddef>

#include "fp8_layout.h"

namespace ds::cuda {

int64_t fp8_scale_count(Fp8Scaling scaling, int64_t rows, int64_t K) {
  return scaling == Fp8Scaling::Groups ? fp8_tiles(K) * rows : fp8_tiles(rows) * fp8_block_scale_stride(K);
}

int64_t fp8_scale_index(Fp8Scaling scaling, int64_t rows, int64_t K, int64_t row, int64_t k) {
  return scaling == Fp8Scaling::Groups ? k / kFp8Tile * rows + row
                                       : row / kFp8Tile * fp8_block_scale_stride(K) + k / kFp8Tile;
}

namespace {
// Visits every scale as (index in the CPU layout, index in the GPU layout).
template <typename F>
void for_each_scale(Fp8Scaling scaling, int64_t rows, int64_t K, F&& f) {
  const int64_t kt = fp8_tiles(K);
  const int64_t rt = scaling == Fp8Scaling::Groups ? rows : fp8_tiles(rows);
  const int64_t row_step = scaling == Fp8Scaling::Groups ? 1 : kFp8Tile;
  for (int64_t r = 0; r < rt; ++r)
    for (int64_t t = 0; t < kt; ++t) f(r * kt + t, fp8_scale_index(scaling, rows, K, r * row_step, t * kFp8Tile));
}
}  // namespace

std::vector<float> fp8_scales_to_gpu(Fp8Scaling scaling, const float* scales, int64_t rows, int64_t K) {
  std::vector<float> out(static_cast<size_t>(fp8_scale_count(scaling, rows, K)), 0.0f);
  for_each_scale(scaling, rows, K, [&](int64_t cpu, int64_t gpu) { out[size_t(gpu)] = scales[cpu]; });
  return out;
}

std::vector<float> fp8_scales_from_gpu(Fp8Scaling scaling, const float* scales, int64_t rows, int64_t K) {
  const int64_t rt = scaling == Fp8Scaling::Groups ? rows : fp8_tiles(rows);
  std::vector<float> out(static_cast<size_t>(rt * fp8_tiles(K)));
  for_each_scale(scaling, rows, K, [&](int64_t cpu, int64_t gpu) { out[size_t(cpu)] = scales[gpu]; });
  return out;
}

}  // namespace ds::cuda
