// config.json: parsed as JSON, then validated as a DeepseekV3/V2 config; an accepted config must count its
// parameters without overflow (UBSan) and describe a buildable model.
#include <nlohmann/json.hpp>

#include "ds/config.h"
#include "ds/error.h"
#include "fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(ds::fuzz::as_text(data, size), nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    const ds::ModelConfig config = ds::config_from_json(j, "config.json");
    ds::count_params(config);
    ds::config_from_json(ds::config_to_json(config), "round trip");
  } catch (const ds::Error&) {
  }
  return 0;
}
