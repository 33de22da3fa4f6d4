// FP8 block quantization of weights and activations (docs/architecture.md#fp8-format).
#include "ds/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ds/bf16.h"
#include "ds/error.h"
#include "ds/fp8.h"

namespace ds::quant {

namespace {

int64_t blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }

// Accumulates one element's error; the caller owns `e`, so threads never share one.
inline void add_error(ErrorStats& e, double original, double converted) {
  const double err = converted - original;
  e.sum_sq_error += err * err;
  e.sum_sq_ref += original * original;
  e.max_abs_error = std::max(e.max_abs_error, std::abs(err));
}

// Per-block statistics merged in block order, so the totals do not depend on the thread count.
void merge_all(ErrorStats* total, const std::vector<ErrorStats>& parts) {
  if (!total) return;
  for (const ErrorStats& p : parts) total->merge(p);
}

// BF16 and F16 share a storage type (uint16_t); these tags pick the conversion.
struct BF16Bits {
  uint16_t bits;
};
struct F16Bits {
  uint16_t bits;
};
inline float load(const float* p, int64_t i) { return p[i]; }
inline double load(const double* p, int64_t i) { return p[i]; }
inline float load(const BF16Bits* p, int64_t i) { return bf16_to_float(p[i].bits); }
inline float load(const F16Bits* p, int64_t i) { return f16_to_float(p[i].bits); }

// One row of a block, outside the OpenMP region so the compiler sees plain pointers and vectorises it.
template <typename Source>
void quantize_row(const Source* in, uint8_t* out, int64_t n, float s) {
  for (int64_t i = 0; i < n; ++i) out[i] = float_to_e4m3(float(load(in, i)) / s);
}

template <typename Source>
void add_row_error(ErrorStats& e, const Source* in, const uint8_t* q, int64_t n, float s) {
  double sum_sq_error = 0, sum_sq_ref = 0, max_abs_error = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = load(in, i), err = double(e4m3_to_float(q[i]) * s) - v;
    sum_sq_error += err * err;
    sum_sq_ref += v * v;
    max_abs_error = std::max(max_abs_error, std::abs(err));
  }
  e.merge({sum_sq_error, sum_sq_ref, max_abs_error});
}

template <typename Source>
Tensor convert_elements(const Tensor& src, DType dtype, ErrorStats* error) {
  const Source* p = reinterpret_cast<const Source*>(src.bytes());
  const int64_t n = src.numel(), chunk = 1 << 16, chunks = (n + chunk - 1) / chunk;
  Tensor out = Tensor::empty(dtype, src.shape());
  std::vector<ErrorStats> stats(error ? size_t(chunks) : 0);
  const auto run = [&](auto* dst, auto store, auto value) {
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < chunks; ++k) {
      ErrorStats e;  // local, as in quantize_blocks
      for (int64_t i = k * chunk; i < std::min(n, (k + 1) * chunk); ++i) {
        const auto v = load(p, i);
        dst[i] = store(v);
        if (error) add_error(e, v, value(dst[i]));
      }
      if (error) stats[size_t(k)] = e;
    }
  };
  if (dtype == DType::F32)
    run(
        out.data<float>(), [](auto v) { return float(v); }, [](float v) { return v; });
  else
    run(
        out.data<uint16_t>(), [](auto v) { return float_to_bf16(float(v)); }, bf16_to_float);
  merge_all(error, stats);
  return out;
}

template <typename Source>
QuantizedWeight quantize_blocks(const Tensor& w, ErrorStats* error) {
  const Source* src = reinterpret_cast<const Source*>(w.bytes());
  const int64_t rows = w.dim(0), cols = w.dim(1), row_blocks = blocks(rows), col_blocks = blocks(cols);
  QuantizedWeight out{Tensor::empty(DType::F8_E4M3, w.shape()), Tensor::empty(DType::F32, {row_blocks, col_blocks})};
  uint8_t* q = out.weight.data<uint8_t>();
  float* scale = out.scale_inv.data<float>();
  std::vector<ErrorStats> stats(error ? size_t(row_blocks * col_blocks) : 0);
  bool non_finite = false;

#pragma omp parallel for schedule(dynamic, 4) reduction(|| : non_finite)
  for (int64_t b = 0; b < row_blocks * col_blocks; ++b) {
    const int64_t r0 = b / col_blocks * kBlock, r1 = std::min(r0 + kBlock, rows);
    const int64_t c0 = b % col_blocks * kBlock, c1 = std::min(c0 + kBlock, cols);
    // amax on the bits of |x|: for non-negative floats integer order is float order, and NaN and Inf sort above
    // every finite value, so one integer max (which vectorises, unlike a float max) finds both.
    uint32_t amax_bits = 0;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) {
        const float v = float(load(src, r * cols + c));
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        amax_bits = std::max(amax_bits, bits & 0x7fffffffu);
      }
    if (amax_bits >= 0x7f800000u) {
      non_finite = true;
      continue;
    }
    float amax;
    std::memcpy(&amax, &amax_bits, 4);
    float s = amax / kE4M3Max;
    if (s == 0) s = 1;  // an all-zero (or all but zero) block: any scale gives zero codes; 1 keeps it plain
    scale[b] = s;
    ErrorStats e;  // local: neighbouring blocks' entries share cache lines across threads
    for (int64_t r = r0; r < r1; ++r) {
      quantize_row(src + r * cols + c0, q + r * cols + c0, c1 - c0, s);
      if (error) add_row_error(e, src + r * cols + c0, q + r * cols + c0, c1 - c0, s);
    }
    if (error) stats[size_t(b)] = e;
  }
  if (non_finite) fail("weight {} holds NaN or Inf", shape_str(w.shape()));
  merge_all(error, stats);
  return out;
}

}  // namespace

void ErrorStats::merge(const ErrorStats& other) {
  sum_sq_error += other.sum_sq_error;
  sum_sq_ref += other.sum_sq_ref;
  max_abs_error = std::max(max_abs_error, other.max_abs_error);
}

double ErrorStats::rel_rms() const {
  if (sum_sq_error == 0) return 0;
  return sum_sq_ref > 0 ? std::sqrt(sum_sq_error / sum_sq_ref) : INFINITY;
}

Tensor convert(const Tensor& src, DType dtype, ErrorStats* error) {
  if (dtype != DType::F32 && dtype != DType::BF16) fail("cannot convert to {}: F32 or BF16", dtype_name(dtype));
  switch (src.dtype()) {
    case DType::F32:
      return convert_elements<float>(src, dtype, error);
    case DType::F64:
      return convert_elements<double>(src, dtype, error);
    case DType::BF16:
      return convert_elements<BF16Bits>(src, dtype, error);
    case DType::F16:
      return convert_elements<F16Bits>(src, dtype, error);
    default:
      fail("cannot convert a {} tensor to {}", dtype_name(src.dtype()), dtype_name(dtype));
  }
}

QuantizedWeight quantize_weight(const Tensor& w, ErrorStats* error) {
  if (w.ndim() != 2) fail("cannot block-quantize a {}-D tensor {}: weights are 2-D", w.ndim(), shape_str(w.shape()));
  switch (w.dtype()) {
    case DType::F32:
      return quantize_blocks<float>(w, error);
    case DType::F64:
      return quantize_blocks<double>(w, error);
    case DType::BF16:
      return quantize_blocks<BF16Bits>(w, error);
    case DType::F16:
      return quantize_blocks<F16Bits>(w, error);
    default:
      fail("cannot quantize a {} tensor", dtype_name(w.dtype()));
  }
}

Tensor dequantize_weight(const Tensor& q, const Tensor& scale_inv, std::string_view what, DType dtype) {
  check_weight_scales(q, scale_inv, what);
  if (dtype != DType::F32 && dtype != DType::BF16) fail("{}: cannot dequantize to {}", what, dtype_name(dtype));
  const float* scale = scale_inv.data<float>();
  const int64_t rows = q.dim(0), cols = q.dim(1), col_blocks = scale_inv.dim(1);
  Tensor out = Tensor::empty(dtype, q.shape());
  const uint8_t* codes = q.data<uint8_t>();
  const auto run = [&](auto* dst, auto store) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* s = scale + r / kBlock * col_blocks;
      for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = store(e4m3_to_float(codes[r * cols + c]) * s[c / kBlock]);
    }
  };
  if (dtype == DType::F32)
    run(out.data<float>(), [](float v) { return v; });
  else
    run(out.data<uint16_t>(), float_to_bf16);
  return out;
}

QuantizedActivations quantize_activations(const Tensor& x, ScaleFormat format) {
  if (x.dtype() != DType::F32 || x.ndim() == 0)
    fail("activations to quantize must be F32 with at least one dimension, not {} {}", dtype_name(x.dtype()),
         shape_str(x.shape()));
  const int64_t K = x.shape().back(), groups = blocks(K), rows = K ? x.numel() / K : 0;
  Shape scale_shape = x.shape();
  scale_shape.back() = groups;
  QuantizedActivations out{Tensor::empty(DType::F8_E4M3, x.shape()), Tensor::empty(DType::F32, scale_shape)};
  const float* src = x.data<float>();
  uint8_t* q = out.values.data<uint8_t>();
  float* scales = out.scales.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * kBlock, c1 = std::min(c0 + kBlock, K);
      float amax = 0;
      for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::abs(src[r * K + c]));
      float s = std::max(amax, 1e-4f) / kE4M3Max;
      if (format == ScaleFormat::UE8M0) {
        int exponent;
        const float mantissa = std::frexp(s, &exponent);  // s = mantissa * 2^exponent, mantissa in [0.5, 1)
        s = std::ldexp(1.0f, mantissa == 0.5f ? exponent - 1 : exponent);
      }
      scales[r * groups + g] = s;
      for (int64_t c = c0; c < c1; ++c) q[r * K + c] = float_to_e4m3(src[r * K + c] / s);
    }
  return out;
}

Tensor dequantize_activations(const Tensor& values, const Tensor& scales) {
  if (values.dtype() != DType::F8_E4M3 || values.ndim() == 0)
    fail("quantized activations must be F8_E4M3 with at least one dimension, not {} {}", dtype_name(values.dtype()),
         shape_str(values.shape()));
  const int64_t K = values.shape().back(), groups = blocks(K), rows = K ? values.numel() / K : 0;
  Shape expected = values.shape();
  expected.back() = groups;
  if (scales.dtype() != DType::F32 || scales.shape() != expected)
    fail("activation scales are {} {}, the values {} need F32 {}", dtype_name(scales.dtype()),
         shape_str(scales.shape()), shape_str(values.shape()), shape_str(expected));
  Tensor out = Tensor::empty(DType::F32, values.shape());
  const uint8_t* q = values.data<uint8_t>();
  const float* s = scales.data<float>();
  float* dst = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < K; ++c) dst[r * K + c] = e4m3_to_float(q[r * K + c]) * s[r * groups + c / kBlock];
  return out;
}

Tensor read_dequantized(const safetensors::ModelFiles& files, const std::string& name, const std::string& source) {
  if (!files.find(name)) return {};
  Tensor t = files.get(name);
  if (t.dtype() != DType::F8_E4M3) return t;
  const std::string scale_name = name + "_scale_inv";
  if (!files.find(scale_name)) fail("{}: tensor '{}' is F8_E4M3 but there is no '{}'", source, name, scale_name);
  return dequantize_weight(t, files.get(scale_name), fmt::format("{}: tensor '{}'", source, name));
}

}  // namespace ds::quant
