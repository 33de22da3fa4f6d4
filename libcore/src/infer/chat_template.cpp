#include <array>

#include "ds/chat.h"
#include "ds/error.h"

namespace ds {
namespace {

// Our wording of the R1-Zero preamble (R1 paper, Table 1): who speaks, think first, and the two tags.
constexpr std::string_view kR1ZeroPreamble =
    "This is a conversation between a User and an Assistant. The User poses a problem and the Assistant solves it: "
    "the Assistant first reasons the problem through privately, then gives the User the answer. The reasoning is "
    "written inside <think> </think> tags and the answer inside <answer> </answer> tags, like this: "
    "<think> reasoning here </think> <answer> answer here </answer>.";

constexpr std::array<std::pair<std::string_view, ChatFormat>, 4> kFormats = {{{"r1", ChatFormat::r1},
                                                                              {"r1-zero", ChatFormat::r1_zero},
                                                                              {"plain", ChatFormat::plain},
                                                                              {"none", ChatFormat::none}}};
constexpr std::string_view kR1Opening = "<think>\n";

// The text after the last </think>: what R1 keeps of an earlier assistant turn.
std::string_view without_reasoning(std::string_view content) {
  constexpr std::string_view kClose = "</think>";
  const size_t close = content.rfind(kClose);
  return close == std::string_view::npos ? content : content.substr(close + kClose.size());
}

}  // namespace

ChatFormat parse_chat_format(std::string_view name) {
  for (const auto& [known, format] : kFormats)
    if (name == known) return format;
  fail("unknown chat format '{}' (formats: r1, r1-zero, plain, none)", name);
}

ChatTemplate::ChatTemplate(const Tokenizer& tokenizer, ChatFormat format) : tokenizer_(tokenizer), format_(format) {}

void ChatTemplate::pieces(std::span<const ChatMessage> messages, bool add_generation_prompt,
                          const std::function<void(std::string_view, bool)>& emit) const {
  for (const ChatMessage& m : messages)
    if (m.role != "system" && m.role != "user" && m.role != "assistant")
      fail("chat message role '{}' is not system, user or assistant", m.role);
  const std::string& eos = tokenizer_.id_to_token(tokenizer_.eos_id());
  emit(tokenizer_.id_to_token(tokenizer_.bos_id()), true);

  bool has_system = false;
  for (const ChatMessage& m : messages) {
    if (m.role != "system") continue;
    emit(m.content, false);
    has_system = true;
  }
  if (format_ == ChatFormat::r1_zero && !has_system) emit(kR1ZeroPreamble, false);

  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "system") continue;
    const bool user = m.role == "user";
    switch (format_) {
      case ChatFormat::r1:
        emit(user ? "<｜User｜>" : "<｜Assistant｜>", true);
        emit(user || i + 1 == messages.size() ? std::string_view(m.content) : without_reasoning(m.content), false);
        break;
      case ChatFormat::r1_zero:
        emit(user ? " User: " : " ", false);
        emit(m.content, false);
        if (user) emit(". Assistant:", false);
        break;
      case ChatFormat::plain:
        emit(user ? (i == 0 && !has_system ? "User: " : " User: ") : " ", false);
        emit(m.content, false);
        if (user) emit(" Assistant:", false);
        break;
      case ChatFormat::none:
        emit(m.content, false);
        break;
    }
    if (!user) emit(eos, true);
  }
  if (add_generation_prompt && format_ == ChatFormat::r1) {
    emit("<｜Assistant｜>", true);
    emit(kR1Opening, true);
  }
}

std::string_view ChatTemplate::opened_reply() const { return format_ == ChatFormat::r1 ? kR1Opening : ""; }

std::vector<uint32_t> ChatTemplate::encode_prompt(std::string_view prompt) const {
  const ChatMessage user{"user", std::string(prompt)};
  return encode(std::span(&user, 1), true);
}

std::string ChatTemplate::render(std::span<const ChatMessage> messages, bool add_generation_prompt) const {
  std::string text;
  pieces(messages, add_generation_prompt, [&](std::string_view piece, bool) { text += piece; });
  return text;
}

std::vector<uint32_t> ChatTemplate::encode(std::span<const ChatMessage> messages, bool add_generation_prompt) const {
  // Text between markers is encoded as one run, exactly as the rendered text would be cut by its markers.
  std::vector<uint32_t> ids;
  std::string text;
  const auto append = [&](std::string_view piece, bool parse_special) {
    const std::vector<uint32_t> part = tokenizer_.encode(piece, parse_special);
    ids.insert(ids.end(), part.begin(), part.end());
  };
  pieces(messages, add_generation_prompt, [&](std::string_view piece, bool marker) {
    if (!marker) return void(text += piece);
    append(text, false);
    text.clear();
    append(piece, true);
  });
  append(text, false);
  return ids;
}

}  // namespace ds
