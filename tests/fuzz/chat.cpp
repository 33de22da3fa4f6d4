// The chat-template renderer: the input is cut into messages (a byte per message picks the role, NUL ends the
// content) and rendered in every format. Whatever the contents, encoding must match the rendered text where the
// contents hold no special-token spellings, and decode back to it.
#include "ds/chat.h"

#include "ds/error.h"
#include "fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ds::Tokenizer tokenizer = ds::Tokenizer::byte_level();
  static const char* const roles[] = {"system", "user", "assistant", "tool"};
  std::vector<ds::ChatMessage> messages;
  const std::string_view text = ds::fuzz::as_text(data, size);
  for (size_t i = 0; i < text.size();) {
    const size_t end = std::min(text.find('\0', i + 1), text.size());
    messages.push_back({roles[uint8_t(text[i]) % 4], std::string(text.substr(i + 1, end - i - 1))});
    i = end + 1;
  }
  for (const auto format : {ds::ChatFormat::r1, ds::ChatFormat::r1_zero, ds::ChatFormat::plain, ds::ChatFormat::none}) {
    const ds::ChatTemplate chat(tokenizer, format);
    for (const bool prompt : {false, true}) {
      try {
        const std::string rendered = chat.render(messages, prompt);
        const std::vector<uint32_t> ids = chat.encode(messages, prompt);
        if (tokenizer.decode(ids, false) != rendered) __builtin_trap();
      } catch (const ds::Error&) {
      }
    }
  }
  return 0;
}
