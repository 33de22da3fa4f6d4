#pragma once
// ChatSession: a conversation with a model. Each turn renders the whole conversation with the chat template, reuses
// the cached prefix the engine already holds (only new tokens are prefilled), and streams the reply as UTF-8 text.
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "ds/chat.h"
#include "ds/engine.h"
#include "ds/error.h"

namespace ds {

struct ChatTurnStats {
  int64_t prompt_tokens = 0;  // the rendered conversation
  int64_t cached_tokens = 0;  // of those, already in the cache from earlier turns
  int64_t generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  std::string finish_reason;
};

// The conversation with the new message is longer than the model's context; the message was not added.
struct ContextFull : Error {
  using Error::Error;
};

class ChatSession {
 public:
  ChatSession(const InferenceWeights& model, const Tokenizer& tokenizer, ChatFormat format, uint64_t seed,
              const Device& device = {});

  // Adds the user's message and generates the reply (ContextFull when it does not fit). on_text receives the reply as
  // it grows, in pieces that are whole UTF-8 characters; returning false stops the generation (the partial reply is
  // kept).
  std::string send(const std::string& user, const SamplingOptions& options,
                   const std::function<bool(std::string_view)>& on_text = nullptr);
  // True when the template opens the reply inside a reasoning block (R1's generation prompt ends with <think>).
  bool reply_starts_in_think() const;

  void set_system(std::string system);  // a system message first in the conversation ("" removes it)
  void clear();                         // forget the conversation (the system message stays)
  const std::vector<ChatMessage>& messages() const { return messages_; }
  nlohmann::json to_json() const;  // {"messages": [{"role", "content"}, ...]}
  void from_json(const nlohmann::json& j, const std::string& source);
  const ChatTurnStats& last_turn() const { return last_; }
  const Engine& engine() const { return engine_; }

 private:
  std::vector<uint32_t> render_prompt() const;

  const Tokenizer& tokenizer_;
  ChatTemplate template_;
  Engine engine_;
  int64_t seq_;
  Sampler sampler_;
  std::vector<ChatMessage> messages_;
  ChatTurnStats last_;
};

// The length of the longest prefix of text that ends on a UTF-8 character boundary (a streamed reply holds back a
// character whose bytes have not all arrived).
size_t complete_utf8_prefix(std::string_view text);

}  // namespace ds
