// Token shards, raw or zstd (the first byte picks which, so both decoders are reached).
#include "ds/shards.h"

#include "ds/error.h"
#include "fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = ds::fuzz::scratch_file(data, size, ".tok");
  try {
    const std::vector<uint32_t> ids = ds::read_tokens(path);
    ds::check_token_range(path, ids, 1000);
  } catch (const ds::Error&) {
  }
  return 0;
}
