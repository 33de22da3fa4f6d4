#include "ds/reward_cmd.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>

#include "ds/error.h"
#include "ds/jsonl.h"

extern char** environ;

namespace ds {

namespace {

using Clock = std::chrono::steady_clock;

// SIGPIPE blocked in this thread while we write to the child, so a rewarder that dies makes write() fail with EPIPE
// instead of killing us; a SIGPIPE raised meanwhile is consumed before the old mask returns.
class SigpipeBlock {
 public:
  SigpipeBlock() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~SigpipeBlock() {
    if (!was_pending_) {
      const timespec zero{0, 0};
      while (sigtimedwait(&pipe_, nullptr, &zero) == SIGPIPE) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }

 private:
  sigset_t pipe_, old_;
  bool was_pending_ = false;
};

// A piece of the command's output for a one-line message: at most 80 characters, newlines and bytes that are not
// text escaped.
std::string shorten(std::string_view s) { return s.size() <= 80 ? printable(s) : printable(s.substr(0, 77)) + "..."; }

}  // namespace

RewardCommand::RewardCommand(std::string command, double timeout_s)
    : command_(std::move(command)), timeout_s_(timeout_s) {
  if (timeout_s_ <= 0) fail("--reward-timeout must be positive, not {}", timeout_s_);
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) fail("reward command '{}': pipe: {}", command_, std::strerror(errno));
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(in[0]), close(in[1]);
    fail("reward command '{}': pipe: {}", command_, std::strerror(errno));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  // Its own process group: a terminal's Ctrl-C reaches only us (we save a checkpoint, then stop it), and a kill
  // reaches everything the shell started.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setpgroup(&attr, 0);
  sigset_t none, defaults;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  const char* argv[] = {"sh", "-c", command_.c_str(), nullptr};
  const int err = posix_spawn(&pid_, "/bin/sh", &actions, &attr, const_cast<char* const*>(argv), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  close(in[0]), close(out[1]);
  in_ = in[1], out_ = out[0];
  if (err != 0) {
    pid_ = -1;
    close(in_), close(out_);
    fail("reward command '{}': cannot start /bin/sh: {}", command_, std::strerror(err));
  }
  fcntl(in_, F_SETFL, fcntl(in_, F_GETFL) | O_NONBLOCK);
  fcntl(out_, F_SETFL, fcntl(out_, F_GETFL) | O_NONBLOCK);
}

RewardCommand::~RewardCommand() { stop(false); }

std::vector<RewardReply> RewardCommand::score(const std::vector<RewardSample>& samples) {
  if (pid_ < 0) fail("reward command '{}': stopped after an earlier error", command_);
  std::string request;
  for (const RewardSample& s : samples)
    request +=
        to_jsonl({{"id", s.id}, {"prompt", s.prompt}, {"completion", s.completion}, {"answer", s.answer}}) + "\n";
  const SigpipeBlock guard;
  std::vector<RewardReply> replies;
  size_t written = 0;
  auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
  while (replies.size() < samples.size()) {
    pollfd fds[2] = {{out_, POLLIN, 0}, {in_, POLLOUT, 0}};
    const nfds_t n = written < request.size() ? 2 : 1;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0)
      fail_and_stop(fmt::format("no reply within {} s (waiting for the reply to sample '{}', line {})", timeout_s_,
                                samples[replies.size()].id, lines_ + 1));
    if (poll(fds, n, int(std::min<int64_t>(left, 1000))) < 0) {
      if (errno == EINTR) continue;
      fail_and_stop(fmt::format("poll: {}", std::strerror(errno)));
    }
    if (n == 2 && (fds[1].revents & (POLLOUT | POLLERR))) {
      const ssize_t k = write(in_, request.data() + written, request.size() - written);
      if (k > 0)
        written += size_t(k);
      else if (errno == EPIPE)
        written = request.size();  // it stopped reading; its exit or its output tells why
      else if (errno != EAGAIN && errno != EINTR)
        fail_and_stop(fmt::format("write: {}", std::strerror(errno)));
    }
    if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    char chunk[65536];
    const ssize_t k = read(out_, chunk, sizeof chunk);
    if (k < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (k <= 0)
      fail_and_stop(fmt::format("{} after {} reply lines (the reply to sample '{}' was expected)", describe_exit(),
                                lines_, samples[replies.size()].id));
    buffer_.append(chunk, size_t(k));
    if (buffer_.size() > kMaxJsonlLineBytes && buffer_.find('\n') == std::string::npos)
      fail_and_stop(fmt::format("line {}: longer than the limit of {} bytes", lines_ + 1, kMaxJsonlLineBytes));
    for (size_t eol; replies.size() < samples.size() && (eol = buffer_.find('\n')) != std::string::npos;) {
      std::string line = buffer_.substr(0, eol);
      buffer_.erase(0, eol + 1);
      ++lines_;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      const nlohmann::json* reward = j.is_object() && j.contains("reward") ? &j["reward"] : &j;
      const bool correct_ok = !j.is_object() || !j.contains("correct") || j["correct"].is_boolean();
      if (!reward->is_number() || !std::isfinite(reward->get<double>()) || !correct_ok)
        fail_and_stop(fmt::format("line {}: expected a number or {{\"reward\": x, \"correct\": bool}}, got '{}'",
                                  lines_, shorten(line)));
      RewardReply r{reward->get<double>(), std::nullopt};
      if (j.is_object() && j.contains("correct")) r.correct = j["correct"].get<bool>();
      replies.push_back(r);
      deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
    }
  }
  if (!buffer_.empty())
    fail_and_stop(fmt::format("line {}: output past the last expected reply: '{}'", lines_ + 1, shorten(buffer_)));
  return replies;
}

void RewardCommand::fail_and_stop(const std::string& what) {
  stop(true);
  fail("reward command '{}': {}", printable(command_), what);
}

std::string RewardCommand::describe_exit() {
  // It closed its output: give it a moment to exit so the message can say how.
  for (int i = 0; i < 100 && !reaped_; ++i) {
    if (waitpid(pid_, &status_, WNOHANG) == pid_)
      reaped_ = true;
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!reaped_) return "closed its output";
  if (WIFEXITED(status_)) return fmt::format("exited with status {}", WEXITSTATUS(status_));
  if (WIFSIGNALED(status_))
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status_), strsignal(WTERMSIG(status_)));
  return "stopped";
}

void RewardCommand::stop(bool kill_now) {
  if (pid_ < 0) return;
  close(in_), close(out_);  // EOF on its stdin: a well-behaved rewarder exits
  for (int i = 0; i < 200 && !kill_now && !reaped_; ++i) {
    if (waitpid(pid_, &status_, WNOHANG) == pid_)
      reaped_ = true;
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!reaped_) {
    kill(-pid_, SIGKILL);  // the group still exists while its leader is unreaped, so this cannot hit a stranger
    while (waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
  }
  pid_ = -1;
}

}  // namespace ds
