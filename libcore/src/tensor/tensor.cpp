#include "ds/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>

#include "ds/bf16.h"
#include "ds/error.h"

namespace ds {

namespace {
struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F64, "F64", 8},         {DType::F32, "F32", 4}, {DType::BF16, "BF16", 2}, {DType::F16, "F16", 2},
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},   {DType::U32, "U32", 4},
    {DType::I16, "I16", 2},         {DType::U16, "U16", 2}, {DType::I8, "I8", 1},     {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
};
const DTypeInfo& info(DType dtype) {
  for (const auto& i : kDTypes)
    if (i.dtype == dtype) return i;
  throw Error("unknown dtype");
}

template <typename T>
T load_as(DType dtype, const std::byte* p, int64_t i) {
  switch (dtype) {
    case DType::F64:
      return T(reinterpret_cast<const double*>(p)[i]);
    case DType::F32:
      return T(reinterpret_cast<const float*>(p)[i]);
    case DType::BF16:
      return T(bf16_to_float(reinterpret_cast<const uint16_t*>(p)[i]));
    case DType::F16:
      return T(f16_to_float(reinterpret_cast<const uint16_t*>(p)[i]));
    default:
      fail("cannot convert a {} tensor to floating point", dtype_name(dtype));
  }
}
}  // namespace

size_t dtype_size(DType dtype) { return info(dtype).size; }
std::string_view dtype_name(DType dtype) { return info(dtype).name; }
bool dtype_from_name(std::string_view name, DType& out) {
  for (const auto& i : kDTypes)
    if (i.name == name) {
      out = i.dtype;
      return true;
    }
  return false;
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
std::string shape_str(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Tensor Tensor::empty(DType dtype, Shape shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  for (int64_t d : t.shape_)
    if (d < 0) fail("negative dimension in shape {}", shape_str(t.shape_));
  auto storage = std::shared_ptr<std::byte[]>(new std::byte[std::max<size_t>(t.nbytes(), 1)]);
  t.data_ = storage.get();
  t.owner_ = std::shared_ptr<const void>(storage, storage.get());
  return t;
}

Tensor Tensor::zeros(DType dtype, Shape shape) {
  Tensor t = empty(dtype, std::move(shape));
  std::memset(t.data_, 0, t.nbytes());
  return t;
}

Tensor Tensor::view(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> owner) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.data_ = const_cast<std::byte*>(static_cast<const std::byte*>(data));
  t.owner_ = std::move(owner);
  return t;
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  std::vector<T> out(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) out[size_t(i)] = load_as<T>(dtype_, data_, i);
  return out;
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;

Tensor Tensor::from_f32(std::span<const float> values, Shape shape) {
  Tensor t = empty(DType::F32, std::move(shape));
  if (size_t(t.numel()) != values.size()) fail("{} values do not fill shape {}", values.size(), shape_str(t.shape_));
  std::memcpy(t.data_, values.data(), t.nbytes());
  return t;
}

Tensor Tensor::from_f64(std::span<const double> values, Shape shape) {
  Tensor t = empty(DType::F64, std::move(shape));
  if (size_t(t.numel()) != values.size()) fail("{} values do not fill shape {}", values.size(), shape_str(t.shape_));
  std::memcpy(t.data_, values.data(), t.nbytes());
  return t;
}

Tensor Tensor::to(DType dtype) const {
  Tensor out = empty(dtype, shape_);
  const int64_t n = numel();
  switch (dtype) {
    case DType::F64:
      for (int64_t i = 0; i < n; ++i) out.data<double>()[i] = load_as<double>(dtype_, data_, i);
      break;
    case DType::F32:
      for (int64_t i = 0; i < n; ++i) out.data<float>()[i] = load_as<float>(dtype_, data_, i);
      break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) out.data<uint16_t>()[i] = float_to_bf16(load_as<float>(dtype_, data_, i));
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) out.data<uint16_t>()[i] = float_to_f16(load_as<float>(dtype_, data_, i));
      break;
    default:
      fail("cannot convert a {} tensor to {}", dtype_name(dtype_), dtype_name(dtype));
  }
  return out;
}

}  // namespace ds
