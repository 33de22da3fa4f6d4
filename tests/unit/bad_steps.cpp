// What the trainers do about steps that fail numerically: skip and count them, then stop or reload at a lower
// learning rate; the state a checkpoint keeps; and a diverged model's NaN logits still sample a valid token.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ds/bad_steps.h"
#include "ds/error.h"
#include "ds/sampler.h"

using namespace ds;

TEST_CASE("bad steps: stop after more than max_bad_steps in a row; good steps reset the count") {
  BadStepGuard guard(2, {});
  CHECK_FALSE(guard.count(true));
  CHECK_FALSE(guard.count(true));
  CHECK_FALSE(guard.count(false));  // the run of bad steps ends
  CHECK_FALSE(guard.count(true));
  CHECK_FALSE(guard.count(true));
  CHECK_THROWS_WITH_AS(guard.count(true), doctest::Contains("3 consecutive steps had a non-finite"), Error);
  CHECK(guard.bad_total() == 5);
  CHECK(guard.lr_scale() == 1.0);
}

TEST_CASE("bad steps: reload scales the learning rate, up to max_reloads, and the state round-trips") {
  BadStepGuard guard(1, {.action = OnBadSteps::Reload, .lr_factor = 0.25, .max_reloads = 2});
  CHECK_FALSE(guard.count(true));
  CHECK(guard.count(true));
  CHECK(guard.lr_scale() == 0.25);
  CHECK(guard.reloads() == 1);
  CHECK_FALSE(guard.count(true));  // the count starts again after a reload
  CHECK(guard.count(true));
  CHECK(guard.lr_scale() == 0.0625);
  nlohmann::json state = {{"step", 7}};
  guard.save(state);
  CHECK_FALSE(guard.count(true));
  CHECK_THROWS_WITH_AS(guard.count(true), doctest::Contains("after 2 reloads"), Error);

  BadStepGuard resumed(1, {.action = OnBadSteps::Reload, .lr_factor = 0.25, .max_reloads = 3});
  resumed.load(state, "trainer_state.json");
  CHECK(resumed.lr_scale() == 0.0625);
  CHECK(resumed.reloads() == 2);
  BadStepGuard old(1, {});
  old.load({{"step", 7}}, "trainer_state.json");  // written before these fields existed
  CHECK(old.lr_scale() == 1.0);
  CHECK(old.reloads() == 0);
  CHECK_THROWS_WITH_AS(old.load({{"lr_scale", "x"}}, "t.json"), doctest::Contains("t.json: bad trainer state"), Error);
  CHECK_THROWS_WITH_AS(old.load({{"lr_scale", 0.0}}, "t.json"), doctest::Contains("t.json: lr_scale"), Error);
  CHECK_THROWS_AS(BadStepGuard(1, {.lr_factor = 0}), Error);
  CHECK_THROWS_AS(BadStepGuard(1, {.lr_factor = 2}), Error);
  CHECK_THROWS_AS(BadStepGuard(-1, {}), Error);
}

TEST_CASE("sampler: NaN logits rank last, and an all-NaN row still gives a token in range") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  SamplingOptions o;
  o.temperature = 1.0;
  o.top_p = 0.9;
  Sampler s(3);
  for (int i = 0; i < 200; ++i) {
    std::vector<float> logits = {nan, 0.0f, nan, -1.0f, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan,
                                 nan, nan,  nan, nan,   nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan};
    const uint32_t t = s.sample(logits, o, {});
    CHECK((t == 1 || t == 3));
    std::vector<float> all(64, nan);
    CHECK(s.sample(all, o, {}) < 64);
  }
}
