#include "ds/bad_steps.h"

#include "ds/error.h"
#include "ds/jsonl.h"

namespace ds {

BadStepGuard::BadStepGuard(int64_t max_bad_steps, const BadStepOptions& options)
    : max_bad_steps_(max_bad_steps), options_(options) {
  if (max_bad_steps < 0) fail("--max-bad-steps must not be negative");
  if (!(options.lr_factor > 0 && options.lr_factor <= 1)) fail("--bad-lr-factor must be in (0, 1]");
  if (options.max_reloads < 0) fail("--max-reloads must not be negative");
}

bool BadStepGuard::count(bool bad) {
  if (!bad) {
    in_a_row_ = 0;
    return false;
  }
  ++bad_total_;
  if (++in_a_row_ <= max_bad_steps_) return false;
  if (options_.action == OnBadSteps::Stop)
    fail(
        "{} consecutive steps had a non-finite loss or gradient; stopping (last checkpoint kept; "
        "--on-bad-steps reload would retry from it at a lower learning rate)",
        in_a_row_);
  if (reloads_ >= options_.max_reloads)
    fail(
        "{} consecutive steps had a non-finite loss or gradient after {} reloads (learning rate scaled by {:g}); "
        "stopping (last checkpoint kept)",
        in_a_row_, reloads_, lr_scale_);
  in_a_row_ = 0;
  ++reloads_;
  lr_scale_ *= options_.lr_factor;
  return true;
}

void BadStepGuard::save(nlohmann::json& state) const {
  state["lr_scale"] = lr_scale_;
  state["reloads"] = reloads_;
}

void BadStepGuard::load(const nlohmann::json& state, const std::string& source) {
  try {
    lr_scale_ = state.value("lr_scale", 1.0);
    reloads_ = state.value("reloads", int64_t(0));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: bad trainer state: {}", source, json_error(e));
  }
  if (!(lr_scale_ > 0 && lr_scale_ <= 1) || reloads_ < 0)
    fail("{}: lr_scale must be in (0, 1] and reloads not negative", source);
}

}  // namespace ds
