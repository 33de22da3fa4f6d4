// e4m3fn conversions against CUDA's own (tests/fixtures/fp8/e4m3.txt, made from cuda_fp8.h by make_fixture.cpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "ds/fp8.h"

using namespace ds;

namespace {

struct Run {
  uint32_t first, last;
  uint8_t code;
};

// The CUDA tables: the value of each code, and the code of every float as runs of bit patterns.
struct CudaTables {
  uint32_t decode[256] = {};
  std::vector<Run> encode;

  CudaTables() {
    std::ifstream in(std::string(DS_FIXTURES) + "/fp8/e4m3.txt");
    REQUIRE(in);
    std::string line, kind;
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      fields >> kind >> std::hex;
      if (kind == "decode") {
        unsigned code, bits;
        fields >> code >> bits;
        decode[code] = bits;
      } else if (kind == "encode") {
        unsigned first, last, code;
        fields >> first >> last >> code;
        encode.push_back({first, last, uint8_t(code)});
      }
    }
  }
  uint8_t code_of(uint32_t bits) const {
    const auto it = std::ranges::upper_bound(encode, bits, {}, &Run::first);
    return std::prev(it)->code;
  }
};

const CudaTables& cuda() {
  static const CudaTables tables;
  return tables;
}

float from_bits(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, 4);
  return x;
}

}  // namespace

TEST_CASE("the CUDA tables cover every float and every code") {
  const auto& t = cuda();
  REQUIRE(t.encode.size() >= 2);
  CHECK(t.encode.front().first == 0);
  CHECK(t.encode.back().last == 0xffffffffu);
  for (size_t i = 1; i < t.encode.size(); ++i) CHECK(t.encode[i].first == t.encode[i - 1].last + 1);
}

TEST_CASE("e4m3 to float matches CUDA for all 256 codes") {
  for (int code = 0; code < 256; ++code) {
    const float cuda_value = from_bits(cuda().decode[code]);
    const float ours = e4m3_to_float(uint8_t(code));
    if (std::isnan(cuda_value)) {
      CHECK_MESSAGE(std::isnan(ours), "code " << code);
    } else {
      uint32_t bits;
      std::memcpy(&bits, &ours, 4);
      CHECK_MESSAGE(bits == cuda().decode[code], "code " << code);  // bitwise: -0 included
    }
  }
  CHECK(e4m3_to_float(0x7e) == kE4M3Max);
  CHECK(e4m3_to_float(0x01) == 0x1p-9f);
  CHECK(e4m3_to_float(0x08) == 0x1p-6f);
}

TEST_CASE("float to e4m3 matches CUDA at both ends of every run and its neighbours") {
  // Run boundaries are exactly where rounding changes: ties, the subnormal threshold, the saturation threshold.
  for (const Run& r : cuda().encode)
    for (uint32_t bits : {r.first, r.last, r.first + (r.last - r.first) / 2}) {
      CHECK_MESSAGE(float_to_e4m3(from_bits(bits)) == r.code, std::hex << "float bits " << bits);
      if (bits > 0) CHECK(float_to_e4m3(from_bits(bits - 1)) == cuda().code_of(bits - 1));
      if (bits < 0xffffffffu) CHECK(float_to_e4m3(from_bits(bits + 1)) == cuda().code_of(bits + 1));
    }
}

TEST_CASE("float to e4m3 matches CUDA on a sweep of all floats and on random values") {
  // Every 61st bit pattern (70M floats: all classes, both signs), then random values where e4m3 is finest.
  size_t mismatches = 0;
  for (uint64_t bits = 0; bits <= 0xffffffffu; bits += 61)
    mismatches += float_to_e4m3(from_bits(uint32_t(bits))) != cuda().code_of(uint32_t(bits));
  CHECK(mismatches == 0);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> wide(-600.0f, 600.0f), narrow(-0.05f, 0.05f);
  for (int i = 0; i < 1'000'000; ++i)
    for (float x : {wide(rng), narrow(rng), std::ldexp(narrow(rng), -4)}) {
      uint32_t bits;
      std::memcpy(&bits, &x, 4);
      mismatches += float_to_e4m3(x) != cuda().code_of(bits);
    }
  CHECK(mismatches == 0);
}

TEST_CASE("float to e4m3 on each input class") {
  CHECK(float_to_e4m3(0.0f) == 0x00);
  CHECK(float_to_e4m3(-0.0f) == 0x80);
  CHECK(float_to_e4m3(448.0f) == 0x7e);
  CHECK(float_to_e4m3(-448.0f) == 0xfe);
  CHECK(float_to_e4m3(463.99f) == 0x7e);  // below 464 it rounds to 448
  CHECK(float_to_e4m3(464.0f) == 0x7e);   // the tie with 480 (a NaN code) goes to even 448 anyway
  CHECK(float_to_e4m3(1e30f) == 0x7e);    // saturates
  CHECK(float_to_e4m3(INFINITY) == 0x7e);
  CHECK(float_to_e4m3(-INFINITY) == 0xfe);
  CHECK(float_to_e4m3(NAN) == 0x7f);
  CHECK(float_to_e4m3(-NAN) == 0x7f);              // as CUDA: the sign of a NaN is dropped
  CHECK(float_to_e4m3(1.0f + 1.0f / 16) == 0x38);  // tie between 1 and 1.125: even mantissa 0
  CHECK(float_to_e4m3(1.0f + 3.0f / 16) == 0x3a);  // tie between 1.125 and 1.25: even mantissa 2
  CHECK(float_to_e4m3(0x1p-10f) == 0x00);          // half the smallest subnormal: a tie to zero
  CHECK(float_to_e4m3(0x1.000002p-10f) == 0x01);
  CHECK(float_to_e4m3(3 * 0x1p-10f) == 0x02);  // tie between subnormals 1 and 2: even
  CHECK(float_to_e4m3(-0x1p-40f) == 0x80);     // underflow keeps the sign
  CHECK(float_to_e4m3(0x1p-149f) == 0x00);     // float subnormal input
}

TEST_CASE("every finite e4m3 value converts back to its code") {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;
    CHECK(float_to_e4m3(e4m3_to_float(uint8_t(code))) == code);
  }
}
