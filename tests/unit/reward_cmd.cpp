// --reward-cmd against small sh/awk rewarders: one that answers, one that crashes, one that hangs, one that prints
// garbage. Every failure is a ds::Error naming the command and what went wrong, and leaves no child process behind.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <sys/wait.h>

#include <cerrno>
#include <chrono>
#include <string>

#include "ds/error.h"
#include "ds/reward_cmd.h"

using namespace ds;

namespace {

std::vector<RewardSample> samples(size_t n, const std::string& completion = "yes") {
  std::vector<RewardSample> out;
  for (size_t i = 0; i < n; ++i) out.push_back({fmt::format("s{}", i), "What is 1 + 1?", completion, "2"});
  return out;
}

// The error message of f(), or "" when it does not throw ds::Error.
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// No child left, running or zombie: we never have other children in this test process.
bool no_children() { return waitpid(-1, nullptr, WNOHANG) < 0 && errno == ECHILD; }

// 1 when the completion is "yes", else an object holding the line number, which shows the process is started once.
const char* kRewarder = R"(n=0; while read -r l; do n=$((n + 1)); case "$l" in *'"completion":"yes"'*) echo 1 ;;)"
                        R"( *) echo "{\"reward\": $n, \"correct\": false}" ;; esac; done)";

}  // namespace

TEST_CASE("reward command: replies in order, one process for every batch") {
  {
    RewardCommand cmd(kRewarder, 10);
    std::vector<RewardSample> batch = samples(3);
    batch[1].completion = "no";
    std::vector<RewardReply> r = cmd.score(batch);
    REQUIRE(r.size() == 3);
    CHECK(r[0].reward == 1);
    CHECK(!r[0].correct);
    CHECK(r[1].reward == 2);
    CHECK(r[1].correct == false);
    r = cmd.score(samples(2, "no"));
    CHECK(r[1].reward == 5);  // line 5 of the same process
    CHECK(cmd.score({}).empty());
  }
  CHECK(no_children());
}

TEST_CASE("reward command: a large batch does not deadlock on full pipes") {
  // 600 KB in and 160 KB out, beyond a pipe's 64 KB buffer both ways: writing and reading must interleave.
  RewardCommand cmd("while read -r l; do echo '{\"reward\": 0.5, \"note\": \"" + std::string(60, '.') + "\"}'; done",
                    30);
  const std::vector<RewardReply> r = cmd.score(samples(2000, std::string(240, 'x')));
  CHECK(r.size() == 2000);
  CHECK(r.back().reward == 0.5);
}

TEST_CASE("reward command: a crash is an error naming the command and its exit") {
  {
    RewardCommand cmd("read -r line; echo 1; exit 3", 10);
    const std::string e = error_of([&] { cmd.score(samples(3)); });
    CHECK(e.find("reward command 'read -r line; echo 1; exit 3'") == 0);
    CHECK(e.find("exited with status 3 after 1 reply lines") != std::string::npos);
    CHECK(e.find("'s1'") != std::string::npos);
    CHECK(error_of([&] { cmd.score(samples(1)); }).find("stopped after an earlier error") != std::string::npos);
  }
  {
    RewardCommand cmd("kill -SEGV $$", 10);
    CHECK(error_of([&] { cmd.score(samples(1)); }).find("killed by signal 11") != std::string::npos);
  }
  {
    RewardCommand cmd("no-such-rewarder 2>/dev/null", 10);
    CHECK(error_of([&] { cmd.score(samples(1)); }).find("exited with status 127") != std::string::npos);
  }
  CHECK(no_children());
}

TEST_CASE("reward command: a hang is a timeout, and the child is killed") {
  const auto start = std::chrono::steady_clock::now();
  {
    RewardCommand cmd("sleep 30", 0.3);
    const std::string e = error_of([&] { cmd.score(samples(2)); });
    CHECK(e.find("no reply within 0.3 s") != std::string::npos);
    CHECK(e.find("'s0', line 1") != std::string::npos);
  }
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
  CHECK(no_children());
  // The clock restarts at each reply: three replies 0.2 s apart pass a 0.5 s timeout.
  RewardCommand slow("while read -r l; do sleep 0.2; echo 1; done", 0.5);
  CHECK(slow.score(samples(3)).size() == 3);
}

TEST_CASE("reward command: garbage is an error naming the line") {
  for (const char* reply :
       {"not a number", "{\"score\": 1}", "{\"reward\": \"1\"}", "{\"reward\": 1, \"correct\": 1}", ""}) {
    RewardCommand cmd(std::string("read -r l; echo 0.5; read -r l; echo '") + reply + "'; cat >/dev/null", 10);
    const std::string e = error_of([&] { cmd.score(samples(2)); });
    CHECK_MESSAGE(e.find("line 2: expected a number") != std::string::npos, e);
    CHECK(e.find(reply) != std::string::npos);
  }
  {
    RewardCommand extra("read -r l; printf '1\\n2\\n3\\n'", 10);  // one write: all lines arrive together
    const std::string e = error_of([&] { extra.score(samples(1)); });
    CHECK(e.find("line 2: output past the last expected reply: '2\\x0A3\\x0A'") != std::string::npos);
    CHECK(e.find('\n') == std::string::npos);  // one line
  }
  {
    RewardCommand endless("read -r l; head -c 20000000 /dev/zero | tr '\\0' 7; cat >/dev/null", 10);
    CHECK(error_of([&] { endless.score(samples(1)); }).find("line 1: longer than the limit") != std::string::npos);
  }
  CHECK(no_children());
}
