#include "ds/eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numbers>
#include <unordered_map>

#include "ds/error.h"
#include "ds/ops.h"
#include "ds/verify.h"

namespace ds::eval {

SampleScore score_sample(std::string_view completion, std::string_view reference, int64_t tokens) {
  SampleScore s;
  s.answer = verify::extract_answer(completion);
  if (s.answer) s.key = verify::normalize(*s.answer);
  s.correct = s.answer && verify::answers_match(*s.answer, reference);
  s.format = verify::format_ok(completion);
  s.tokens = tokens;
  return s;
}

double pass_at_k(int64_t n, int64_t c, int64_t k) {
  if (n < 1 || c < 0 || c > n || k < 1 || k > n)
    fail("pass@k needs 0 <= c <= n and 1 <= k <= n (n={} c={} k={})", n, c, k);
  if (n - c < k) return 1.0;  // every draw of k samples holds a correct one
  double all_wrong = 1.0;
  for (int64_t i = n - c + 1; i <= n; ++i) all_wrong *= 1.0 - double(k) / double(i);
  return 1.0 - all_wrong;
}

std::optional<size_t> majority_vote(std::span<const SampleScore> samples) {
  std::unordered_map<std::string_view, std::pair<size_t, size_t>> tally;  // key -> (first sample, votes)
  for (size_t i = 0; i < samples.size(); ++i)
    if (!samples[i].key.empty()) ++tally.try_emplace(samples[i].key, i, 0).first->second.second;
  std::optional<size_t> best;
  size_t best_votes = 0;
  for (const auto& [key, entry] : tally) {
    const auto [first, votes] = entry;
    if (votes > best_votes || (votes == best_votes && first < *best)) {
      best = first;
      best_votes = votes;
    }
  }
  return best;
}

Summary summarize(const std::vector<std::vector<SampleScore>>& per_task, int64_t k) {
  if (per_task.empty()) fail("no tasks to summarize");
  Summary s;
  s.tasks = int64_t(per_task.size());
  s.samples_per_task = int64_t(per_task.front().size());
  s.k = k;
  for (const std::vector<SampleScore>& samples : per_task) {
    const auto n = int64_t(samples.size());
    if (n != s.samples_per_task || n < k) fail("every task needs the same number of samples, at least k={}", k);
    const auto c =
        int64_t(std::count_if(samples.begin(), samples.end(), [](const SampleScore& x) { return x.correct; }));
    s.pass_at_1 += double(c) / double(n);
    s.pass_at_k += pass_at_k(n, c, k);
    const auto vote = majority_vote(std::span(samples).first(size_t(k)));
    s.cons_at_k += vote && samples[*vote].correct;
    for (const SampleScore& x : samples) {
      s.format += x.format;
      s.mean_tokens += double(x.tokens);
    }
  }
  const double tasks = double(s.tasks), samples = tasks * double(s.samples_per_task);
  s.pass_at_1 /= tasks;
  s.pass_at_k /= tasks;
  s.cons_at_k /= tasks;
  s.format /= samples;
  s.mean_tokens /= samples;
  return s;
}

TextScore& TextScore::operator+=(const TextScore& other) {
  tokens += other.tokens;
  nll += other.nll;
  bytes += other.bytes;
  return *this;
}

double TextScore::perplexity() const { return std::exp(nll / double(tokens)); }
double TextScore::bits_per_byte() const { return nll / std::numbers::ln2 / double(bytes); }

TaskRun run_tasks(const InferenceWeights& model, const Tokenizer& tokenizer, std::span<const Task> tasks,
                  const TaskRunOptions& o, const std::string& source, const TaskProgress& progress) {
  if (o.k <= 0 || o.batch <= 0) fail("k and the batch must be positive");
  const ChatTemplate chat(tokenizer, o.format);
  const int64_t context = model.config().max_position_embeddings;
  std::vector<std::vector<uint32_t>> prompts;
  for (const Task& task : tasks) {
    prompts.push_back(chat.encode_prompt(task.prompt));
    if (int64_t(prompts.back().size()) >= context)
      fail("{}: task '{}': the prompt is {} tokens, which leaves no room in the model's context of {}", source, task.id,
           prompts.back().size(), context);
  }

  TaskRun run;
  const size_t k = size_t(o.k), total = tasks.size() * k;
  Engine engine(model, tokenizer, o.device);
  const auto start = std::chrono::steady_clock::now();
  for (size_t first = 0; first < total; first += size_t(o.batch)) {
    const size_t end = std::min(total, first + size_t(o.batch));
    std::vector<std::vector<uint32_t>> batch;
    for (size_t f = first; f < end; ++f) batch.push_back(prompts[f / k]);
    std::vector<Completion> done = engine.generate(batch, o.sampling, o.seed + first);
    for (size_t i = 0; i < done.size(); ++i) {
      const size_t f = first + i;
      TaskSample sample{f / k, int64_t(f % k), std::move(done[i]), {}};
      const std::string graded = std::string(chat.opened_reply()) + sample.completion.text;
      sample.score = score_sample(graded, tasks[f / k].answer, int64_t(sample.completion.tokens.size()));
      run.generated_tokens += sample.score.tokens;
      run.samples.push_back(std::move(sample));
    }
    run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (progress) progress(end, total, double(run.generated_tokens) / std::max(run.seconds, 1e-9));
  }

  std::vector<std::vector<SampleScore>> per_task(tasks.size());
  for (const TaskSample& sample : run.samples) per_task[sample.task].push_back(sample.score);
  run.summary = summarize(per_task, o.k);
  return run;
}

TextScore score_tokens(const InferenceWeights& weights, const Tokenizer& tokenizer, std::span<const uint32_t> ids,
                       int64_t window, int64_t batch, const Device& device) {
  const ModelConfig& c = weights.config();
  if (window < 1 || window > c.max_position_embeddings)
    fail("a window of {} tokens does not fit the model's context of {}", window, c.max_position_embeddings);
  if (batch < 1) fail("batch must be at least 1, not {}", batch);
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= uint64_t(c.vocab_size))
      fail("token {} (id {}) is outside the model's vocabulary of {}", i, ids[i], c.vocab_size);
  TextScore score;
  if (ids.size() < 2) return score;
  Engine engine(weights, tokenizer, device);
  const auto predicted = int64_t(ids.size()) - 1, full = predicted / window;
  // B windows of Tn inputs each, the first starting at ids[first * window].
  auto run = [&](int64_t first, int64_t B, int64_t Tn) {
    std::vector<int32_t> inputs(size_t(B * Tn)), targets(size_t(B * Tn));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < Tn; ++t) {
        const auto at = size_t((first + b) * window + t);
        inputs[size_t(b * Tn + t)] = int32_t(ids[at]);
        targets[size_t(b * Tn + t)] = int32_t(ids[at + 1]);
      }
    std::vector<float> logits = engine.forward(inputs.data(), B, Tn);
    score.nll += ops::cross_entropy(logits.data(), targets.data(), B * Tn, c.vocab_size);
    score.tokens += B * Tn;
  };
  for (int64_t w = 0; w < full; w += batch) run(w, std::min(batch, full - w), window);
  if (const int64_t rest = predicted - full * window; rest > 0) run(full, 1, rest);
  score.bytes = int64_t(tokenizer.decode(ids.subspan(1), true).size());
  return score;
}

TextScore score_text(const InferenceWeights& weights, const Tokenizer& tokenizer, std::string_view text, int64_t window,
                     int64_t batch, const Device& device) {
  std::vector<uint32_t> ids = {tokenizer.bos_id()};
  const std::vector<uint32_t> body = tokenizer.encode(text, false);
  ids.insert(ids.end(), body.begin(), body.end());
  return score_tokens(weights, tokenizer, ids, window, batch, device);
}

}  // namespace ds::eval
