// Safetensors: the header (JSON, dtypes, shapes, offsets) and the data ranges it claims. Every tensor the reader
// accepts must be readable in full.
#include "ds/safetensors.h"

#include "ds/error.h"
#include "fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = ds::fuzz::scratch_file(data, size, ".safetensors");
  try {
    const ds::safetensors::File file(path);
    for (const auto& info : file.tensors()) {
      const ds::Tensor t = file.get(info.name);
      volatile uint8_t sink = 0;  // touch every byte: out-of-bounds ranges show up under ASan
      const auto* bytes = reinterpret_cast<const uint8_t*>(t.bytes());
      for (size_t i = 0; i < t.nbytes(); ++i) sink = sink ^ bytes[i];
    }
  } catch (const ds::Error&) {
  }
  return 0;
}
