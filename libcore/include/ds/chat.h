#pragma once
// Conversation templates: how a list of messages becomes what a model reads. One place for ds-chat, ds-eval,
// ds-grpo and ds-distill, so a model is prompted the way it was trained.
//
//   r1       DeepSeek-R1's format: BOS, the system messages with no role token, <｜User｜>content,
//            <｜Assistant｜>content<｜end▁of▁sentence｜>; an assistant turn that a later message follows loses its
//            reasoning (everything up to its last </think>); the generation prompt is <｜Assistant｜><think>\n.
//            The Jinja chat_template our tokenizer_config.json carries renders the same text.
//   r1-zero  the R1-Zero RL template (R1 paper, Table 1): BOS, a preamble asking for <think> reasoning and an
//            <answer>, then "User: {prompt}. Assistant:"; system messages replace the preamble.
//   plain    "User: {prompt} Assistant: {answer}", the frame of the builtin:arith corpus (arith::prompt_text), so a
//            base pretrained on it is prompted as it learnt; turns are joined by spaces.
//   none     BOS and the contents as they are.
// Assistant turns end with EOS in every format. BOS and EOS are the tokenizer's (tokenizer_config.json's, where a
// model directory has one).
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ds/tokenizer.h"

namespace ds {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatFormat { r1, r1_zero, plain, none };
// "r1", "r1-zero", "plain", "none"; throws ds::Error listing them.
ChatFormat parse_chat_format(std::string_view name);

class ChatTemplate {
 public:
  // Keeps a reference to `tokenizer`, which must outlive the template.
  explicit ChatTemplate(const Tokenizer& tokenizer, ChatFormat format = ChatFormat::r1);

  // The conversation as text, with the generation prompt (the opening of the next assistant turn) when asked.
  // Throws ds::Error for a role other than system, user and assistant.
  std::string render(std::span<const ChatMessage> messages, bool add_generation_prompt) const;
  // The same as token ids: the template's markers become their special-token ids and the text between them is
  // encoded as plain text (so a user typing "<｜end▁of▁sentence｜>" cannot end a turn). Equals encoding render()
  // with special tokens parsed whenever the contents hold no special-token spellings.
  std::vector<uint32_t> encode(std::span<const ChatMessage> messages, bool add_generation_prompt) const;
  // A single user turn with the generation prompt: how a task prompt is put to a model.
  std::vector<uint32_t> encode_prompt(std::string_view prompt) const;
  // What the generation prompt already opened of the reply ("<think>\n" for r1, else nothing): a completion is
  // graded as opened_reply() + completion.
  std::string_view opened_reply() const;

 private:
  // Calls emit(text, is_marker) for each piece of the rendered conversation in order.
  void pieces(std::span<const ChatMessage> messages, bool add_generation_prompt,
              const std::function<void(std::string_view, bool)>& emit) const;

  const Tokenizer& tokenizer_;
  ChatFormat format_;
};

}  // namespace ds
