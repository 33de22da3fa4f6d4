#include "pretokenize.h"

#include <algorithm>

#include "../io/utf8.h"
#include "ds/error.h"

namespace ds::tok {
namespace {

// GPT-2's pre-tokenizer regex, as `tokenizers` uses it for ByteLevel with use_regex.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Split behaviors by their tokenizer.json names, in the order of PreTokenizer::Behavior.
constexpr std::string_view kBehaviors[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};

}  // namespace

Json PreTokenizer::deepseek_v3_config() {
  const auto split = [](std::string pattern) {
    return Json{
        {"type", "Split"}, {"pattern", {{"Regex", std::move(pattern)}}}, {"behavior", "Isolated"}, {"invert", false}};
  };
  return {{"type", "Sequence"},
          {"pretokenizers",
           {split(R"(\p{N}{1,3})"),
            split("[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+"),
            split("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
                  " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
}

PreTokenizer::PreTokenizer(const Json& config, const std::string& origin) {
  const bool sequence = config.at("type") == "Sequence";
  const Json& steps = sequence ? config.at("pretokenizers") : Json::array({config});
  for (size_t i = 0; i < steps.size(); ++i) {
    const Json& step = steps[i];
    const std::string type = step.at("type").get<std::string>();
    const bool last = i + 1 == steps.size();
    if (type == "ByteLevel" && last) {
      add_prefix_space_ = step.at("add_prefix_space").get<bool>();
      if (step.value("use_regex", true)) byte_regex_.emplace(std::string(kGpt2Pattern), false, origin);
    } else if (type == "Split") {
      const Json& pattern = step.at("pattern");
      const bool literal = pattern.contains("String");
      const std::string behavior = step.at("behavior").get<std::string>();
      const auto known = std::find(std::begin(kBehaviors), std::end(kBehaviors), behavior);
      if (known == std::end(kBehaviors)) fail("{}: unknown Split behavior {:?}", origin, behavior);
      const auto b = Behavior(known - std::begin(kBehaviors));
      splits_.push_back({Regex(pattern.at(literal ? "String" : "Regex").get<std::string>(), literal, origin), b,
                         step.value("invert", false)});
    } else {
      fail("{}: pre_tokenizer {} is not supported: byte-level BPE needs Split steps followed by ByteLevel", origin,
           type);
    }
  }
  if (steps.empty() || steps.back().at("type") != "ByteLevel")
    fail("{}: the pre_tokenizer must end with ByteLevel (byte-level BPE)", origin);
}

void PreTokenizer::split(std::string_view text, const OnPiece& on_piece) const {
  if (!text.empty()) run(0, text, on_piece);
}

void PreTokenizer::for_each_part(const Regex& regex, std::string_view piece, bool invert,
                                 const std::function<void(size_t, size_t, bool)>& on_part) {
  size_t prev = 0;
  regex.for_each_match(piece, [&](size_t begin, size_t end) {
    if (begin > prev) on_part(prev, begin, invert);
    on_part(begin, end, !invert);
    prev = end;
  });
  if (prev < piece.size()) on_part(prev, piece.size(), invert);
}

void PreTokenizer::run(size_t step, std::string_view piece, const OnPiece& on_piece) const {
  if (step == splits_.size()) {  // ByteLevel
    std::string prefixed;
    if (add_prefix_space_ && piece.front() != ' ') {
      prefixed.append(1, ' ').append(piece);
      piece = prefixed;
    }
    if (!byte_regex_) return on_piece(piece);
    for_each_part(*byte_regex_, piece, false, [&](size_t begin, size_t end, bool) {  // Isolated
      if (end > begin) on_piece(piece.substr(begin, end - begin));
    });
    return;
  }

  const Step& s = splits_[step];
  const auto next = [&](size_t begin, size_t end) {
    if (end > begin) run(step + 1, piece.substr(begin, end - begin), on_piece);
  };
  // Isolated and Removed pass the parts on as they come; the merging behaviors group them first.
  struct Part {
    size_t begin, end;
    bool match;
  };
  std::vector<Part> parts;
  for_each_part(s.regex, piece, s.invert, [&](size_t begin, size_t end, bool match) {
    if (s.behavior == Behavior::isolated || (s.behavior == Behavior::removed && !match))
      next(begin, end);
    else if (s.behavior != Behavior::removed)
      parts.push_back({begin, end, match});
  });

  std::vector<Part> out;
  bool previous_match = false;
  switch (s.behavior) {
    case Behavior::removed:
    case Behavior::isolated:
      break;
    case Behavior::merged_with_previous:  // a match joins the piece before it (unless that was a match too)
      for (const Part& p : parts) {
        if (p.match && !previous_match && !out.empty())
          out.back().end = p.end;
        else
          out.push_back(p);
        previous_match = p.match;
      }
      break;
    case Behavior::merged_with_next:  // the mirror image, walking from the end
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->match && !previous_match && !out.empty())
          out.back().begin = it->begin;
        else
          out.push_back(*it);
        previous_match = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    case Behavior::contiguous:  // runs of matches and runs of gaps
      for (const Part& p : parts) {
        if (!out.empty() && p.match == previous_match)
          out.back().end = p.end;
        else
          out.push_back(p);
        previous_match = p.match;
      }
      break;
  }
  for (const Part& p : out) next(p.begin, p.end);
}

}  // namespace ds::tok
