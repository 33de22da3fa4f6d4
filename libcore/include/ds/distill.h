#pragma once
// Distillation (DeepSeek-R1's second finding: a small dense model trained on a strong reasoner's outputs beats
// reinforcement learning on the small model itself). ds-distill is a thin shell over this.
//
//   Data      SFT records, one JSON object a line: {"prompt", "completion"} or {"messages": [{"role", "content"},
//             ...]} ending with an assistant message; other fields (ds-eval samples' "id", "correct", ...) are
//             ignored. Only the completion (the final assistant message) and its EOS carry loss, not the prompt.
//   Packing   short examples share a row of the batch; positions restart at 0 at each example and attention never
//             crosses from one example into another (Model::forward's positions), so a packed example is trained
//             exactly as it would be alone.
//   Teacher   logit distillation (ds/kd.h) on the same packed batch, the teacher running forward only, in the same
//             process; it may be MoE while the student is dense, and must have the same tokenizer. It is held as
//             inference holds it (an FP8 teacher stays FP8 in memory) and scored by the engine, except with fp8,
//             where its forward is a Model's in the student's emulated FP8 numerics.
//   Sampling  without data, the teacher samples k completions of each task prompt and the verifiers keep the
//             correct ones (rejection sampling, as R1 built its 800k SFT set); they are the training data.
//
// The run directory is ds-pretrain's: checkpoints (model dir + optimizer.safetensors + trainer_state.json), latest,
// metrics.jsonl; a sampled run also keeps its data as RUN/samples.jsonl, so resume needs no teacher sampling.
//
// Data parallel as ds-pretrain: each rank trains on its contiguous share of a step's rows (the teacher's forward
// too), AdamW is sharded over the ranks (ZeRO-1), the ranks sample the teacher's completions in shares, and rank 0
// writes the run directory.
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ds/bad_steps.h"
#include "ds/chat.h"
#include "ds/comm.h"
#include "ds/config.h"
#include "ds/cuda.h"
#include "ds/inference_model.h"
#include "ds/kd.h"
#include "ds/model.h"
#include "ds/optim.h"
#include "ds/run.h"
#include "ds/sampler.h"
#include "ds/tasks.h"
#include "ds/tokenizer.h"

namespace ds::distill {

// ---- data ----

// One training example: a rendered conversation; tokens from prompt_len on carry loss.
struct Example {
  std::vector<uint32_t> tokens;
  size_t prompt_len = 0;
};

// {"prompt", "completion"}: the prompt as the template puts a task to a model (ChatTemplate::encode_prompt), then
// the completion as the text generated after it (less the template's opened_reply() when it starts with it), then
// EOS: ds-eval's samples and the teacher's train on exactly the tokens that were generated.
// {"messages"}: the conversation as the template renders it; the loss starts where it leaves the generation prompt
// of its last message.
Example render(const nlohmann::json& record, const ChatTemplate& chat, const Tokenizer& tokenizer,
               const std::string& where);
// Every record of JSONL text (blank lines skipped); errors name `name` and the line.
std::vector<Example> parse_records(std::string_view jsonl, const ChatTemplate& chat, const Tokenizer& tokenizer,
                                   const std::string& name);

// Rows of Tn positions: the examples in `order` fill rows greedily, each taking tokens - 1 positions (input t
// predicts t + 1); one that does not fit in the current row starts the next. Examples longer than Tn + 1 tokens
// must have been dropped before.
std::vector<std::vector<size_t>> pack_rows(const std::vector<Example>& examples, std::span<const size_t> order,
                                           int64_t Tn);

// A batch for Model::forward: rows right-padded with pad (target -1; their positions continue as one more document).
struct Batch {
  std::vector<int32_t> inputs, targets, positions;
  int64_t B = 0, Tn = 0;
  int64_t tokens = 0;       // positions holding example tokens
  int64_t loss_tokens = 0;  // positions with a target
};
Batch make_batch(const std::vector<Example>& examples, std::span<const std::vector<size_t>> rows, int64_t Tn,
                 int32_t pad);

// Throws unless teacher and student share the tokenizer (vocabulary, merges, special tokens) and the vocabulary
// size, which logit distillation compares position by position.
void check_same_tokenizer(const Tokenizer& teacher, const ModelConfig& teacher_config, const Tokenizer& student,
                          const ModelConfig& student_config, const std::string& teacher_name,
                          const std::string& student_name);

// ---- teacher sampling ----

struct SampleOptions {
  int64_t k = 4;  // completions per prompt
  SamplingOptions sampling;
  uint64_t seed = 0;   // completion f (sample f % k of prompt f / k) samples with seed + f
  int64_t batch = 64;  // completions decoded together
  Device device;       // where the teacher's engine runs
};
struct SampleResult {
  std::vector<nlohmann::json> accepted;  // {"id", "prompt", "completion", "answer"}, in task order
  int64_t samples = 0;
  int64_t tokens = 0;  // generated
  double seconds = 0;
};
// Samples k completions of each task from the teacher, prompted with `chat`, and keeps those the verifiers find
// correct (ds-eval's "correct"). progress(done, total, accepted) follows this rank's completions. With a comm of
// several ranks, each samples a contiguous share of the completions and all of them return every rank's: the same
// result as one process, since completion f's seed does not depend on who samples it.
SampleResult sample_teacher(const InferenceWeights& teacher, const Tokenizer& tokenizer, const ChatTemplate& chat,
                            const std::vector<Task>& tasks, const SampleOptions& options,
                            const std::function<void(int64_t, int64_t, int64_t)>& progress = nullptr,
                            dist::Comm* comm = nullptr);

// ---- training ----

// TrainerOptions as distillation reads them: steps 0 means --epochs passes over the data; fp8 covers the teacher's
// forward too; the device is where the teacher samples and scores and the student trains.
struct DistillOptions : TrainerOptions {
  DistillOptions() { steps = 0; }
  std::string student;                        // a model or run directory to continue; empty = a new model
  std::string student_config = "demo-dense";  // preset or config.json of a new student
  std::string tokenizer;                      // a new student's tokenizer; default the teacher's, else byte-level
  std::string data;                           // SFT JSONL ("-" = stdin); empty = sample the teacher on prompts
  std::string prompt_template = "r1";         // chat format of the records and the sampling prompts
  double val_fraction = 0.05;                 // held out (after a seeded shuffle) for the validation loss
  int64_t epochs = 1;                         // passes over the data when steps is 0
  std::string teacher;                        // model or run directory
  double alpha = 0;                           // loss = alpha * KD + (1 - alpha) * cross-entropy
  kd::Options kd;
  std::string prompts;  // tasks to sample the teacher on (ds/tasks.h)
  int64_t limit = 0;    // only the first N prompts; 0 = all
  SampleOptions sample;
  std::string emit;                  // also write the accepted samples here ("-" = stdout)
  int64_t batch = 8, seq_len = 256;  // rows per step (the global batch), positions per row
  int64_t eval_every = 0;            // validation loss every N steps; 0 = at the end only
};

struct DistillRecord {
  int64_t step = 0, total_steps = 0;
  double loss = 0, ce = 0, kd = 0, lr = 0, grad_norm = 0;
  double epoch = 0;                // rows consumed / rows per epoch
  double tokens_per_s = 0;         // example tokens (prompt and completion) trained on per second
  uint64_t tokens = 0;             // since the run started
  std::optional<double> val_loss;  // mean cross-entropy of the validation completions, when measured
  double elapsed_s = 0;
  int64_t bad_steps = 0;
  int64_t reloads = 0;  // returns to the last checkpoint after too many bad steps in a row (ds/bad_steps.h)
  bool skipped = false;
  double comm_share = 0;  // share of the time since the last record spent in collectives (data parallel)
};

struct DistillEvents {
  std::function<void(const std::string&)> info;
  std::function<void(const DistillRecord&)> log;
  std::function<void(const std::string&)> checkpoint;
};

// The options a run keeps for its whole life (ds/run.h), bound to o's fields.
RunOptions run_options(DistillOptions& o);

// Runs until the planned steps, options.stop_after, or stop becomes true (then saves and returns). Throws ds::Error.
void distill(const DistillOptions& options, const std::atomic<bool>& stop, const DistillEvents& events);

}  // namespace ds::distill
