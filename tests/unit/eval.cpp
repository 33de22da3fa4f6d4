// Evaluation logic: pass@k against the closed form, majority vote, summaries, prompts, and perplexity windows against
// a direct per-position computation.
#include "ds/eval.h"

#include <doctest/doctest.h>

#include <cmath>
#include <numbers>
#include <random>

#include "ds/arith.h"
#include "ds/config.h"
#include "ds/error.h"

using namespace ds;
using namespace ds::eval;

namespace {

// C(n, k) by Pascal's triangle, exact for the small n used here.
double binomial(int64_t n, int64_t k) {
  if (k < 0 || k > n) return 0;
  std::vector<double> row(size_t(n) + 1, 0.0);
  row[0] = 1;
  for (int64_t i = 1; i <= n; ++i)
    for (int64_t j = i; j >= 1; --j) row[size_t(j)] += row[size_t(j - 1)];
  return row[size_t(k)];
}

SampleScore sample(const char* key, bool correct, bool format = false, int64_t tokens = 0) {
  SampleScore s;
  if (*key) s.answer = key, s.key = key;
  s.correct = correct;
  s.format = format;
  s.tokens = tokens;
  return s;
}

}  // namespace

TEST_CASE("pass_at_k equals 1 - C(n-c, k) / C(n, k)") {
  for (int64_t n = 1; n <= 24; ++n)
    for (int64_t c = 0; c <= n; ++c)
      for (int64_t k = 1; k <= n; ++k) {
        CAPTURE(n);
        CAPTURE(c);
        CAPTURE(k);
        CHECK(pass_at_k(n, c, k) == doctest::Approx(1.0 - binomial(n - c, k) / binomial(n, k)).epsilon(1e-12));
      }
  CHECK(pass_at_k(64, 0, 8) == 0.0);
  CHECK(pass_at_k(64, 64, 8) == 1.0);
  CHECK(pass_at_k(10, 3, 1) == doctest::Approx(0.3));
  // Large n, where the binomials themselves overflow a double, stays finite and in [0, 1].
  const double big = pass_at_k(100000, 3, 5000);
  CHECK(big > 0.14);
  CHECK(big < 0.15);
  CHECK_THROWS_AS(pass_at_k(4, 5, 1), Error);
  CHECK_THROWS_AS(pass_at_k(4, 1, 5), Error);
  CHECK_THROWS_AS(pass_at_k(4, 1, 0), Error);
}

TEST_CASE("majority_vote: most common answer, ties to the first given, no answer does not vote") {
  const std::vector<SampleScore> a = {sample("1", false), sample("2", true), sample("2", true), sample("1", false),
                                      sample("1", false)};
  CHECK(majority_vote(a) == size_t(0));
  const std::vector<SampleScore> tie = {sample("", false), sample("7", false), sample("5", true), sample("5", true),
                                        sample("7", false)};
  CHECK(majority_vote(tie) == size_t(1));  // 7 and 5 have two votes each; 7 came first
  const std::vector<SampleScore> silent = {sample("", false), sample("", false)};
  CHECK(majority_vote(silent) == std::nullopt);
  const std::vector<SampleScore> blanks = {sample("", false), sample("", false), sample("3", true)};
  CHECK(majority_vote(blanks) == size_t(2));
}

TEST_CASE("score_sample grades with the verifiers") {
  const SampleScore s = score_sample(" <think> 1+1=2 </think> <answer> 2.0 </answer>", "2", 17);
  CHECK(s.answer == "2.0");
  CHECK(s.key == "2");
  CHECK(s.correct);
  CHECK(s.format);
  CHECK(s.tokens == 17);
  const SampleScore none = score_sample("<think> \\boxed{2}", "2", 3);
  CHECK(!none.answer);
  CHECK(none.key.empty());
  CHECK(!none.correct);
  CHECK(!none.format);
}

TEST_CASE("summarize: pass@1, pass@k, cons@k, format and length") {
  const std::vector<std::vector<SampleScore>> per_task = {
      {sample("4", true, true, 10), sample("5", false, true, 20), sample("5", false, false, 30)},  // 1/3; vote 5: wrong
      {sample("9", true, true, 10), sample("9", true, true, 10), sample("", false, false, 40)},    // 2/3; vote 9: right
      {sample("", false, false, 5), sample("", false, false, 5), sample("", false, false, 5)},     // 0; no vote
  };
  const Summary s = summarize(per_task, 2);
  CHECK(s.tasks == 3);
  CHECK(s.samples_per_task == 3);
  CHECK(s.k == 2);
  CHECK(s.pass_at_1 == doctest::Approx((1.0 / 3 + 2.0 / 3 + 0) / 3));
  CHECK(s.pass_at_k == doctest::Approx((pass_at_k(3, 1, 2) + pass_at_k(3, 2, 2) + 0) / 3));
  // cons@2 votes over the first two samples: task 0 ties 4 vs 5 -> 4 (first) -> right; task 1 -> 9 -> right.
  CHECK(s.cons_at_k == doctest::Approx(2.0 / 3));
  CHECK(s.format == doctest::Approx(4.0 / 9));
  CHECK(s.mean_tokens == doctest::Approx(135.0 / 9));
  CHECK_THROWS_AS(summarize(per_task, 4), Error);
  CHECK_THROWS_AS(summarize({{sample("1", true)}, {sample("1", true), sample("1", true)}}, 1), Error);
  CHECK_THROWS_AS(summarize({}, 1), Error);
}

TEST_CASE("run_tasks: k graded samples per task, independent of the batch size") {
  Model<float> model(resolve_model_config("tiny"));
  model.init_random(5);
  const Tokenizer tok = Tokenizer::byte_level();
  const std::vector<Task> tasks = {{"a", "What is 1 + 1?", "2"}, {"b", "What is 2 + 3?", "5"}, {"c", "hi", "x"}};
  TaskRunOptions o;
  o.k = 3;
  o.batch = 4;
  o.seed = 9;
  o.sampling.max_new_tokens = 6;
  size_t calls = 0;
  const TaskRun run = run_tasks(model, tok, tasks, o, "tasks.jsonl", [&](size_t done, size_t total, double) {
    ++calls;
    CHECK(total == 9);
    CHECK(done <= total);
  });
  CHECK(calls == 3);
  REQUIRE(run.samples.size() == 9);
  int64_t tokens = 0;
  for (size_t f = 0; f < 9; ++f) {
    CHECK(run.samples[f].task == f / 3);
    CHECK(run.samples[f].index == int64_t(f % 3));
    CHECK(run.samples[f].score.tokens == int64_t(run.samples[f].completion.tokens.size()));
    tokens += run.samples[f].score.tokens;
  }
  CHECK(run.generated_tokens == tokens);
  CHECK(run.summary.tasks == 3);
  CHECK(run.summary.k == 3);
  o.batch = 2;
  const TaskRun again = run_tasks(model, tok, tasks, o, "tasks.jsonl");
  for (size_t f = 0; f < 9; ++f) CHECK(again.samples[f].completion.tokens == run.samples[f].completion.tokens);

  // A prompt longer than the context is refused, naming the task set and the task.
  const std::vector<Task> long_task = {{"long", std::string(400, 'x'), "1"}};
  CHECK_THROWS_WITH_AS(run_tasks(model, tok, long_task, o, "tasks.jsonl"),
                       doctest::Contains("tasks.jsonl: task 'long'"), Error);
}

TEST_CASE("score_tokens predicts every token once, window by window") {
  Model<float> model(resolve_model_config("tiny"));
  model.init_random(7);
  const Tokenizer tok = Tokenizer::byte_level();
  std::mt19937_64 rng(3);
  std::vector<uint32_t> ids(23);
  for (uint32_t& id : ids) id = uint32_t(7 + rng() % 256);  // byte tokens

  // Reference: each window of 5 inputs on its own, -log softmax in double at every position.
  const int64_t V = model.config().vocab_size;
  double expected = 0;
  for (size_t start = 0; start + 1 < ids.size(); start += 5) {
    const size_t Tn = std::min<size_t>(5, ids.size() - 1 - start);
    std::vector<int32_t> inputs(ids.begin() + long(start), ids.begin() + long(start + Tn));
    model.forward(inputs.data(), nullptr, 1, int64_t(Tn));
    for (size_t t = 0; t < Tn; ++t) {
      const float* row = model.logits() + t * size_t(V);
      double max = row[0], sum = 0;
      for (int64_t v = 0; v < V; ++v) max = std::max(max, double(row[v]));
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - max);
      expected += max + std::log(sum) - double(row[ids[start + t + 1]]);
    }
  }
  for (int64_t batch : {1, 2, 8}) {
    CAPTURE(batch);
    const TextScore s = score_tokens(model, tok, ids, 5, batch);
    CHECK(s.tokens == 22);
    CHECK(s.nll == doctest::Approx(expected).epsilon(1e-5));
    CHECK(s.bytes == 22);
    CHECK(s.perplexity() == doctest::Approx(std::exp(expected / 22)).epsilon(1e-5));
    CHECK(s.bits_per_byte() == doctest::Approx(expected / std::numbers::ln2 / 22).epsilon(1e-5));
  }
  // A longer window sees more context, so it scores differently but counts the same tokens.
  CHECK(score_tokens(model, tok, ids, 22, 1).tokens == 22);
  CHECK(score_tokens(model, tok, std::span(ids).first(1), 5, 1).tokens == 0);
  CHECK_THROWS_WITH_AS(score_tokens(model, tok, ids, 257, 1),
                       "a window of 257 tokens does not fit the model's context of 256", Error);
  ids[4] = 400;
  CHECK_THROWS_WITH_AS(score_tokens(model, tok, ids, 5, 1), "token 4 (id 400) is outside the model's vocabulary of 320",
                       Error);

  const std::string text = "What is 12 + 30? It is 42.";
  const TextScore t = score_text(model, tok, text, 8, 2);
  CHECK(t.tokens == int64_t(text.size()));  // byte-level: one token per byte, all predicted after BOS
  CHECK(t.bytes == int64_t(text.size()));
  TextScore sum = t;
  sum += t;
  CHECK(sum.tokens == 2 * t.tokens);
  CHECK(sum.nll == 2 * t.nll);
  CHECK(sum.perplexity() == doctest::Approx(t.perplexity()));
}
