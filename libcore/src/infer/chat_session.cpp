#include "ds/chat_session.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>

#include "ds/error.h"
#include "ds/jsonl.h"

namespace ds {

size_t complete_utf8_prefix(std::string_view text) {
  // Walk back over at most 3 continuation bytes to the last lead byte and check its sequence is whole.
  size_t i = text.size();
  int continuation = 0;
  while (i > 0 && continuation < 4 && (uint8_t(text[i - 1]) & 0xC0) == 0x80) --i, ++continuation;
  if (i == 0) return text.size();
  const uint8_t lead = uint8_t(text[i - 1]);
  const int need = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : 0;
  return continuation >= need ? text.size() : i - 1;
}

ChatSession::ChatSession(const InferenceWeights& model, const Tokenizer& tokenizer, ChatFormat format, uint64_t seed,
                         const Device& device)
    : tokenizer_(tokenizer),
      template_(tokenizer, format),
      engine_(model, tokenizer, device),
      seq_(engine_.open()),
      sampler_(seed) {}

bool ChatSession::reply_starts_in_think() const {
  const std::vector<ChatMessage> probe = {{"user", "x"}};
  return template_.render(probe, true).ends_with("<think>\n");
}

std::vector<uint32_t> ChatSession::render_prompt() const { return template_.encode(messages_, true); }

std::string ChatSession::send(const std::string& user, const SamplingOptions& options,
                              const std::function<bool(std::string_view)>& on_text) {
  messages_.push_back({"user", user});
  const std::vector<uint32_t> prompt = render_prompt();
  const int64_t limit = engine_.config().max_position_embeddings;
  if (int64_t(prompt.size()) >= limit) {
    messages_.pop_back();
    throw ContextFull(
        fmt::format("the conversation ({} tokens) does not fit the model's context of {}", prompt.size(), limit));
  }
  // Keep the cached prefix shared with the new prompt; at least one token must be fed to get logits.
  const std::vector<uint32_t>& cached = engine_.tokens(seq_);
  size_t common = 0;
  while (common < cached.size() && common + 1 < prompt.size() && cached[common] == prompt[common]) ++common;
  engine_.truncate(seq_, int64_t(common));

  last_ = {};
  last_.prompt_tokens = int64_t(prompt.size());
  last_.cached_tokens = int64_t(common);
  std::vector<uint32_t> generated;
  size_t shown = 0;
  const auto start = std::chrono::steady_clock::now();
  auto first_token = start;
  const Completion c = engine_.continue_sequence(
      seq_, {prompt.begin() + std::ptrdiff_t(common), prompt.end()}, options, sampler_, [&](uint32_t token) {
        if (generated.empty()) first_token = std::chrono::steady_clock::now();
        generated.push_back(token);
        if (!on_text) return true;
        const std::string text = tokenizer_.decode(generated, true);
        const size_t ready = complete_utf8_prefix(text);
        const bool go_on = ready <= shown || on_text(std::string_view(text).substr(shown, ready - shown));
        shown = std::max(shown, ready);
        return go_on;
      });
  const auto end = std::chrono::steady_clock::now();
  last_.generated_tokens = int64_t(c.tokens.size());
  last_.prefill_seconds = std::chrono::duration<double>(first_token - start).count();
  last_.decode_seconds = std::chrono::duration<double>(end - first_token).count();
  last_.finish_reason = c.finish_reason;
  if (on_text && c.text.size() > shown) on_text(std::string_view(c.text).substr(std::min(shown, c.text.size())));
  std::string reply = c.text;
  if (reply_starts_in_think()) reply.insert(0, "<think>\n");  // the template opened it; the history keeps it whole
  messages_.push_back({"assistant", reply});
  return c.text;
}

void ChatSession::set_system(std::string system) {
  if (!messages_.empty() && messages_.front().role == "system") messages_.erase(messages_.begin());
  if (!system.empty()) messages_.insert(messages_.begin(), {"system", std::move(system)});
}

void ChatSession::clear() {
  std::vector<ChatMessage> kept;
  if (!messages_.empty() && messages_.front().role == "system") kept.push_back(messages_.front());
  messages_ = std::move(kept);
}

nlohmann::json ChatSession::to_json() const {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& m : messages_) list.push_back({{"role", m.role}, {"content", m.content}});
  return {{"messages", list}};
}

void ChatSession::from_json(const nlohmann::json& j, const std::string& source) {
  std::vector<ChatMessage> loaded;
  try {
    for (const auto& m : j.at("messages")) {
      const std::string role = m.at("role").get<std::string>();
      if (role != "system" && role != "user" && role != "assistant")
        fail("{}: unknown role '{}' (system, user, assistant)", source, role);
      loaded.push_back({role, m.at("content").get<std::string>()});
    }
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not a saved conversation: {}", source, json_error(e));
  }
  messages_ = std::move(loaded);
}

}  // namespace ds
