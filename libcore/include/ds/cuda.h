#pragma once
// Devices: what `--device` names ("cpu", "cuda", "cuda:N") and, in builds with CUDA (DS_CUDA), making one current.
// Parsing is plain C++ so every build checks the spelling the same way.
#include <string>
#include <string_view>

namespace ds {

#ifdef DS_CUDA
inline constexpr bool kCudaBuild = true;
#else
inline constexpr bool kCudaBuild = false;
#endif

struct Device {
  bool cuda = false;
  int index = 0;             // the CUDA device ordinal; 0 for the CPU
  std::string name() const;  // "cpu" or "cuda:N"
};

// "cpu", "cuda" (= cuda:0) or "cuda:N" with N a decimal ordinal; anything else is a ds::Error naming the text.
Device parse_device(std::string_view spec);

#ifdef DS_CUDA
namespace cuda {
// CUDA devices present: 0 when there is no GPU or no driver.
int device_count();
// Makes device `index` current for the calling thread: ds::Error "no CUDA device for cuda:N" when there is none, or
// naming the ordinal and the count when it is out of range.
void select_device(int index);
}  // namespace cuda
#endif

}  // namespace ds
