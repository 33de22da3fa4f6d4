#pragma once
// Evaluation as the R1 paper reports it: k sampled completions per task, scored by the rule-based verifiers into
// pass@1 (the mean over samples), pass@k (the unbiased estimator), cons@k (majority vote), format compliance and
// completion length; and perplexity / bits per byte of a model on text. ds-eval is a thin shell over this.
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ds/chat.h"
#include "ds/engine.h"
#include "ds/model.h"
#include "ds/tasks.h"
#include "ds/tokenizer.h"

namespace ds::eval {

// ---- sampled tasks ----

// One completion, graded.
struct SampleScore {
  std::optional<std::string> answer;  // the extracted answer (verify::extract_answer), none when not given
  std::string key;                    // its normalised form (verify::normalize), what cons@k votes on; "" when none
  bool correct = false;               // the answer matches the reference
  bool format = false;                // verify::format_ok
  int64_t tokens = 0;                 // generated tokens, EOS included
};
SampleScore score_sample(std::string_view completion, std::string_view reference, int64_t tokens);

// Unbiased pass@k from n samples of which c are correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), computed as
// 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms a binomial. Needs 0 <= c <= n and 1 <= k <= n.
double pass_at_k(int64_t n, int64_t c, int64_t k);

// The index of the sample whose answer wins a majority vote over the answers' normalised keys (samples without an
// answer do not vote); none when no sample answers. A tie goes to the answer given first (lowest sample index), so
// the vote never depends on how keys sort or hash.
std::optional<size_t> majority_vote(std::span<const SampleScore> samples);

struct Summary {
  int64_t tasks = 0;
  int64_t samples_per_task = 0;  // n
  int64_t k = 0;
  double pass_at_1 = 0;    // mean over tasks of c / n
  double pass_at_k = 0;    // mean over tasks of pass_at_k(n, c, k)
  double cons_at_k = 0;    // share of tasks whose majority answer over their first k samples is correct
  double format = 0;       // share of all samples in the R1 format
  double mean_tokens = 0;  // mean generated tokens over all samples
};
// per_task[t]: task t's samples, the same number n >= k for every task.
Summary summarize(const std::vector<std::vector<SampleScore>>& per_task, int64_t k);

// k completions of every task, prompted through the chat template, decoded in batches and graded (a completion is
// graded as the template's opened_reply() + its text). Completion f = t * k + j is sample j of task t and samples
// with seed + f, so results do not depend on the batch size. `source` names the task set in errors.
struct TaskRunOptions {
  ChatFormat format = ChatFormat::plain;
  int64_t k = 8;
  int64_t batch = 16;  // completions decoded together
  uint64_t seed = 0;
  SamplingOptions sampling;
  Device device;  // where the engine runs
};
struct TaskSample {
  size_t task = 0;    // index into the tasks
  int64_t index = 0;  // j of k
  Completion completion;
  SampleScore score;
};
struct TaskRun {
  std::vector<TaskSample> samples;  // task-major
  Summary summary;
  int64_t generated_tokens = 0;
  double seconds = 0;
};
// progress(completions done, total, generated tokens per second) after each batch.
using TaskProgress = std::function<void(size_t, size_t, double)>;
TaskRun run_tasks(const InferenceWeights& model, const Tokenizer& tokenizer, std::span<const Task> tasks,
                  const TaskRunOptions& options, const std::string& source, const TaskProgress& progress = {});

// ---- text ----

struct TextScore {
  int64_t tokens = 0;  // tokens predicted
  double nll = 0;      // their total negative log-likelihood, nats
  int64_t bytes = 0;   // bytes those tokens decode to (special tokens: none)
  TextScore& operator+=(const TextScore& other);
  double perplexity() const;     // exp(nll / tokens)
  double bits_per_byte() const;  // nll / ln 2 / bytes
};

// Scores ids[1..] given what precedes them, in windows of `window` inputs (at most the model's context) that do not
// overlap: window w reads ids[w*window .. (w+1)*window) and predicts the next token at each position, so every token
// but the first is predicted once, with 1..window tokens of context. `batch` windows run per forward pass, on the
// inference engine (Engine::forward), so an FP8 model is scored FP8 in memory.
TextScore score_tokens(const InferenceWeights& weights, const Tokenizer& tokenizer, std::span<const uint32_t> ids,
                       int64_t window, int64_t batch, const Device& device = {});
// Text as BOS + its tokens, so every token of the text is predicted; bytes is the text's size.
TextScore score_text(const InferenceWeights& weights, const Tokenizer& tokenizer, std::string_view text, int64_t window,
                     int64_t batch, const Device& device = {});

}  // namespace ds::eval
