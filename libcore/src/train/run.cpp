#include "ds/run.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/jsonl.h"

namespace fs = std::filesystem;

namespace ds {

namespace {

// The outermost directory that create_directories(path) would create; empty when path exists already.
std::string first_missing(const fs::path& path) {
  fs::path missing;
  for (fs::path p = fs::absolute(path).lexically_normal(); !p.empty() && !fs::exists(p); p = p.parent_path()) {
    missing = p;
    if (p == p.parent_path()) break;
  }
  return missing.string();
}

// Takes RUN/.lock for this process, or fails naming the process that holds it. Returns the locked descriptor.
int lock_run(const std::string& run) {
  const std::string path = run + "/.lock";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot create the run's lock: {}", path, std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char pid[32] = {};
    const ssize_t n = ::pread(fd, pid, sizeof pid - 1, 0);
    ::close(fd);
    if (err != EWOULDBLOCK) fail("{}: cannot lock: {}", path, std::strerror(err));
    std::string holder = n > 0 ? std::string(pid, size_t(n)) : "another process";
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    fail("{}: the run is in use by process {} (one process per run directory)", run, holder);
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) != ssize_t(pid.size())) {
    const int err = errno;
    ::close(fd);
    fail("{}: cannot write the run's lock: {}", path, std::strerror(err));
  }
  return fd;
}

void remove_temporaries(const std::string& run) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run + "/checkpoints", ec))
    if (entry.path().filename().string().starts_with(".tmp-")) fs::remove_all(entry.path(), ec);
}

}  // namespace

TrainingRun::TrainingRun(const std::string& path, bool resume, dist::Comm* comm) : dir_(path) {
  std::string error;
  if (!comm || comm->rank() == 0) {
    try {
      if (resume && !fs::is_directory(path)) fail("{}: nothing to resume (no such run directory)", path);
      if (!resume) created_ = first_missing(path + "/checkpoints");
      dir_.prepare();
      lock_fd_ = lock_run(path);
      remove_temporaries(path);
    } catch (const Error& e) {
      error = e.what();
    }
  }
  if (comm && comm->size() > 1) {  // every rank learns whether rank 0 holds the run
    std::vector<double> failed = {error.empty() ? 0.0 : 1.0};
    comm->all_reduce_host(failed);
    if (failed[0] > 0 && error.empty()) error = fmt::format("{}: rank 0 could not open the run", path);
  }
  try {
    if (!error.empty()) throw Error(error);
    latest_ = dir_.latest();
    if (resume && !latest_) fail("{}: nothing to resume (no latest checkpoint)", path);
    if (!resume && latest_) fail("{}: already holds a run; pass --resume to continue it", path);
  } catch (...) {
    release();  // a constructor that throws runs no destructor
    throw;
  }
}

TrainingRun::~TrainingRun() { release(); }

void TrainingRun::release() {
  std::error_code ec;
  if (!created_.empty()) fs::remove_all(created_, ec);
  created_.clear();
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = -1;
}

TrainerState::TrainerState(const std::string& checkpoint_dir) : path_(checkpoint_dir + "/trainer_state.json") {
  try {
    json_ = nlohmann::json::parse(read_file(path_));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path_, json_error(e));
  }
  if (!json_.is_object()) fail("{}: not a JSON object", path_);
  step();
  text("config_hash");
  if (!json_.contains("options") || !json_["options"].is_object()) fail("{}: \"options\" must be an object", path_);
}

int64_t TrainerState::count(const std::string& key) const {
  const auto it = json_.find(key);
  if (it == json_.end()) fail("{}: \"{}\" is missing", path_, key);
  if (!it->is_number_integer() || (!it->is_number_unsigned() && it->get<int64_t>() < 0))
    fail("{}: \"{}\" must be a non-negative integer, not {}", path_, key, it->dump());
  if (it->is_number_unsigned() && it->get<uint64_t>() > uint64_t(INT64_MAX))
    fail("{}: \"{}\" is out of range: {}", path_, key, it->dump());
  return it->get<int64_t>();
}

std::string TrainerState::text(const std::string& key) const {
  const auto it = json_.find(key);
  if (it == json_.end()) fail("{}: \"{}\" is missing", path_, key);
  if (!it->is_string()) fail("{}: \"{}\" must be a string, not {}", path_, key, it->dump());
  return it->get<std::string>();
}

NLOHMANN_JSON_SERIALIZE_ENUM(Schedule,
                             {{Schedule::Cosine, "cosine"}, {Schedule::Wsd, "wsd"}, {Schedule::Constant, "constant"}})

namespace {
std::string absolute(const std::string& path) {
  std::error_code ec;
  const bool file = path.find('/') != std::string::npos || fs::exists(path, ec);
  return file && path != "-" ? fs::absolute(path).lexically_normal().string() : path;
}
}  // namespace

RunOptions& RunOptions::add_path(const std::string& name, std::string& path) {
  options_.push_back({name, [&path] { return nlohmann::json(absolute(path)); },
                      [&path](const nlohmann::json& j) { path = j.get<std::string>(); }});
  return *this;
}

RunOptions& RunOptions::add_paths(const std::string& name, std::vector<std::string>& paths) {
  options_.push_back({name,
                      [&paths] {
                        nlohmann::json list = nlohmann::json::array();
                        for (const std::string& p : paths) list.push_back(absolute(p));
                        return list;
                      },
                      [&paths](const nlohmann::json& j) { paths = j.get<std::vector<std::string>>(); }});
  return *this;
}

RunOptions& RunOptions::add_training(ScheduleOptions& schedule, AdamWOptions& adamw, double& clip, uint64_t& seed) {
  add("lr", schedule.lr).add("min-lr-ratio", schedule.min_lr_ratio).add("warmup", schedule.warmup);
  add("schedule", schedule.kind).add("decay-fraction", schedule.decay_fraction);
  add("weight-decay", adamw.weight_decay).add("beta1", adamw.beta1).add("beta2", adamw.beta2);
  return add("clip", clip).add("seed", seed);
}

nlohmann::json RunOptions::to_json() const {
  nlohmann::json out = nlohmann::json::object();
  for (const Option& o : options_) out[o.name] = o.get();
  return out;
}

const RunOptions::Option* RunOptions::find(const std::string& name, const std::string& source) const {
  for (const Option& o : options_)
    if (o.name == name) return &o;
  fail("{}: records an option --{} that this version does not know", source, name);
}

void RunOptions::adopt(const nlohmann::json& recorded, const std::function<bool(const std::string&)>& given,
                       const std::string& source) {
  if (!recorded.is_object()) fail("{}: \"options\" must be an object", source);
  for (const auto& [name, value] : recorded.items()) {
    const Option& option = *find(name, source);
    const nlohmann::json now = option.get();
    if (given(name)) {
      if (now != value)
        usage_fail("--{} {}: the run was created with --{} {}; a resumed run keeps it (drop the option)", name,
                   now.dump(), name, value.dump());
      continue;
    }
    try {
      option.set(value);
    } catch (const nlohmann::json::exception&) {
      fail("{}: option \"{}\" has a value of the wrong type: {}", source, name, value.dump());
    }
    // A value that does not read back as itself (3.5 for a count, an unknown name) is not one this option takes.
    if (option.get() != value) {
      option.set(now);
      fail("{}: option \"{}\" has an invalid value: {}", source, name, value.dump());
    }
  }
}

void check_recorded_options(const nlohmann::json& now, const nlohmann::json& recorded, const std::string& source) {
  if (!recorded.is_object()) fail("{}: \"options\" must be an object", source);
  for (const auto& [name, value] : recorded.items()) {
    if (!now.contains(name)) fail("{}: records an option --{} that this version does not know", source, name);
    if (now[name] != value)
      fail("{}: the run was created with --{} {}, not {}; resume with the same value", source, name, value.dump(),
           now[name].dump());
  }
}

void adopt_run_options(RunOptions options, const std::string& run_dir,
                       const std::function<bool(const std::string&)>& given) {
  const std::optional<std::string> latest = RunDir(run_dir).latest();
  if (!latest) return;  // the trainer says there is nothing to resume
  const TrainerState state(*latest);
  options.adopt(state.json().at("options"), given, state.path());
}

}  // namespace ds
