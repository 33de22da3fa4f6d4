#pragma once
// Tensor: a dtype, a shape and contiguous row-major storage on the CPU.
// Storage is shared (copies are views of the same bytes); it can own heap memory or keep a mapped file alive.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ds {

enum class DType { F64, F32, BF16, F16, F8_E4M3, I64, I32, U32, I16, U16, I8, U8, BOOL };

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);                 // the safetensors spelling: "F32", "BF16", "F8_E4M3", ...
bool dtype_from_name(std::string_view name, DType& out);  // false for names we do not handle

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3]"

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(DType dtype, Shape shape);  // uninitialised
  static Tensor zeros(DType dtype, Shape shape);
  // A view of bytes owned by `owner` (for example a mapped file); nothing is copied.
  static Tensor view(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> owner);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t ndim() const { return shape_.size(); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool defined() const { return data_ != nullptr || numel() == 0; }

  std::byte* bytes() { return data_; }
  const std::byte* bytes() const { return data_; }
  template <typename T>
  T* data() {
    return reinterpret_cast<T*>(data_);
  }
  template <typename T>
  const T* data() const {
    return reinterpret_cast<const T*>(data_);
  }

  // Element values converted to T (from F64, F32, BF16 or F16); throws ds::Error for other dtypes.
  template <typename T>
  std::vector<T> to_vector() const;
  // A new F32 or F64 tensor from values; `shape` must match values.size().
  static Tensor from_f32(std::span<const float> values, Shape shape);
  static Tensor from_f64(std::span<const double> values, Shape shape);
  // A converted copy (F32/F64/BF16/F16 between each other).
  Tensor to(DType dtype) const;

 private:
  DType dtype_ = DType::F32;
  Shape shape_;
  std::shared_ptr<const void> owner_;
  std::byte* data_ = nullptr;
};

}  // namespace ds
