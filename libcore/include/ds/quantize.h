#pragma once
// Fine-grained FP8 quantization as DeepSeek-V3 does it (docs/architecture.md#fp8), and ds-quantize's model conversion.
//
// Weights: 128x128 blocks. W [out, in] becomes e4m3 codes of the same shape and an F32 `weight_scale_inv`
// [ceil(out/128), ceil(in/128)] holding each block's dequantization multiplier amax/448; W ~ e4m3(q) * scale_inv.
// Activations: 1x128 groups along the last dimension, one scale per token per group, with the 1e-4 amax floor of
// DeepSeek's act_quant. Edge blocks and groups are as if zero-padded: their scale comes from the elements present.
//
// Every function runs over blocks (or rows) on all OpenMP threads and gives the same bytes for any thread count.
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "ds/fp8_matrix.h"
#include "ds/safetensors.h"
#include "ds/tensor.h"

namespace ds::quant {

// How far converted values are from the originals, summed so that tensors and blocks merge exactly.
struct ErrorStats {
  double sum_sq_error = 0;  // sum of (converted - original)^2
  double sum_sq_ref = 0;    // sum of original^2
  double max_abs_error = 0;
  void merge(const ErrorStats& other);
  double rel_rms() const;  // sqrt(sum_sq_error / sum_sq_ref); 0 for an all-zero original converted exactly
};

// A copy of an F64, F32, BF16 or F16 tensor as F32 or BF16 (round to nearest even). With `error`, adds how far the
// copy is from the source.
Tensor convert(const Tensor& src, DType dtype, ErrorStats* error = nullptr);

struct QuantizedWeight {
  Tensor weight;     // F8_E4M3 [out, in]
  Tensor scale_inv;  // F32 weight_scale_shape(weight)
};
// Quantizes a 2-D F32, BF16, F16 or F64 weight: scale_inv = amax/448 per block and q = e4m3(w / scale_inv), so each
// block's largest magnitude maps to 448. A block whose amax/448 is 0 in F32 (all zeros, or nothing above 3e-43)
// gets scale_inv = 1 and all-zero codes, so nothing divides by zero and the scale stays a plain positive number.
// NaN or Inf in w is a ds::Error. With `error`, adds how far dequantize_weight(result) is from w.
QuantizedWeight quantize_weight(const Tensor& w, ErrorStats* error = nullptr);

// w[i, j] = e4m3(q[i, j]) * scale_inv[i/128, j/128], rounded to `dtype` (F32 or BF16), after check_weight_scales.
Tensor dequantize_weight(const Tensor& q, const Tensor& scale_inv, std::string_view what = "weight",
                         DType dtype = DType::F32);

enum class ScaleFormat {
  F32,    // s = max(amax, 1e-4) / 448
  UE8M0,  // s rounded up to a power of two (DeepSeek-V3.1's scale_fmt "ue8m0"), so scaling is exact
};
struct QuantizedActivations {
  Tensor values;  // F8_E4M3, the shape of x
  Tensor scales;  // F32 [..., ceil(K/128)]: x ~ e4m3(values) * scales per group
};
// Quantizes x [..., K] (F32) per token in 1x128 groups along K; q = e4m3(x / s).
QuantizedActivations quantize_activations(const Tensor& x, ScaleFormat format = ScaleFormat::F32);
Tensor dequantize_activations(const Tensor& values, const Tensor& scales);  // F32, the shape of values

// A model tensor as a model wants it: F8_E4M3 weights come back dequantized to F32 with their `NAME_scale_inv`
// (a missing, mismatched or stray scale is a ds::Error naming the directory and tensor); anything else as stored.
// Undefined when absent. This is how load_model_dir reads FP8 checkpoints.
Tensor read_dequantized(const safetensors::ModelFiles& files, const std::string& name, const std::string& source);

// ---- Model conversion (ds-quantize) ----

enum class Target { F32, BF16, FP8 };
bool parse_target(std::string_view name, Target& out);  // "f32", "bf16", "fp8"

// The tensors DeepSeek's released FP8 checkpoint keeps in high precision: embeddings, norms, the router
// gate and its correction bias, lm_head, and the MTP layers' eh_proj, enorm, hnorm and shared_head.
// Regular expressions (ds/regex.h) searched for in tensor names; fp8_keeps tells whether one matches.
const std::vector<std::string>& fp8_keep_patterns();
bool fp8_keeps(const std::string& name);

struct ConvertOptions {
  Target to = Target::FP8;
  // Tensors whose name matches one of these (searched, PCRE2) keep their input dtype, in addition to the
  // target's own rules: for FP8 fp8_keep_patterns() and every tensor that is not a 2-D `.weight`; for BF16 the
  // router's e_score_correction_bias, which stays F32 as in DeepSeek's checkpoints.
  std::vector<std::string> keep;
  uint64_t max_shard_bytes = 5'000'000'000;  // 0: one file
};

struct TensorReport {
  std::string name;
  DType from, to;
  Shape shape;
  uint64_t bytes_in = 0, bytes_out = 0;  // each including its weight_scale_inv, if any
  ErrorStats error;                      // of the output's values against the input's
};
struct ConvertReport {
  std::vector<TensorReport> tensors;  // by name; scale tensors are folded into their weight
  uint64_t bytes_in = 0, bytes_out = 0;
  ErrorStats error;
  size_t shards = 0;
};

// Writes a copy of the model directory `model` (or a run directory's latest checkpoint) converted to options.to into
// `out`, tensor by tensor from the mapped input so memory stays near one tensor, with quantization_config in
// config.json exactly when the output holds FP8 weights, plus the tokenizer files, generation_config.json and any
// model code (*.py). `out` must not exist and must not lie inside `model`; it appears complete or not at all (built
// in a temporary sibling directory, then renamed). `progress(done, total)` is called after each tensor.
ConvertReport convert_model(const std::string& model, const std::string& out, const ConvertOptions& options,
                            const std::function<void(size_t, size_t)>& progress = {});

// "5GB", "100MB", "64KiB", "1000" (bytes; K/M/G/T are powers of 1000, Ki/Mi/Gi/Ti of 1024, case-insensitive, the B
// optional). Throws ds::Error for anything else.
uint64_t parse_byte_size(std::string_view text);

}  // namespace ds::quant
