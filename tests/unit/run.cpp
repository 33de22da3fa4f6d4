// A training run directory: its lock, new-or-resume, what a refused start leaves behind, the strict reading of
// trainer_state.json, and recorded options taken over on resume.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>

#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/optim.h"
#include "ds/run.h"
#include "temp_dir.h"

using namespace ds;
namespace fs = std::filesystem;

namespace {

struct Fields {
  int64_t batch = 8;
  double lr = 3e-3;
  std::string data = "builtin:arith";
  std::vector<std::string> shards;
  bool fp8 = false;
};

RunOptions bind(Fields& f) {
  RunOptions r;
  return r.add("batch", f.batch)
      .add("lr", f.lr)
      .add_path("data", f.data)
      .add_paths("shards", f.shards)
      .add("fp8", f.fp8);
}

auto given(std::initializer_list<std::string> names) {
  return [names](const std::string& name) { return std::find(names.begin(), names.end(), name) != names.end(); };
}

// A checkpoint directory that `latest` points to, holding the given trainer state.
std::string checkpoint_with(const TempDir& tmp, const std::string& state) {
  const std::string dir = tmp / "run/checkpoints/step-00000001";
  fs::create_directories(dir);
  write_file_atomic(dir + "/trainer_state.json", state);
  fs::create_directory_symlink("checkpoints/step-00000001", tmp / "run/latest");
  return dir;
}

}  // namespace

TEST_CASE("recorded options are taken over unless given again, and given again they must agree") {
  Fields created{.batch = 4, .lr = 1e-3, .data = "builtin:arith", .shards = {"/data/a.tok"}, .fp8 = true};
  const nlohmann::json recorded = bind(created).to_json();
  CHECK(recorded["shards"] == nlohmann::json::array({"/data/a.tok"}));

  Fields now;  // defaults, as a resume that names nothing sees them
  bind(now).adopt(recorded, given({}), "state");
  CHECK(now.batch == 4);
  CHECK(now.lr == 1e-3);
  CHECK(now.fp8);
  CHECK(now.shards == std::vector<std::string>{"/data/a.tok"});

  Fields same;
  same.batch = 4;  // given again with the recorded value
  bind(same).adopt(recorded, given({"batch"}), "state");
  CHECK(same.lr == 1e-3);

  Fields other;
  other.batch = 16;
  CHECK_THROWS_WITH_AS(bind(other).adopt(recorded, given({"batch"}), "state"),
                       doctest::Contains("--batch 16: the run was created with --batch 4"), UsageError);
  // A value given again that is not a trajectory option (steps, threads) is not in the record at all.
  CHECK_NOTHROW(check_recorded_options(bind(now).to_json(), recorded, "state"));
  now.lr = 2e-3;
  CHECK_THROWS_WITH_AS(check_recorded_options(bind(now).to_json(), recorded, "state"), doctest::Contains("--lr"),
                       Error);
  CHECK_THROWS_WITH(check_recorded_options(bind(now).to_json(), {{"stpes", 3}}, "state"), doctest::Contains("--stpes"));
}

TEST_CASE("a record that does not fit its options is an error naming it") {
  Fields f;
  CHECK_THROWS_WITH(bind(f).adopt({{"batch", "eight"}}, given({}), "s.json"), doctest::Contains("\"batch\""));
  CHECK_THROWS_WITH(bind(f).adopt({{"batch", 3.5}}, given({}), "s.json"), doctest::Contains("invalid value: 3.5"));
  CHECK(f.batch == 8);  // a value refused leaves the option as it was
  CHECK_THROWS_WITH(bind(f).adopt({{"stpes", 3}}, given({}), "s.json"), doctest::Contains("--stpes"));
  CHECK_THROWS_WITH(bind(f).adopt(nlohmann::json::array(), given({}), "s.json"), doctest::Contains("object"));
}

TEST_CASE("paths are recorded absolute; names stay as they are") {
  TempDir tmp;
  const fs::path cwd = fs::current_path();
  fs::current_path(tmp.path);
  write_file_atomic("local.tok", std::string("x"));
  Fields f;
  f.data = "local.tok", f.shards = {"sub/b.tok", "-"};
  const nlohmann::json j = bind(f).to_json();
  fs::current_path(cwd);
  CHECK(j["data"] == (tmp.path / "local.tok").string());
  CHECK(j["shards"][0] == (tmp.path / "sub/b.tok").string());
  CHECK(j["shards"][1] == "-");
  Fields names;
  names.data = "builtin:arith:train";
  CHECK(bind(names).to_json()["data"] == "builtin:arith:train");
}

TEST_CASE("trainer_state.json is read strictly") {
  TempDir tmp;
  const char* good = R"({"step": 5, "config_hash": "00ff", "options": {}, "data_cursor": 7})";
  const std::string dir = checkpoint_with(tmp, good);
  const TrainerState state(dir);
  CHECK(state.step() == 5);
  CHECK(state.count("data_cursor") == 7);
  CHECK_THROWS_WITH(state.count("tokens_seen"), doctest::Contains("\"tokens_seen\" is missing"));
  CHECK_THROWS_WITH(state.count("config_hash"), doctest::Contains("non-negative integer"));

  for (const char* bad :
       {R"({"step": -100, "config_hash": "00ff", "options": {}})",
        R"({"step": 1.5, "config_hash": "00ff", "options": {}})", R"({"step": 1, "config_hash": 7, "options": {}})",
        R"({"step": 1, "config_hash": "00ff", "options": []})", R"([1, 2])", "{\"step\": \xff"}) {
    write_file_atomic(dir + "/trainer_state.json", std::string(bad));
    CHECK_THROWS_WITH_AS(TrainerState{dir}, doctest::Contains("trainer_state.json"), Error);
  }
}

TEST_CASE("one process per run: a second open fails naming the holder, a closed one's lock is taken over") {
  TempDir tmp;
  const std::string run = tmp / "run";
  {
    TrainingRun first(run, false);
    first.started();
    const std::string holder = fmt::format("in use by process {}", ::getpid());
    CHECK_THROWS_WITH(TrainingRun(run, false), doctest::Contains(holder.c_str()));
  }
  TrainingRun again(run, false);  // the lock went with the first
  CHECK(fs::exists(run + "/checkpoints"));
}

TEST_CASE("a new run refused before it started leaves nothing behind") {
  TempDir tmp;
  const std::string run = tmp / "a/b/run";
  { TrainingRun refused(run, false); }
  CHECK_FALSE(fs::exists(tmp / "a"));
  {
    TrainingRun kept(run, false);
    kept.started();
  }
  CHECK(fs::exists(run));
  // A directory that was there before keeps existing whatever happens to the run.
  const std::string mine = tmp / "mine";
  fs::create_directories(mine);
  { TrainingRun refused(mine, false); }
  CHECK(fs::exists(mine));
  CHECK_FALSE(fs::exists(mine + "/checkpoints"));
}

TEST_CASE("new or resume, and temporary checkpoints of killed writers are removed") {
  TempDir tmp;
  CHECK_THROWS_WITH(TrainingRun(tmp / "none", true), doctest::Contains("nothing to resume"));
  CHECK_FALSE(fs::exists(tmp / "none"));
  checkpoint_with(tmp, R"({"step": 1, "config_hash": "00ff", "options": {}})");
  fs::create_directories(tmp / "run/checkpoints/.tmp-step-00000002-999");
  CHECK_THROWS_WITH(TrainingRun(tmp / "run", false), doctest::Contains("already holds a run"));
  const TrainingRun resumed(tmp / "run", true);
  REQUIRE(resumed.resumed_from());
  CHECK(fs::path(*resumed.resumed_from()).filename() == "step-00000001");
  CHECK_FALSE(fs::exists(tmp / "run/checkpoints/.tmp-step-00000002-999"));
}
