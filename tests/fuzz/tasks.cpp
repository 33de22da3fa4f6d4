// JSONL task records ({"id", "prompt", "answer"} and their aliases).
#include "ds/tasks.h"
#include "ds/error.h"
#include "fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    ds::parse_tasks(ds::fuzz::as_text(data, size), "tasks.jsonl");
  } catch (const ds::Error&) {
  }
  return 0;
}
