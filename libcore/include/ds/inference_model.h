#pragma once
// What the inference engine reads: a model's tensors by checkpoint name, each linear weight F32 or FP8 (codes and
// block scales, ds/fp8_matrix.h); and model directories loaded that way, so that an FP8 checkpoint stays FP8 in
// memory, about a quarter of the bytes of F32, and is dequantized tile by tile inside the GEMMs.
#include <map>
#include <string>
#include <vector>

#include "ds/config.h"
#include "ds/fp8_matrix.h"
#include "ds/model.h"
#include "ds/tensor.h"
#include "ds/tokenizer.h"

namespace ds {

class InferenceWeights {
 public:
  // A float model's parameters viewed in place, nothing copied: the model must outlive these weights and every
  // Engine made from them. Implicit, so that code holding a Model<float> makes an Engine as it always did.
  InferenceWeights(const Model<float>& model);  // NOLINT(google-explicit-constructor)
  // No tensors yet (add() adds them); `source` names the weights in errors.
  InferenceWeights(ModelConfig config, std::string source);

  // Adds tensor `name` of `shape`; `storage`, the tensors holding its bytes, lives as long as any copy of these
  // weights does.
  void add(const std::string& name, const Shape& shape, const WeightMatrix& matrix,
           const std::vector<Tensor>& storage = {});

  const ModelConfig& config() const { return config_; }
  // The tensor `name`, which must have `shape`; a missing or differently shaped tensor is a ds::Error naming the
  // source. A vector [n] reads as the matrix [n, 1].
  WeightMatrix matrix(const std::string& name, const Shape& shape) const;
  const float* vector(const std::string& name, int64_t n) const;  // an F32 [n] (norm weights, biases)
  int64_t bytes() const;                                          // held in memory, all tensors together
  bool fp8() const;                                               // whether any tensor is FP8

 private:
  struct Entry {
    Shape shape;
    WeightMatrix matrix;
  };
  const Entry& find(const std::string& name, const Shape& shape) const;

  ModelConfig config_;
  std::string source_;
  std::map<std::string, Entry, std::less<>> tensors_;
  std::vector<Tensor> storage_;
};

struct InferenceModel {
  std::string dir;  // the model directory actually read
  InferenceWeights weights;
  Tokenizer tokenizer;
};
// A model directory, or a run directory's latest checkpoint, for inference: F8_E4M3 weights stay FP8 with their
// weight_scale_inv (checked as fp8_matrix does; a missing or stray scale is an error), F32 tensors are used in place
// in the mapped file, and BF16, F16 and F64 ones are converted to F32. The MTP layers, which inference does not run,
// are not read. Whatever is wrong is a ds::Error naming the directory and the tensor.
InferenceModel load_inference_model(const std::string& path);

// A float model's weights as inference holds them, owned and independent of the model: F32 copies, or with fp8 the
// weights that ds-quantize --to fp8 quantizes (2-D .weight tensors outside quant::fp8_keep_patterns()) as
// quant::quantize_weight gives them and the rest F32. MTP layers are left out.
InferenceWeights inference_weights(const Model<float>& model, bool fp8);

}  // namespace ds
