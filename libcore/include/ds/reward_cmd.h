#pragma once
// --reward-cmd: an external rewarder as a long-lived child process (protocol in man/dskit-formats.5). `sh -c CMD` is
// started once; each sample goes to its stdin as one JSON line {"id", "prompt", "completion", "answer"} and one reply
// line comes back on its stdout for each, in order: a JSON number, or an object {"reward": x} with an optional boolean
// "correct". Its stderr is ours. Writing and reading are interleaved (poll), so a rewarder that answers as it reads
// never deadlocks on full pipes, whatever the batch size.
//
// A crash, a reply not within the timeout, or a malformed line is a ds::Error naming the command and the line; the
// child (its whole process group) is then killed and reaped, as it is by the destructor, so no zombie is left.
#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace ds {

struct RewardSample {
  std::string id, prompt, completion, answer;
};

struct RewardReply {
  double reward = 0;
  std::optional<bool> correct;  // when the rewarder says
};

class RewardCommand {
 public:
  // timeout_s: the longest wait for each reply line (the clock restarts at every line received).
  RewardCommand(std::string command, double timeout_s);
  ~RewardCommand();  // closes the child's stdin, gives it a moment to exit, then kills it; always reaps it
  RewardCommand(const RewardCommand&) = delete;
  RewardCommand& operator=(const RewardCommand&) = delete;

  // One reply per sample, in order. After an error the command is stopped and every later call fails.
  std::vector<RewardReply> score(const std::vector<RewardSample>& samples);

 private:
  [[noreturn]] void fail_and_stop(const std::string& what);
  void stop(bool kill_now);
  std::string describe_exit();

  std::string command_;
  double timeout_s_;
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;  // the child's stdin (we write) and stdout (we read)
  std::string buffer_;      // bytes read past the last complete line
  int64_t lines_ = 0;       // reply lines read so far, for messages
  int status_ = 0;          // wait status once reaped
  bool reaped_ = false;
};

}  // namespace ds
