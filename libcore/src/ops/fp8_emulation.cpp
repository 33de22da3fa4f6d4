#include <algorithm>
#include <cmath>

#include "ds/fp8.h"
#include "ds/ops.h"

namespace ds::ops {

void fp8_round_trip(float* out, const float* in, int64_t rows, int64_t cols, Fp8Tiles tiles) {
  constexpr int64_t kTile = 128;
  const int64_t tile_rows = tiles == Fp8Tiles::Rows ? 1 : kTile;
  const int64_t tile_cols = tiles == Fp8Tiles::Columns ? 1 : kTile;
  const int64_t row_tiles = (rows + tile_rows - 1) / tile_rows, col_tiles = (cols + tile_cols - 1) / tile_cols;
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t rt = 0; rt < row_tiles; ++rt)
    for (int64_t ct = 0; ct < col_tiles; ++ct) {
      const int64_t r0 = rt * tile_rows, r1 = std::min(rows, r0 + tile_rows);
      const int64_t c0 = ct * tile_cols, c1 = std::min(cols, c0 + tile_cols);
      float amax = 0;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(in[r * cols + c]));
      // Weights: an all-zero block keeps scale 1 (as quantize_weight); activations: DeepSeek's 1e-4 floor.
      float scale = tiles == Fp8Tiles::Blocks ? amax / kE4M3Max : std::max(amax, 1e-4f) / kE4M3Max;
      if (scale == 0) scale = 1;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c)
          out[r * cols + c] = e4m3_to_float(float_to_e4m3(in[r * cols + c] / scale)) * scale;
    }
}

}  // namespace ds::ops
