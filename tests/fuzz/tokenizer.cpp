// tokenizer.json: an accepted tokenizer must encode text (specials parsed or not) into ids it can decode.
#include "ds/tokenizer.h"

#include "ds/error.h"
#include "fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = ds::fuzz::scratch_file(data, size, "-tokenizer.json");
  try {
    const ds::Tokenizer tokenizer = ds::Tokenizer::load(path);
    for (const bool special : {false, true}) {
      const std::vector<uint32_t> ids = tokenizer.encode("Hello, wörld 123 <think>\xff 数学</think>  \n\t!", special);
      for (uint32_t id : ids)
        if (id >= tokenizer.vocab_size()) __builtin_trap();
      tokenizer.decode(ids, false);
    }
  } catch (const ds::Error&) {
  }
  return 0;
}
