#pragma once
// ParamStore: every parameter of a model in one flat array (and its gradient in another of the same layout), each
// named with its Hugging Face checkpoint name. One array makes the optimizer, gradient all-reduce and checkpoint
// code trivial, as in llm.c.
#include <string>
#include <vector>

#include "ds/model.h"

namespace ds {

template <typename T>
struct ParamStore {
  std::vector<ParamInfo> infos;
  std::vector<T> values, grads;
  int64_t size = 0;
  bool fp8 = false;          // emulate FP8 GEMMs in the linear layers that DeepSeek-V3 runs in FP8
  dist::Comm* ep = nullptr;  // the ranks the routed experts are split over (Model::set_expert_parallel)

  int64_t add(std::string name, Shape shape, ParamKind kind) {
    const int64_t offset = size;
    size += shape_numel(shape);
    infos.push_back({std::move(name), std::move(shape), offset, kind});
    return offset;
  }
  void allocate() {
    values.assign(size_t(size), T(0));
    grads.assign(size_t(size), T(0));
  }
  T* w(int64_t offset) { return values.data() + offset; }
  T* g(int64_t offset) { return grads.data() + offset; }
};

}  // namespace ds
