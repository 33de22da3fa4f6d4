#include <doctest/doctest.h>

#include <cmath>

#include "ds/bf16.h"
#include "ds/error.h"
#include "ds/tensor.h"

using namespace ds;

TEST_CASE("bf16 rounds to nearest even and keeps NaN") {
  CHECK(bf16_to_float(float_to_bf16(1.0f)) == 1.0f);
  // 1 + 2^-8 lies exactly between two bf16 values; the even one is 1.0.
  CHECK(bf16_to_float(float_to_bf16(1.0f + 0x1p-8f)) == 1.0f);
  CHECK(bf16_to_float(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f)) == 1.0f + 0x1p-7f);
  CHECK(std::isnan(bf16_to_float(float_to_bf16(NAN))));
  CHECK(std::isinf(bf16_to_float(float_to_bf16(INFINITY))));
}

TEST_CASE("f16 conversions round trip every finite half value") {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_float(uint16_t(h));
    if (std::isnan(f)) continue;
    CHECK_MESSAGE(float_to_f16(f) == h, "half bits " << h);
  }
  CHECK(float_to_f16(65520.0f) == 0x7c00);                     // rounds up to infinity
  CHECK(f16_to_float(float_to_f16(1.0f + 0x1p-11f)) == 1.0f);  // tie to even
}

TEST_CASE("tensor conversion and shape checks") {
  std::vector<float> v = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.5f};
  Tensor t = Tensor::from_f32(v, {2, 3});
  CHECK(t.numel() == 6);
  CHECK(t.nbytes() == 24);
  Tensor b = t.to(DType::BF16);
  CHECK(b.nbytes() == 12);
  CHECK(b.to_vector<float>() == v);
  CHECK(t.to(DType::F64).to_vector<double>()[2] == 3.25);
  CHECK_THROWS_AS(Tensor::from_f32(v, {4, 2}), Error);
  CHECK_THROWS_AS(Tensor::zeros(DType::U8, {2}).to_vector<float>(), Error);
  DType d;
  CHECK(dtype_from_name("F8_E4M3", d));
  CHECK(d == DType::F8_E4M3);
  CHECK_FALSE(dtype_from_name("F4", d));
}
