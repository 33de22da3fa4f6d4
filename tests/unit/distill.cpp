// SFT records, loss masks, packing with document boundaries, and the same-tokenizer rule of distillation.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "ds/chat.h"
#include "ds/config.h"
#include "ds/distill.h"
#include "ds/error.h"
#include "ds/kd.h"
#include "ds/model.h"
#include "ds/tokenizer.h"

using namespace ds;
using namespace ds::distill;

namespace {

std::vector<Example> parse(std::string_view jsonl, ChatFormat format = ChatFormat::plain) {
  static const Tokenizer tokenizer = Tokenizer::byte_level();
  const ChatTemplate chat(tokenizer, format);
  return parse_records(jsonl, chat, tokenizer, "data.jsonl");
}

std::string error_of(std::string_view jsonl) {
  try {
    parse(jsonl);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a prompt/completion record: the prompt as the template puts it, then the completion and EOS") {
  const Tokenizer tokenizer = Tokenizer::byte_level();
  const ChatTemplate chat(tokenizer, ChatFormat::plain);
  const Example e = parse(
      R"({"prompt": "What is 3 + 5?", "completion": " <think> 3+5=8. </think> <answer> 8 </answer>", "id": "x"})")[0];
  const std::vector<uint32_t> prompt = chat.encode_prompt("What is 3 + 5?");
  CHECK(e.prompt_len == prompt.size());
  CHECK(std::equal(prompt.begin(), prompt.end(), e.tokens.begin()));
  CHECK(tokenizer.decode(std::span(e.tokens).subspan(e.prompt_len), false) ==
        " <think> 3+5=8. </think> <answer> 8 </answer>" + tokenizer.id_to_token(tokenizer.eos_id()));
  // R1's generation prompt already opened the think block: a completion that repeats it does not repeat it.
  const Tokenizer t2 = Tokenizer::byte_level();
  const ChatTemplate r1(t2, ChatFormat::r1);
  const auto a = parse_records(R"({"prompt": "p", "completion": "<think>\nok"})", r1, t2, "a");
  const auto b = parse_records(R"({"prompt": "p", "completion": "ok"})", r1, t2, "b");
  CHECK(a[0].tokens == b[0].tokens);
}

TEST_CASE("prompt tokens carry no loss; completion tokens and EOS do") {
  const std::string messages = R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", )"
                               R"("content": "b"}, {"role": "user", "content": "c"}, )"
                               R"({"role": "assistant", "content": "dd"}]})";
  const std::vector<Example> ex = parse(R"({"prompt": "Say hi", "completion": " hi"})"
                                        "\n" +
                                        messages);
  REQUIRE(ex.size() == 2);
  for (const Example& e : ex) {
    const std::vector<std::vector<size_t>> rows = {{size_t(&e - ex.data())}};
    const Batch b = make_batch(ex, rows, 64, 2);
    const size_t n = e.tokens.size();
    for (size_t i = 0; i + 1 < n; ++i)  // input i predicts token i + 1
      CHECK((b.targets[i] >= 0) == (i + 1 >= e.prompt_len));
    CHECK(b.loss_tokens == int64_t(n - e.prompt_len));
  }
  CHECK(ex[0].tokens.size() - ex[0].prompt_len == 4);  // " hi" and EOS
  CHECK(ex[1].tokens.size() - ex[1].prompt_len == 4);  // the last reply " dd" and EOS; the first reply is context
}

TEST_CASE("bad records are refused with the file and line") {
  CHECK(error_of("\n{\"prompt\": \"a\"}") == "data.jsonl:2: a record needs both \"prompt\" and \"completion\"");
  CHECK(error_of("{oops").starts_with("data.jsonl:1: invalid JSON"));
  CHECK(error_of(R"({"prompt": "a", "completion": "b", "messages": []})").find("either") != std::string::npos);
  CHECK(error_of(R"({"messages": [{"role": "user", "content": "a"}]})").find("assistant's") != std::string::npos);
  CHECK(error_of(R"({"prompt": "a", "completion": ""})").find("empty") != std::string::npos);
  CHECK(error_of(R"({"prompt": 3, "completion": "b"})").find("\"prompt\" must be a string") != std::string::npos);
  CHECK(error_of(R"({"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]})")
            .find("robot") != std::string::npos);
}

TEST_CASE("packing fills rows greedily; positions restart at each example") {
  std::vector<Example> ex(4);
  const size_t lengths[] = {5, 4, 7, 3};  // 4, 3, 6 and 2 positions
  for (size_t i = 0; i < 4; ++i) {
    ex[i].tokens.resize(lengths[i]);
    std::iota(ex[i].tokens.begin(), ex[i].tokens.end(), uint32_t(10 * i + 10));
    ex[i].prompt_len = 2;
  }
  const std::vector<size_t> order = {0, 1, 2, 3};
  const auto rows = pack_rows(ex, order, 8);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0] == std::vector<size_t>{0, 1});
  CHECK(rows[1] == std::vector<size_t>{2, 3});
  const Batch b = make_batch(ex, rows, 8, 2);
  CHECK(b.positions == std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 0, 0, 1, 2, 3, 4, 5, 0, 1});
  CHECK(b.inputs[7] == 2);  // padding
  CHECK(b.targets[7] == -1);
  CHECK(b.tokens == 15);
  CHECK_THROWS_AS(pack_rows(ex, order, 5), Error);  // example 2 needs 6 positions
}

TEST_CASE("packed examples do not attend to each other: logits equal unpacked runs") {
  for (const char* preset : {"tiny-dense", "tiny"}) {  // a dense student and an MoE (teacher) with MTP
    CAPTURE(preset);
    Model<double> model(resolve_model_config(preset));
    model.init_random(5);
    for (auto& w : model.params()) w *= 20;  // logits far from uniform, so a leak would show
    const int64_t V = model.config().vocab_size;
    std::vector<Example> ex(3);
    for (size_t i = 0; i < ex.size(); ++i) {
      ex[i].tokens.resize(4 + 3 * i);
      for (size_t t = 0; t < ex[i].tokens.size(); ++t) ex[i].tokens[t] = uint32_t(7 + (37 * i + 11 * t) % 250);
      ex[i].prompt_len = 2;
    }
    const std::vector<std::vector<size_t>> packed_rows = {{0, 1, 2}};
    const Batch packed = make_batch(ex, packed_rows, 20, 2);
    model.forward(packed.inputs.data(), nullptr, 1, 20, {}, nullptr, packed.positions.data());
    const std::vector<double> logits(model.logits(), model.logits() + 20 * V);
    const double loss =
        model.forward(packed.inputs.data(), packed.targets.data(), 1, 20, {0.0, 0.0}, nullptr, packed.positions.data())
            .main_loss *
        double(packed.loss_tokens);
    double loss_alone = 0, max_diff = 0;
    int64_t at = 0;
    for (size_t i = 0; i < ex.size(); ++i) {
      const std::vector<std::vector<size_t>> alone_rows = {{i}};
      const int64_t Tn = int64_t(ex[i].tokens.size()) - 1;
      const Batch alone = make_batch(ex, alone_rows, Tn, 2);
      model.forward(alone.inputs.data(), nullptr, 1, Tn, {});
      for (int64_t j = 0; j < Tn * V; ++j)
        max_diff = std::max(max_diff, std::fabs(model.logits()[j] - logits[at * V + j]));
      loss_alone += model.forward(alone.inputs.data(), alone.targets.data(), 1, Tn, {0.0, 0.0}).main_loss *
                    double(alone.loss_tokens);
      at += Tn;
    }
    CHECK(max_diff < 1e-10);
    CHECK(loss == doctest::Approx(loss_alone).epsilon(1e-12));
    // Without the positions the same row is one document, and the later examples see the earlier ones.
    model.forward(packed.inputs.data(), nullptr, 1, 20, {});
    double leak = 0;
    for (int64_t j = 3 * V; j < 20 * V; ++j) leak = std::max(leak, std::fabs(model.logits()[j] - logits[j]));
    CHECK(leak > 1e-3);
  }
}

TEST_CASE("positions that do not restart at 0 or count up are refused") {
  Model<float> model(resolve_model_config("tiny-dense"));
  const std::vector<int32_t> inputs = {1, 2, 3, 4}, bad = {0, 1, 3, 4}, late = {1, 2, 3, 4};
  CHECK_THROWS_AS(model.forward(inputs.data(), nullptr, 1, 4, {}, nullptr, bad.data()), Error);
  CHECK_THROWS_AS(model.forward(inputs.data(), nullptr, 1, 4, {}, nullptr, late.data()), Error);
}

TEST_CASE("a teacher with another tokenizer or vocabulary size is refused") {
  const Tokenizer bytes = Tokenizer::byte_level();
  const std::vector<std::string_view> docs = {"the cat sat on the mat", "the cat ate the rat", "the mat is flat"};
  BpeTrainOptions bpe;
  bpe.vocab_size = 280;
  const Tokenizer trained = Tokenizer::train(docs, bpe);
  const ModelConfig c = resolve_model_config("tiny-dense");
  ModelConfig wider = c;
  wider.vocab_size = 384;
  CHECK_NOTHROW(check_same_tokenizer(bytes, c, Tokenizer::byte_level(), c, "T", "S"));
  try {
    check_same_tokenizer(trained, c, bytes, c, "runs/teacher", "runs/student");
    FAIL("a different tokenizer was accepted");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("runs/teacher and the student runs/student have different tokenizers") !=
          std::string::npos);
  }
  CHECK_THROWS_WITH_AS(check_same_tokenizer(bytes, wider, bytes, c, "T", "S"),
                       "the teacher T has vocab_size 384 and the student S 320; distillation needs the same", Error);
}

TEST_CASE("data-parallel shares: losses over the global count average to the whole batch's, gradients too") {
  // Two ranks' rows with 3 and 1 targets: each divides by the global count over the ranks, so the mean of their
  // losses, and of their gradients as AdamW averages them, is the whole batch's (one process's).
  const int64_t N = 6, V = 9, half = N / 2;
  std::vector<double> student(static_cast<size_t>(N * V)), teacher(student.size());
  for (size_t i = 0; i < student.size(); ++i) student[i] = std::sin(double(i)) * 3, teacher[i] = std::cos(double(i));
  const std::vector<int32_t> targets = {4, 0, 8, -1, 2, -1};
  kd::Options o;
  o.divergence = kd::Divergence::jsd, o.top_k = 4;
  std::vector<double> whole_grad(student.size()), grad(student.size());
  const kd::Loss whole =
      kd::distill_loss(student.data(), teacher.data(), targets.data(), N, V, o, 0.4, whole_grad.data());
  kd::Loss mean, alone;
  for (int64_t r = 0; r < 2; ++r) {
    const size_t at = size_t(r * half * V);
    const kd::Loss L = kd::distill_loss(student.data() + at, teacher.data() + at, targets.data() + r * half, half, V, o,
                                        0.4, grad.data() + at, double(whole.tokens) / 2);
    mean.total += L.total / 2, mean.kd += L.kd / 2, mean.ce += L.ce / 2;
    alone.total += kd::distill_loss(student.data() + at, teacher.data() + at, targets.data() + r * half, half, V, o,
                                    0.4, std::vector<double>(static_cast<size_t>(half * V)).data())
                       .total /
                   2;
  }
  CHECK(mean.total == doctest::Approx(whole.total).epsilon(1e-12));
  CHECK(mean.kd == doctest::Approx(whole.kd).epsilon(1e-12));
  CHECK(mean.ce == doctest::Approx(whole.ce).epsilon(1e-12));
  for (size_t i = 0; i < grad.size(); ++i) CHECK(grad[i] / 2 == doctest::Approx(whole_grad[i]).epsilon(1e-12));
  // Each share's own mean would weigh the lone target of the second rank as much as the first rank's three.
  CHECK(alone.total != doctest::Approx(whole.total).epsilon(1e-3));
}
