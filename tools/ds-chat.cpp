// ds-chat: chat with a model in a terminal, or answer prompts from a pipe.
#include <editline/readline.h>
#include <fmt/core.h>
#include <fmt/ranges.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <type_traits>
#include <variant>

#include "common.h"
#include "ds/chat_session.h"
#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/inference_model.h"
#include "ds/jsonl.h"

namespace {

// Shows the reply as it streams: the reasoning between <think> and </think> dimmed (or hidden), the rest plain.
class ReplyPrinter {
 public:
  ReplyPrinter(bool color, bool hide_think, bool in_think) : color_(color), hide_(hide_think), in_think_(in_think) {
    if (in_think_) style();
  }
  void print(std::string_view piece) {
    pending_ += piece;
    // Tags may arrive split over pieces: hold back a tail that could still become one.
    while (!pending_.empty()) {
      const std::string_view tag = in_think_ ? "</think>" : "<think>";
      const size_t at = pending_.find(tag);
      if (at == std::string::npos) {
        const size_t keep = partial_tag_length(tag);
        emit(pending_.substr(0, pending_.size() - keep));
        pending_.erase(0, pending_.size() - keep);
        return;
      }
      emit(pending_.substr(0, at));
      pending_.erase(0, at + tag.size());
      if (!(hide_ && in_think_)) emit_raw(std::string(tag));
      in_think_ = !in_think_;
      style();
    }
  }
  void finish() {
    emit(pending_);
    pending_.clear();
    if (color_) std::fputs("\x1b[0m", stdout);
    std::fputs("\n", stdout);
    std::fflush(stdout);
  }

 private:
  size_t partial_tag_length(std::string_view tag) const {
    for (size_t n = std::min(tag.size() - 1, pending_.size()); n > 0; --n)
      if (std::string_view(pending_).substr(pending_.size() - n) == tag.substr(0, n)) return n;
    return 0;
  }
  void style() {
    if (color_) std::fputs(in_think_ ? "\x1b[2m" : "\x1b[0m", stdout);
  }
  void emit(const std::string& text) {
    if (!(hide_ && in_think_)) emit_raw(text);
  }
  void emit_raw(const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  }
  bool color_, hide_, in_think_;
  std::string pending_;
};

// The sampling settings, given as options (--top-p) and changed by /set (top_p), with one range each.
struct Setting {
  std::string name;  // as /set takes it
  std::string help;
  ds::tool::Range range;
  std::variant<double ds::SamplingOptions::*, int64_t ds::SamplingOptions::*> field;
  std::string option() const {
    std::string flag = "--" + name;
    std::replace(flag.begin(), flag.end(), '_', '-');
    return flag;
  }
};
const Setting kSettings[] = {
    {"temperature", "sampling temperature (0 = greedy)", ds::tool::kTemperature, &ds::SamplingOptions::temperature},
    {"top_p", "nucleus sampling mass (1 = off)", ds::tool::kTopP, &ds::SamplingOptions::top_p},
    {"top_k", "keep the k most likely tokens (0 = off)", ds::tool::kTopK, &ds::SamplingOptions::top_k},
    {"min_p", "drop tokens below min-p times the most likely (0 = off)", ds::tool::kMinP, &ds::SamplingOptions::min_p},
    {"repetition_penalty", "penalty for tokens already seen (1 = off)", ds::tool::kRepetitionPenalty,
     &ds::SamplingOptions::repetition_penalty},
    {"max_new_tokens", "longest reply", ds::tool::kMaxNewTokens, &ds::SamplingOptions::max_new_tokens},
};

void print_help() {
  std::vector<std::string> names;
  for (const Setting& s : kSettings) names.push_back(s.name);
  fmt::print(stderr,
             "/clear            forget the conversation\n"
             "/save FILE        save the conversation as JSON\n"
             "/load FILE        load a saved conversation\n"
             "/set NAME VALUE   {}\n"
             "/stats            tokens and speed of the last reply\n"
             "/quit             leave (or Ctrl-D); Ctrl-C stops a reply\n"
             "A line ending in \\ continues on the next line.\n",
             fmt::join(names, ", "));
}

// /set NAME VALUE, checked as the option is; says what it set.
void set_option(ds::SamplingOptions& o, const std::string& name, const std::string& value) {
  const auto* s =
      std::find_if(std::begin(kSettings), std::end(kSettings), [&](const Setting& s) { return s.name == name; });
  if (s == std::end(kSettings)) ds::fail("/set: unknown setting '{}'; /help lists them", ds::printable(name));
  if (const std::string why = ds::tool::check_range(value, s->range); !why.empty()) ds::fail("/set {}: {}", name, why);
  std::visit(
      [&](auto field) {
        if constexpr (std::is_same_v<decltype(field), double ds::SamplingOptions::*>)
          o.*field = std::stod(value);
        else
          o.*field = std::stoll(value);
        fmt::print(stderr, "{} = {}\n", name, o.*field);
      },
      s->field);
}

// One reply as one line: a backslash becomes \\ and a newline \n, so each prompt line gets exactly one line back.
std::string one_line(std::string_view reply) {
  std::string out;
  for (const char c : reply) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

void print_stats(const ds::ChatTurnStats& s) {
  const double prefill = s.prefill_seconds > 0 ? double(s.prompt_tokens - s.cached_tokens) / s.prefill_seconds : 0;
  const double decode = s.decode_seconds > 0 ? double(s.generated_tokens - 1) / s.decode_seconds : 0;
  fmt::print(stderr, "prompt {} tokens ({} cached), {:.1f} tok/s; generated {} tokens, {:.1f} tok/s; {}\n",
             s.prompt_tokens, s.cached_tokens, prefill, s.generated_tokens, decode, s.finish_reason);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Chat with a model: interactively in a terminal, or one prompt per line from a pipe.", "ds-chat"};
  ds::tool::add_version_flag(app);
  ds::tool::add_config_option(app);
  std::string model_path, template_name = "r1", system;
  ds::SamplingOptions sampling;
  sampling.max_new_tokens = 512;
  uint64_t seed = 0;
  bool hide_think = false, jsonl = false;
  ds::tool::ComputeOptions compute;
  app.add_option("--model,-m", model_path, "model directory or run directory")->required();
  app.add_option("--template", template_name, "chat template: r1, r1-zero, plain or none")
      ->capture_default_str()
      ->check(ds::tool::chat_format_validator());
  app.add_option("--system", system, "system message");
  for (const Setting& s : kSettings)
    std::visit(
        [&](auto field) {
          app.add_option(s.option(), sampling.*field, s.help)->capture_default_str()->check(ds::tool::in(s.range));
        },
        s.field);
  app.add_option("--stop", sampling.stop, "stop strings");
  app.add_option("--seed", seed, "sampling seed")->capture_default_str()->check(ds::tool::in(ds::tool::kCount));
  app.add_flag("--hide-think", hide_think, "do not show the reasoning between <think> and </think>");
  app.add_flag("--jsonl", jsonl, "pipe mode: read {\"prompt\": ...} lines, write {\"prompt\", \"completion\"} lines");
  ds::tool::add_compute_options(app, compute);

  return ds::tool::run(app, argc, argv, [&] {
    const ds::Device device = ds::tool::apply_compute_options(compute, true);
    const ds::ChatFormat format = ds::parse_chat_format(template_name);
    const ds::InferenceModel m = ds::load_inference_model(model_path);
    ds::ChatSession session(m.weights, m.tokenizer, format, seed, device);
    session.set_system(system);
    std::atomic<bool>& stop = ds::tool::install_stop_signals();

    if (!isatty(STDIN_FILENO)) {  // pipe mode: every line is a new single-turn conversation
      // A prompt that fails is named on stderr and answered with an empty line (JSONL: {"prompt", "error"}), so
      // the answers stay in step with the prompts; the run goes on and exits 1 at the end.
      std::string line;
      int64_t number = 0, prompts = 0, failed = 0;
      while (std::getline(std::cin, line)) {
        ++number;
        if (line.empty()) continue;
        ++prompts;
        std::string prompt = line;
        try {
          if (jsonl) {
            try {
              prompt = nlohmann::json::parse(line).at("prompt").get<std::string>();
            } catch (const nlohmann::json::exception& e) {
              ds::fail("not a {{\"prompt\": ...}} line: {}", ds::json_error(e));
            }
          }
          session.clear();
          const std::string reply = session.send(prompt, sampling);
          fmt::print("{}\n", jsonl ? ds::to_jsonl({{"prompt", prompt}, {"completion", reply}}) : one_line(reply));
        } catch (const ds::Error& e) {
          ++failed;
          fmt::print(stderr, "ds-chat: <stdin>:{}: {}\n", number, e.what());
          fmt::print("{}\n", jsonl ? ds::to_jsonl({{"prompt", prompt}, {"error", e.what()}}) : "");
        }
        std::fflush(stdout);
        if (stop) break;
      }
      if (failed > 0) ds::fail("<stdin>: {} of {} prompts failed", failed, prompts);
      return;
    }

    const bool color = isatty(STDOUT_FILENO) && std::getenv("NO_COLOR") == nullptr;
    const std::string history = std::getenv("HOME") ? std::string(std::getenv("HOME")) + "/.ds_chat_history" : "";
    if (!history.empty()) read_history(history.c_str());
    const ds::Engine& engine = session.engine();
    fmt::print(stderr,
               "{} ({} parameters, {:.1f} MB of weights{}; latent cache {} bytes per token, per-head K/V would "
               "need {}). /help for commands.\n",
               m.dir, ds::count_params(engine.config()).total, double(m.weights.bytes()) * 1e-6,
               m.weights.fp8() ? " in FP8" : "", engine.cache_bytes_per_token(), engine.naive_cache_bytes_per_token());
    for (;;) {
      std::string input;
      for (const char* prompt = "> ";; prompt = ". ") {
        stop = false;
        char* line = readline(prompt);
        if (!line) {
          if (stop) break;  // Ctrl-C at the prompt: a fresh prompt, not an exit
          fmt::print("\n");
          if (!history.empty()) write_history(history.c_str());
          return;
        }
        std::string text = line;
        std::free(line);
        if (!text.empty() && text.back() == '\\') {
          input += text.substr(0, text.size() - 1) + "\n";
          continue;
        }
        input += text;
        break;
      }
      if (input.empty()) continue;
      add_history(input.c_str());
      std::istringstream words(input);
      std::string command, arg1, arg2;
      words >> command >> arg1 >> arg2;
      try {
        if (command == "/quit" || command == "/exit") break;
        if (command == "/help") {
          print_help();
        } else if (command == "/clear") {
          session.clear();
        } else if (command == "/stats") {
          print_stats(session.last_turn());
        } else if (command == "/set") {
          set_option(sampling, arg1, arg2);
        } else if (command == "/save") {
          ds::write_file_atomic(arg1,
                                session.to_json().dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
        } else if (command == "/load") {
          session.from_json(nlohmann::json::parse(ds::read_regular_file(arg1)), arg1);
        } else if (command.starts_with("/")) {
          fmt::print(stderr, "unknown command {}; /help lists them\n", command);
        } else {
          ReplyPrinter printer(color, hide_think, session.reply_starts_in_think());
          session.send(input, sampling, [&](std::string_view piece) {
            printer.print(piece);
            return !stop;
          });
          printer.finish();
          if (stop) fmt::print(stderr, "(stopped)\n");
        }
      } catch (const ds::ContextFull& e) {
        fmt::print(stderr, "{}; /clear starts a new one\n", e.what());
      } catch (const ds::Error& e) {
        fmt::print(stderr, "{}\n", e.what());
      } catch (const nlohmann::json::exception& e) {
        fmt::print(stderr, "{}: {}\n", arg1, ds::json_error(e));
      }
    }
    if (!history.empty()) write_history(history.c_str());
  });
}
