// Distillation: SFT records, packing, teacher sampling with rejection, and the training loop.
#include "ds/distill.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "ds/checkpoint.h"
#include "ds/engine.h"
#include "ds/error.h"
#include "ds/eval.h"
#include "ds/fsutil.h"
#include "ds/jsonl.h"
#include "ds/ops.h"
#include "step_trainer.h"
#include "training_loop.h"

namespace ds::kd {  // --divergence as a run records it
NLOHMANN_JSON_SERIALIZE_ENUM(Divergence, {{Divergence::forward_kl, "forward-kl"},
                                          {Divergence::reverse_kl, "reverse-kl"},
                                          {Divergence::jsd, "jsd"}})
}  // namespace ds::kd

namespace ds::distill {

using json = nlohmann::json;

// ---- data ----

Example render(const json& record, const ChatTemplate& chat, const Tokenizer& tokenizer, const std::string& where) {
  if (!record.is_object()) fail("{}: not a JSON object", where);
  auto text = [&](const json& value, std::string_view field) {
    if (!value.is_string()) fail("{}: \"{}\" must be a string", where, field);
    return value.get<std::string>();
  };
  std::vector<ChatMessage> messages;
  const bool has_messages = record.contains("messages");
  if (has_messages == (record.contains("prompt") || record.contains("completion")))
    fail("{}: a record needs either \"prompt\" and \"completion\" or \"messages\"", where);
  if (has_messages) {
    const json& list = record["messages"];
    if (!list.is_array() || list.empty()) fail("{}: \"messages\" must be a non-empty array", where);
    for (const json& m : list) {
      if (!m.is_object() || !m.contains("role") || !m.contains("content"))
        fail("{}: each message needs \"role\" and \"content\"", where);
      messages.push_back({text(m["role"], "role"), text(m["content"], "content")});
    }
    if (messages.back().role != "assistant") fail("{}: the last message must be the assistant's", where);
  } else {
    if (!record.contains("prompt") || !record.contains("completion"))
      fail("{}: a record needs both \"prompt\" and \"completion\"", where);
    messages.push_back({"user", text(record["prompt"], "prompt")});
    messages.push_back({"assistant", text(record["completion"], "completion")});
  }
  if (messages.back().content.empty()) fail("{}: the completion is empty", where);
  Example e;
  if (!has_messages) {
    e.tokens = chat.encode_prompt(messages[0].content);
    e.prompt_len = e.tokens.size();
    std::string_view completion = messages[1].content;
    if (completion.starts_with(chat.opened_reply())) completion.remove_prefix(chat.opened_reply().size());
    const std::vector<uint32_t> ids = tokenizer.encode(completion, false);
    e.tokens.insert(e.tokens.end(), ids.begin(), ids.end());
    e.tokens.push_back(tokenizer.eos_id());
    return e;
  }
  try {
    e.tokens = chat.encode(messages, false);
    const std::vector<uint32_t> prompt = chat.encode(std::span(messages).first(messages.size() - 1), true);
    e.prompt_len =
        size_t(std::mismatch(prompt.begin(), prompt.end(), e.tokens.begin(), e.tokens.end()).first - prompt.begin());
  } catch (const Error& err) {
    fail("{}: {}", where, err.what());
  }
  if (e.prompt_len >= e.tokens.size()) fail("{}: the completion renders to no tokens", where);
  e.prompt_len = std::max<size_t>(e.prompt_len, 1);  // the first token is never predicted
  return e;
}

std::vector<Example> parse_records(std::string_view jsonl, const ChatTemplate& chat, const Tokenizer& tokenizer,
                                   const std::string& name) {
  std::vector<Example> out;
  size_t line_no = 0;
  for (size_t begin = 0; begin < jsonl.size();) {
    size_t end = jsonl.find('\n', begin);
    if (end == std::string_view::npos) end = jsonl.size();
    const std::string_view line = jsonl.substr(begin, end - begin);
    begin = end + 1, ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const std::string where = fmt::format("{}:{}", name, line_no);
    json j;
    try {
      j = json::parse(line);
    } catch (const json::parse_error& e) {
      fail("{}: invalid JSON at byte {}", where, e.byte);
    }
    out.push_back(render(j, chat, tokenizer, where));
  }
  return out;
}

std::vector<std::vector<size_t>> pack_rows(const std::vector<Example>& examples, std::span<const size_t> order,
                                           int64_t Tn) {
  std::vector<std::vector<size_t>> rows;
  std::vector<size_t> row;
  int64_t used = 0;
  for (size_t i : order) {
    const int64_t need = int64_t(examples[i].tokens.size()) - 1;
    if (need > Tn) fail("pack_rows: an example of {} tokens does not fit {} positions", need + 1, Tn);
    if (used + need > Tn) rows.push_back(std::move(row)), row.clear(), used = 0;
    row.push_back(i), used += need;
  }
  if (!row.empty()) rows.push_back(std::move(row));
  return rows;
}

Batch make_batch(const std::vector<Example>& examples, std::span<const std::vector<size_t>> rows, int64_t Tn,
                 int32_t pad) {
  Batch b;
  b.B = int64_t(rows.size()), b.Tn = Tn;
  b.inputs.assign(size_t(b.B * Tn), pad);
  b.targets.assign(b.inputs.size(), -1);
  b.positions.assign(b.inputs.size(), 0);
  for (int64_t r = 0; r < b.B; ++r) {
    int64_t at = r * Tn;
    for (size_t i : rows[size_t(r)]) {
      const Example& e = examples[i];
      for (size_t t = 0; t + 1 < e.tokens.size(); ++t, ++at) {
        b.inputs[size_t(at)] = int32_t(e.tokens[t]);
        b.positions[size_t(at)] = int32_t(t);
        if (t + 1 >= e.prompt_len) b.targets[size_t(at)] = int32_t(e.tokens[t + 1]), ++b.loss_tokens;
        ++b.tokens;
      }
    }
    for (int32_t p = 0; at < (r + 1) * Tn; ++at) b.positions[size_t(at)] = p++;  // the padding: one more document
  }
  return b;
}

void check_same_tokenizer(const Tokenizer& teacher, const ModelConfig& teacher_config, const Tokenizer& student,
                          const ModelConfig& student_config, const std::string& teacher_name,
                          const std::string& student_name) {
  if (!(teacher == student))
    fail(
        "the teacher {} and the student {} have different tokenizers (vocabulary, merges or special tokens); "
        "distillation needs the same one",
        teacher_name, student_name);
  if (teacher_config.vocab_size != student_config.vocab_size)
    fail("the teacher {} has vocab_size {} and the student {} {}; distillation needs the same", teacher_name,
         teacher_config.vocab_size, student_name, student_config.vocab_size);
}

// ---- teacher sampling ----

namespace {

// [begin, end) of rank's contiguous share of n items (dist::split_evenly).
std::pair<size_t, size_t> share_of(size_t n, int ranks, int rank) {
  const std::vector<int64_t> parts = dist::split_evenly(int64_t(n), ranks);
  const auto begin = size_t(std::accumulate(parts.begin(), parts.begin() + rank, int64_t(0)));
  return {begin, begin + size_t(parts[size_t(rank)])};
}

// root's text to every rank.
void broadcast_text(dist::Comm& comm, std::string& text, int root) {
  int64_t size = int64_t(text.size());
  comm.broadcast(&size, sizeof size, root);
  text.resize(size_t(size));
  comm.broadcast(text.data(), size, root);
}

}  // namespace

SampleResult sample_teacher(const InferenceWeights& teacher, const Tokenizer& tokenizer, const ChatTemplate& chat,
                            const std::vector<Task>& tasks, const SampleOptions& o,
                            const std::function<void(int64_t, int64_t, int64_t)>& progress, dist::Comm* comm) {
  if (o.k < 1 || o.batch < 1) fail("samples per prompt and the sampling batch must be positive");
  // R1's generation prompt opens the think block: the completion as verified and recorded starts with it.
  const std::string opened(chat.opened_reply());
  const int64_t context = teacher.config().max_position_embeddings;
  std::vector<std::vector<uint32_t>> prompts;
  for (const Task& task : tasks) {
    prompts.push_back(chat.encode_prompt(task.prompt));
    if (int64_t(prompts.back().size()) >= context)
      fail("task '{}': the prompt is {} tokens, leaving no room in the teacher's context of {}", task.id,
           prompts.back().size(), context);
  }
  const auto start = std::chrono::steady_clock::now();
  SampleResult r;
  Engine engine(teacher, tokenizer, o.device);
  const size_t k = size_t(o.k);
  const int ranks = comm ? comm->size() : 1, rank = comm ? comm->rank() : 0;
  const auto [begin, total] = share_of(tasks.size() * k, ranks, rank);  // this rank's completions
  for (size_t first = begin; first < total; first += size_t(o.batch)) {
    const size_t end = std::min(total, first + size_t(o.batch));
    std::vector<std::vector<uint32_t>> batch;
    for (size_t f = first; f < end; ++f) batch.push_back(prompts[f / k]);
    const std::vector<Completion> done = engine.generate(batch, o.sampling, o.seed + first);
    for (size_t f = first; f < end; ++f) {
      const Task& task = tasks[f / k];
      const Completion& c = done[f - first];
      const std::string completion = opened + c.text;
      r.tokens += int64_t(c.tokens.size());
      if (eval::score_sample(completion, task.answer, int64_t(c.tokens.size())).correct)
        r.accepted.push_back(
            {{"id", task.id}, {"prompt", task.prompt}, {"completion", completion}, {"answer", task.answer}});
    }
    r.samples = int64_t(end - begin);
    if (progress) progress(r.samples, int64_t(total - begin), int64_t(r.accepted.size()));
  }
  if (ranks > 1) {  // every rank's accepted samples, in rank order: completion order, as one process keeps them
    std::string mine;
    for (const json& sample : r.accepted) mine += to_jsonl(sample) + "\n";
    r.accepted.clear();
    for (int q = 0; q < ranks; ++q) {
      std::string text = q == rank ? mine : std::string();
      broadcast_text(*comm, text, q);
      for (size_t at = 0; at < text.size();) {
        const size_t end = text.find('\n', at);
        r.accepted.push_back(json::parse(text.substr(at, end - at)));
        at = end + 1;
      }
    }
    int64_t counts[2] = {r.samples, r.tokens};
    comm->all_reduce(counts, 2);
    r.samples = counts[0], r.tokens = counts[1];
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

// ---- training ----

namespace {

std::string data_hash(const std::vector<Example>& examples) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over (prompt_len, tokens...) of every example
  auto add = [&](uint64_t x) { h = (h ^ x) * 1099511628211ull; };
  for (const Example& e : examples) {
    add(e.prompt_len), add(e.tokens.size());
    for (uint32_t t : e.tokens) add(t);
  }
  return fmt::format("{:016x}", h);
}

// 0..n-1 shuffled by a seeded Fisher-Yates (mt19937_64 is the same everywhere; std::shuffle is not).
std::vector<size_t> shuffled(size_t n, uint64_t seed) {
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t(0));
  std::mt19937_64 rng(seed);
  for (size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  return order;
}

// The training rows, epoch after epoch, each epoch packed from its own seeded order of the examples. A cursor (rows
// consumed) is all resume needs.
class RowStream {
 public:
  RowStream(const std::vector<Example>& examples, uint64_t seed, int64_t Tn)
      : examples_(examples), seed_(seed), Tn_(Tn) {}
  // Rows of the first `epochs` epochs.
  uint64_t rows_in(int64_t epochs) {
    while (int64_t(starts_.size()) <= epochs) extend();
    return starts_[size_t(epochs)];
  }
  const std::vector<size_t>& row(uint64_t cursor) {
    size_t e = 0;
    while (rows_in(int64_t(e) + 1) <= cursor) ++e;
    if (e != epoch_) rows_ = plan(e), epoch_ = e;
    return rows_[cursor - starts_[e]];
  }
  double epoch_of(uint64_t cursor) {
    size_t e = 0;
    while (rows_in(int64_t(e) + 1) <= cursor) ++e;
    return double(e) + double(cursor - starts_[e]) / double(starts_[e + 1] - starts_[e]);
  }

 private:
  std::vector<std::vector<size_t>> plan(size_t epoch) const {
    const std::vector<size_t> order = shuffled(examples_.size(), seed_ ^ (0x9e3779b97f4a7c15ull * (epoch + 1)));
    return pack_rows(examples_, order, Tn_);
  }
  void extend() {
    if (starts_.empty()) starts_.push_back(0);
    starts_.push_back(starts_.back() + plan(starts_.size() - 1).size());
  }
  const std::vector<Example>& examples_;
  uint64_t seed_;
  int64_t Tn_;
  std::vector<uint64_t> starts_;  // starts_[e]: the cursor at which epoch e begins
  size_t epoch_ = SIZE_MAX;
  std::vector<std::vector<size_t>> rows_;
};

const DistillOptions& validated(const DistillOptions& o) {
  if (o.batch < 1 || o.seq_len < 1 || o.epochs < 1 || o.steps < 0 || o.stop_after < 0)
    fail("--batch, --seq-len and --epochs must be positive, --steps and --stop-after not negative");
  if (!(o.val_fraction >= 0 && o.val_fraction < 1)) fail("--val-fraction must lie in [0, 1)");
  if (!(o.alpha >= 0 && o.alpha <= 1)) fail("--alpha must lie in [0, 1]");
  kd::validate(o.kd);
  if (o.data.empty() && (o.teacher.empty() || o.prompts.empty()))
    fail("no training data: give --data, or --teacher with --prompts to sample it");
  if (!o.data.empty() && !o.prompts.empty()) fail("--prompts samples the teacher for data; it excludes --data");
  if (o.alpha > 0 && o.teacher.empty()) fail("--alpha {} needs a --teacher", o.alpha);
  if (!o.emit.empty() && !o.data.empty()) fail("--emit writes the teacher's samples; there are none with --data");
  if (!o.student.empty() && !o.tokenizer.empty()) fail("--tokenizer is for new students; --student has its own");
  const int ranks = o.comm ? o.comm->size() : 1;
  if (o.batch % ranks != 0)
    fail("--batch {} is the global batch: it must be a multiple of the {} ranks", o.batch, ranks);
  return o;
}

class Trainer : public TrainingLoop {
 public:
  Trainer(const DistillOptions& o, const DistillEvents& events);

 private:
  StepOutcome train_step(double lr) override;
  void end_step(bool due, bool last) override;
  void restore(const TrainerState& state) override;
  void restart() override;
  void save_state(json& state) const override;
  void load_data(const std::string& hash);
  kd::Loss forward_backward(const Batch& b);
  double validation_loss();

  const DistillOptions& o_;
  const DistillEvents& events_;
  int64_t local_batch_ = 0;  // rows of each step this rank trains on
  uint64_t cursor_ = 0, tokens_seen_ = 0, interval_tokens_ = 0;
  // The teacher as inference holds it (an FP8 teacher stays FP8 in memory): it samples, and with alpha > 0 its engine
  // scores the batches, or with --fp8 a Scorer on the student's device does (below).
  std::optional<InferenceModel> teacher_;
  std::optional<Engine> teacher_engine_;
  std::unique_ptr<Scorer> fp8_teacher_;
  ModelConfig config_;
  Tokenizer tokenizer_ = Tokenizer::byte_level();
  std::optional<Model<float>> student_;
  std::vector<Example> train_, val_;
  std::string data_hash_;
  std::optional<RowStream> stream_;
  std::optional<AdamW> optimizer_;
  std::unique_ptr<StepTrainer> trainer_;  // on the host student itself, or on a copy on the device
  std::vector<float> grad_;               // dL/dlogits of the student
  LossOptions next_token_only_;           // distillation trains the next-token head only
  kd::Loss loss_;                         // of the last step, with its gradient norm
  double grad_norm_ = 0;
};

Trainer::Trainer(const DistillOptions& o, const DistillEvents& events)
    : TrainingLoop(validated(o), recorded_options(o), events.info, events.checkpoint), o_(o), events_(events) {
  local_batch_ = o.batch / ranks();
  const std::optional<std::string>& latest = resumed_from();
  if (o.resume) restore(resumed_state());

  // The teacher: for logit distillation, or to sample the data of a new run.
  if (!o.teacher.empty() && (o.alpha > 0 || (o.data.empty() && !o.resume)))
    teacher_.emplace(load_inference_model(o.teacher));
  if (o.resume || !o.student.empty()) {
    LoadedModel s = load_model_dir(o.resume ? *latest : o.student);
    config_ = s.config, tokenizer_ = std::move(s.tokenizer), student_.emplace(std::move(s.model));
  } else {
    tokenizer_ = !o.tokenizer.empty() ? Tokenizer::load(o.tokenizer)
                 : teacher_           ? teacher_->tokenizer
                                      : Tokenizer::byte_level();
    config_ = resolve_model_config(o.student_config);
    // A preset student takes the teacher's vocabulary size (KD compares whole distributions), or grows to fit the
    // tokenizer as ds-pretrain's presets do.
    if (is_preset(o.student_config)) {
      const int64_t needed = int64_t(tokenizer_.vocab_size());
      if (teacher_)
        config_.vocab_size = teacher_->weights.config().vocab_size;
      else if (needed > config_.vocab_size)
        config_.vocab_size = (needed + 127) / 128 * 128;
    }
    if (tokenizer_.vocab_size() > size_t(config_.vocab_size))
      fail("the tokenizer has {} tokens but the student config only {}", tokenizer_.vocab_size(), config_.vocab_size);
    student_.emplace(config_);
    student_->init_random(o.seed);
  }
  check_config(config_);
  // The teacher's forward takes the student's numerics, as ds-grpo's reference takes the policy's: --fp8 stands for
  // a run on Hopper, where the teacher's GEMMs are FP8 too, and a student equal to its teacher has no KD loss. The
  // engine does not run FP8 GEMMs, so with --fp8 that forward is a Scorer's, the training model's forward.
  student_->set_fp8(o.fp8);
  if (teacher_ && o.alpha > 0 && o.fp8) {
    fp8_teacher_ = make_scorer(o.device, std::move(load_model_dir(teacher_->dir).model), true);
  } else if (teacher_ && o.alpha > 0) {
    teacher_engine_.emplace(teacher_->weights, teacher_->tokenizer, o.device);
  }
  const std::string student_name = o.student.empty() ? "(new " + o.student_config + ")" : o.student;
  if (teacher_)
    check_same_tokenizer(teacher_->tokenizer, teacher_->weights.config(), tokenizer_, config_, teacher_->dir,
                         student_name);
  if (o.seq_len > config_.max_position_embeddings ||
      (teacher_ && o.seq_len > teacher_->weights.config().max_position_embeddings))
    fail("--seq-len {} exceeds the model's max_position_embeddings", o.seq_len);
  load_data(o.resume ? resumed_state().text("data_hash") : "");

  // ZeRO-1: each rank keeps its part of the moments; a checkpoint holds them whole, so a run resumes on any ranks.
  optimizer_.emplace(host_optimizer(o.device, *student_, o.adamw, comm(), o.bucket_mb));
  load_optimizer(*optimizer_);
  trainer_ = make_step_trainer(o.device, *student_, *optimizer_, o.adamw, o.fp8, comm());
  next_token_only_.mtp_weight = 0, next_token_only_.balance_alpha = 0;
  stream_.emplace(train_, o.seed, o.seq_len);
  const uint64_t rows = stream_->rows_in(o.epochs);
  const int64_t total_steps = o.steps > 0 ? o.steps : int64_t((rows + uint64_t(o.batch) - 1) / uint64_t(o.batch));
  const ParamCount pc = count_params(config_);
  info(o.resume ? fmt::format("resumed {} at step {} of {}", *latest, step(), total_steps)
                : fmt::format("student {}: {} parameters ({} active per token); teacher {}; {} steps", student_name,
                              pc.total, pc.active, teacher_ ? teacher_->dir : std::string("none"), total_steps));
  if (teacher_ && teacher_->weights.fp8() && !fp8_teacher_)
    info(fmt::format("teacher {}: FP8 in memory, {:.1f} MB", teacher_->dir, double(teacher_->weights.bytes()) * 1e-6));
  if (comm())
    info(fmt::format("data parallel over {} ranks ({}), {} rows each", ranks(), comm()->backend(), local_batch_));
  start(*student_, tokenizer_, config_, *optimizer_, *trainer_, total_steps);
}

// The examples: read from --data, sampled from the teacher (new runs), or the run's own samples.jsonl (resumed
// sampled runs); then split into training and validation, and checked against the resumed run's.
void Trainer::load_data(const std::string& hash) {
  const ChatTemplate chat(tokenizer_, parse_chat_format(o_.prompt_template));
  const std::string samples_path = o_.run_dir + "/samples.jsonl";
  std::string text, name = o_.data;
  if (o_.data == "-") {  // under mpirun only rank 0 reads stdin: it passes the records on
    if (rank() == 0) text = read_file(o_.data);
    if (comm()) broadcast_text(*comm(), text, 0);
    name = "<stdin>";
  } else if (!o_.data.empty()) {
    text = read_file(o_.data);
  } else if (o_.resume) {
    text = read_file(samples_path), name = samples_path;
  } else {
    std::vector<Task> tasks = load_tasks(o_.prompts);
    if (o_.limit > 0 && size_t(o_.limit) < tasks.size()) tasks.resize(size_t(o_.limit));
    info(fmt::format("sampling {} completions of each of {} prompts from the teacher{}", o_.sample.k, tasks.size(),
                     comm() ? fmt::format(", in shares over {} ranks", ranks()) : ""));
    const SampleResult r = sample_teacher(
        teacher_->weights, teacher_->tokenizer, chat, tasks, o_.sample,
        [&](int64_t done, int64_t total, int64_t accepted) {
          if (done == total || done % (16 * o_.sample.batch) == 0)
            info(fmt::format("sampled {}/{}, accepted {}{}", done, total, accepted, comm() ? " (rank 0's share)" : ""));
        },
        comm());
    for (const json& record : r.accepted) text += to_jsonl(record) + "\n";
    info(fmt::format("accepted {} of {} samples ({:.1f}%) in {:.0f} s, {:.0f} tokens/s", r.accepted.size(), r.samples,
                     100.0 * double(r.accepted.size()) / double(std::max<int64_t>(r.samples, 1)), r.seconds,
                     double(r.tokens) / std::max(r.seconds, 1e-9)));
    name = samples_path;
    if (rank() == 0) {
      write_file_atomic(samples_path, text);
      if (!o_.emit.empty()) {
        AtomicFile emit(o_.emit);
        emit.write(text);
        emit.commit();
      }
    }
  }
  std::vector<Example> all = parse_records(text, chat, tokenizer_, name);
  data_hash_ = data_hash(all);
  if (o_.resume && data_hash_ != hash)
    fail("{}: the data differs from what the run was trained on (hash {} vs {})", name, data_hash_, hash);

  const std::vector<size_t> order = shuffled(all.size(), o_.seed);
  const size_t n_val = size_t(o_.val_fraction * double(all.size()));
  size_t dropped = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    Example& e = all[order[i]];
    if (int64_t(e.tokens.size()) > o_.seq_len + 1) {
      ++dropped;
      continue;
    }
    (i < n_val ? val_ : train_).push_back(std::move(e));
  }
  if (train_.empty()) fail("{}: no training examples of at most --seq-len + 1 = {} tokens", name, o_.seq_len + 1);
  info(fmt::format("data {}: {} training and {} validation examples{}", name, train_.size(), val_.size(),
                   dropped ? fmt::format(", {} longer than --seq-len + 1 dropped", dropped) : ""));
}

// Forward and backward of this rank's rows of the global batch b, teacher included. SFT alone (alpha 0) takes the
// same way, so that every loss is a mean over all of b's loss tokens, however they fall on the ranks.
kd::Loss Trainer::forward_backward(const Batch& b) {
  StepTrainer& s = *trainer_;
  const int64_t N = local_batch_ * b.Tn, V = config_.vocab_size;
  const size_t first = size_t(rank()) * size_t(N);
  const int32_t* inputs = b.inputs.data() + first;
  const int32_t* positions = b.positions.data() + first;
  const float* teacher = nullptr;  // the teacher's logits, with alpha > 0
  std::vector<float> scored;
  if (fp8_teacher_) {
    fp8_teacher_->forward(inputs, nullptr, local_batch_, b.Tn, {}, nullptr, positions);
    teacher = fp8_teacher_->logits();
  } else if (teacher_engine_) {
    scored = teacher_engine_->forward(inputs, local_batch_, b.Tn, positions);
    teacher = scored.data();
  }
  s.forward(inputs, nullptr, local_batch_, b.Tn, {}, nullptr, positions);
  grad_.resize(size_t(N * V));
  const kd::Loss L = kd::distill_loss(s.logits(), teacher, b.targets.data() + first, N, V, o_.kd, o_.alpha,
                                      grad_.data(), double(b.loss_tokens) / double(ranks()));
  s.backward(grad_.data());  // the reduction starts during the backward
  return L;
}

double Trainer::validation_loss() {
  std::vector<size_t> order(val_.size());
  std::iota(order.begin(), order.end(), size_t(0));
  const std::vector<std::vector<size_t>> rows = pack_rows(val_, order, o_.seq_len);
  const auto [begin, end] = share_of(rows.size(), ranks(), rank());  // each rank measures its share of the rows
  double sums[2] = {0, 0};                                           // nll, tokens
  for (size_t r = begin; r < end; r += size_t(local_batch_)) {
    const size_t n = std::min(end - r, size_t(local_batch_));
    const Batch b = make_batch(val_, std::span(rows).subspan(r, n), o_.seq_len, int32_t(tokenizer_.pad_id()));
    const ForwardStats f =
        trainer_->forward(b.inputs.data(), b.targets.data(), b.B, b.Tn, next_token_only_, nullptr, b.positions.data());
    sums[0] += f.main_loss * double(f.tokens), sums[1] += double(f.tokens);
  }
  if (comm()) comm()->all_reduce(sums, 2);
  return sums[0] / std::max(sums[1], 1.0);
}

TrainingLoop::StepOutcome Trainer::train_step(double lr) {
  std::vector<std::vector<size_t>> rows;  // the global batch, on every rank: each trains on its share
  for (int64_t r = 0; r < o_.batch; ++r) rows.push_back(stream_->row(cursor_ + uint64_t(r)));
  const Batch b = make_batch(train_, rows, o_.seq_len, int32_t(tokenizer_.pad_id()));
  trainer_->begin_step(1, false);
  loss_ = forward_backward(b);
  if (comm()) {  // the global batch's mean losses: the mean of the ranks'
    double x[3] = {loss_.total, loss_.ce, loss_.kd};
    comm()->all_reduce(x, 3);
    loss_.total = x[0] / ranks(), loss_.ce = x[1] / ranks(), loss_.kd = x[2] / ranks();
  }
  grad_norm_ = trainer_->reduce_grads(o_.clip);
  // The loss and the norm are the same on every rank, so every rank takes the same decision.
  const bool bad = !std::isfinite(loss_.total) || !std::isfinite(grad_norm_);
  if (!bad) trainer_->step(lr, {}, 0.0);
  cursor_ += uint64_t(o_.batch);
  tokens_seen_ += uint64_t(b.tokens), interval_tokens_ += uint64_t(b.tokens);
  return {.trained = true, .bad = bad};
}

void Trainer::end_step(bool due, bool last) {
  DistillRecord r;
  if (!val_.empty() && (last || (o_.eval_every > 0 && step() % o_.eval_every == 0))) r.val_loss = validation_loss();
  if (!due && !r.val_loss) return;
  const Interval interval = take_interval();
  r.step = step(), r.total_steps = total_steps(), r.loss = loss_.total, r.ce = loss_.ce, r.kd = loss_.kd;
  r.lr = lr(), r.grad_norm = grad_norm_, r.tokens = tokens_seen_;
  r.bad_steps = guard().bad_total(), r.reloads = guard().reloads();
  r.epoch = stream_->epoch_of(cursor_);
  r.tokens_per_s = double(interval_tokens_) / interval.seconds;
  r.comm_share = interval.comm_share, r.elapsed_s = interval.elapsed_s;
  interval_tokens_ = 0;
  json record = {{"loss", r.loss},     {"ce_loss", r.ce}, {"grad_norm", r.grad_norm}, {"tokens_per_s", r.tokens_per_s},
                 {"tokens", r.tokens}, {"epoch", r.epoch}};
  if (o_.alpha > 0) record["kd_loss"] = r.kd;
  if (r.val_loss) record["val_loss"] = *r.val_loss;
  write_metrics(record, interval);
  if (rank() == 0 && events_.log) events_.log(r);
}

void Trainer::restore(const TrainerState& state) {
  cursor_ = uint64_t(state.count("row_cursor"));
  tokens_seen_ = uint64_t(state.count("tokens_seen"));
}

void Trainer::restart() {
  cursor_ = 0, tokens_seen_ = 0;
  if (o_.student.empty())
    student_->init_random(o_.seed);
  else
    load_weights(resolve_model_dir(o_.student), *student_);
}

void Trainer::save_state(json& state) const {
  state["row_cursor"] = cursor_;
  state["tokens_seen"] = tokens_seen_;
  state["data_hash"] = data_hash_;
}

}  // namespace

RunOptions run_options(DistillOptions& o) {
  RunOptions r;
  r.add_path("student", o.student).add_path("student-config", o.student_config).add_path("tokenizer", o.tokenizer);
  r.add_path("data", o.data).add("template", o.prompt_template).add("epochs", o.epochs);
  r.add("val-fraction", o.val_fraction).add_path("teacher", o.teacher).add("alpha", o.alpha);
  r.add("divergence", o.kd.divergence).add("jsd-beta", o.kd.beta).add("kd-temperature", o.kd.temperature);
  r.add("kd-top-k", o.kd.top_k).add_path("prompts", o.prompts).add("limit", o.limit);
  r.add("samples-per-prompt", o.sample.k).add("temperature", o.sample.sampling.temperature);
  r.add("top-p", o.sample.sampling.top_p).add("max-new-tokens", o.sample.sampling.max_new_tokens);
  r.add("batch", o.batch).add("seq-len", o.seq_len).add("fp8", o.fp8);
  return r.add_training(o.schedule, o.adamw, o.clip, o.seed);
}

void distill(const DistillOptions& options, const std::atomic<bool>& stop, const DistillEvents& events) {
  Trainer(options, events).run(stop);
}

}  // namespace ds::distill
