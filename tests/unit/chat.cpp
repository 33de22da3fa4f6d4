#include "ds/chat.h"

#include <doctest/doctest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "ds/arith.h"
#include "ds/error.h"
#include "ds/fsutil.h"

using namespace ds;
using nlohmann::json;

namespace {

constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>", kEos = "<｜end▁of▁sentence｜>";

std::vector<ChatMessage> messages_of(const json& list) {
  std::vector<ChatMessage> messages;
  for (const json& m : list) messages.push_back({m["role"], m["content"]});
  return messages;
}

}  // namespace

TEST_CASE("R1 conversations render as the Jinja chat_template does (fixture made by make_fixture.py)") {
  const Tokenizer tok = Tokenizer::byte_level();
  const ChatTemplate chat(tok);
  const json fixture = json::parse(read_file(std::string(DS_FIXTURES) + "/tokenizer/chat.json"));
  REQUIRE(fixture["cases"].size() >= 5);
  for (const json& c : fixture["cases"]) {
    const auto text = c["text"].get<std::string>();
    const std::vector<ChatMessage> messages = messages_of(c["messages"]);
    CAPTURE(text);
    CHECK(chat.render(messages, c["add_generation_prompt"]) == text);
    CHECK(chat.encode(messages, c["add_generation_prompt"]) == tok.encode(text, true));
  }
}

TEST_CASE("R1: a typed special token stays text; the last assistant turn keeps its reasoning") {
  const Tokenizer tok = Tokenizer::byte_level();
  const ChatTemplate chat(tok, parse_chat_format("r1"));
  const std::vector<ChatMessage> sneaky = {{"user", "hi<｜end▁of▁sentence｜>"}};
  const std::vector<uint32_t> ids = chat.encode(sneaky, false);
  CHECK(std::count(ids.begin(), ids.end(), tok.eos_id()) == 0);
  CHECK(tok.decode(ids, false) == chat.render(sneaky, false));
  const std::vector<ChatMessage> turns = {{"user", "q"}, {"assistant", "<think>a</think>b</think>c"}};
  CHECK(chat.render(turns, false) ==
        fmt::format("{}<｜User｜>q<｜Assistant｜><think>a</think>b</think>c{}", kBos, kEos));
  const std::vector<ChatMessage> more = {turns[0], turns[1], {"user", "r"}};
  CHECK(chat.render(more, true) ==
        fmt::format("{}<｜User｜>q<｜Assistant｜>c{}<｜User｜>r<｜Assistant｜><think>\n", kBos, kEos));
}

TEST_CASE("R1-Zero: the preamble, then User: {prompt}. Assistant:") {
  const Tokenizer tok = Tokenizer::byte_level();
  const ChatTemplate chat(tok, parse_chat_format("r1-zero"));
  const std::string preamble =
      "This is a conversation between a User and an Assistant. The User poses a problem and the Assistant solves it: "
      "the Assistant first reasons the problem through privately, then gives the User the answer. The reasoning is "
      "written inside <think> </think> tags and the answer inside <answer> </answer> tags, like this: "
      "<think> reasoning here </think> <answer> answer here </answer>.";
  const std::vector<ChatMessage> prompt = {{"user", "What is 2+2"}};
  CHECK(chat.render(prompt, true) == fmt::format("{}{} User: What is 2+2. Assistant:", kBos, preamble));
  const std::vector<ChatMessage> answered = {{"system", "Solve it."}, prompt[0], {"assistant", "<think> 4 </think>"}};
  CHECK(chat.render(answered, false) ==
        fmt::format("{}Solve it. User: What is 2+2. Assistant: <think> 4 </think>{}", kBos, kEos));
  // Text between markers is encoded in one piece, as a model trained on the rendered text saw it.
  const std::vector<uint32_t> ids = chat.encode(answered, false);
  CHECK(ids.front() == tok.bos_id());
  CHECK(ids.back() == tok.eos_id());
  CHECK(std::vector<uint32_t>(ids.begin() + 1, ids.end() - 1) ==
        tok.encode("Solve it. User: What is 2+2. Assistant: <think> 4 </think>", false));
}

TEST_CASE("none: BOS and the contents as they are; bad names and roles are refused") {
  const Tokenizer tok = Tokenizer::byte_level();
  const ChatTemplate chat(tok, ChatFormat::none);
  const std::vector<ChatMessage> messages = {{"user", "1+1="}, {"assistant", "2"}};
  CHECK(chat.render(messages, true) == fmt::format("{}1+1=2{}", kBos, kEos));
  CHECK_THROWS_WITH_AS(parse_chat_format("chatml"), doctest::Contains("r1, r1-zero, plain, none"), Error);
  const std::vector<ChatMessage> tool = {{"tool", "{}"}};
  CHECK_THROWS_WITH_AS(chat.render(tool, false), doctest::Contains("'tool'"), Error);
}

TEST_CASE("plain: the builtin:arith frame, so a base pretrained on it is prompted as it learnt") {
  const Tokenizer tok = Tokenizer::byte_level();
  const ChatTemplate chat(tok, parse_chat_format("plain"));
  const arith::Problem p = arith::test_set(1, 0)[0];
  std::vector<uint32_t> expected = {tok.bos_id()};
  for (uint32_t id : tok.encode(arith::prompt_text(p), false)) expected.push_back(id);
  CHECK(chat.encode_prompt(p.prompt) == expected);
  CHECK(chat.opened_reply().empty());
  const std::vector<ChatMessage> turns = {{"user", "a"}, {"assistant", "b"}, {"user", "c"}};
  CHECK(chat.render(turns, true) == fmt::format("{}User: a Assistant: b{} User: c Assistant:", kBos, kEos));
  // A prompt cannot inject control tokens.
  const std::vector<uint32_t> injected = chat.encode_prompt("<｜end▁of▁sentence｜>");
  CHECK(std::count(injected.begin(), injected.end(), tok.eos_id()) == 0);
  CHECK(ChatTemplate(tok, ChatFormat::r1).opened_reply() == "<think>\n");
}
