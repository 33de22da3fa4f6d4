#include <charconv>

#include "ds/cuda.h"
#include "ds/error.h"

namespace ds {

std::string Device::name() const { return cuda ? "cuda:" + std::to_string(index) : "cpu"; }

Device parse_device(std::string_view spec) {
  if (spec == "cpu") return {};
  if (spec == "cuda") return {true, 0};
  constexpr std::string_view prefix = "cuda:";
  if (spec.starts_with(prefix)) {
    const std::string_view digits = spec.substr(prefix.size());
    int index = -1;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (!digits.empty() && ec == std::errc() && end == digits.data() + digits.size() && index >= 0)
      return {true, index};
  }
  fail("device '{}' is not cpu, cuda or cuda:N", spec);
}

}  // namespace ds
