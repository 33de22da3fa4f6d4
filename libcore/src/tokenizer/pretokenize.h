#pragma once
// Hugging Face pre-tokenizers for byte-level BPE, read from a tokenizer.json `pre_tokenizer`: `Split` (a regex or a
// literal, its delimiter behavior, invert), `ByteLevel` (prefix space, GPT-2's regex) and a `Sequence` of Splits
// ending in ByteLevel. Regexes run on PCRE2 with Unicode properties, so GPT-2's, Llama-3's and DeepSeek-V3's
// patterns (\p{L}, \p{N}, lookahead, (?i:...)) mean what they mean in `tokenizers` (Oniguruma there).
//
// ByteLevel's byte-to-unicode mapping is not done here: pieces stay raw bytes and the BPE model maps them.
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ds/regex.h"

namespace ds::tok {

using Json = nlohmann::json;  // std::map objects: vocabularies of 128K entries parse in O(n log n)

class PreTokenizer {
 public:
  // Throws naming `origin` for a pre-tokenizer type or option that is not supported.
  PreTokenizer(const Json& config, const std::string& origin);

  // DeepSeek-V3's pre_tokenizer, exactly as in its tokenizer.json: digit runs of up to three, runs of CJK ideographs
  // and kana, then a GPT-style word regex, then ByteLevel without its own regex.
  static Json deepseek_v3_config();

  // Calls on_piece for each piece of `text`, in order. A piece may be a temporary (with ByteLevel's prefix space).
  using OnPiece = std::function<void(std::string_view)>;
  void split(std::string_view text, const OnPiece& on_piece) const;

 private:
  enum class Behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };  // as kBehaviors
  struct Step {
    Regex regex;
    Behavior behavior;
    bool invert;
  };

  // The piece as alternating gaps and matches, each flagged as a match or not after `invert` (`tokenizers`'
  // find_matches); empty matches included, empty gaps not.
  static void for_each_part(const Regex& regex, std::string_view piece, bool invert,
                            const std::function<void(size_t, size_t, bool)>& on_part);
  // Split step `step` (ByteLevel after the last) applied to one piece.
  void run(size_t step, std::string_view piece, const OnPiece& on_piece) const;

  std::vector<Step> splits_;         // the Split steps, in order
  bool add_prefix_space_ = false;    // ByteLevel: a space before each piece that does not start with one
  std::optional<Regex> byte_regex_;  // ByteLevel use_regex: GPT-2's pattern
};

}  // namespace ds::tok
