#include "ds/tasks.h"

#include <nlohmann/json.hpp>

#include <unordered_map>

#include "ds/arith.h"
#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/jsonl.h"
#include "ds/verify.h"

namespace ds {
namespace {

using json = nlohmann::json;

std::vector<Task> arith_tasks(std::vector<arith::Problem> problems) {
  std::vector<Task> tasks;
  for (arith::Problem& p : problems) tasks.push_back({std::move(p.id), std::move(p.prompt), std::move(p.answer)});
  return tasks;
}

std::vector<Task> arith_train() {
  arith::Generator generator(0, arith::Split::train);
  std::vector<arith::Problem> problems;
  for (size_t i = 0; i < kArithTrainTasks; ++i) problems.push_back(generator.next());
  return arith_tasks(std::move(problems));
}

// One JSONL line as a task; `where` is "name:line" for messages.
Task parse_task(std::string_view line, const std::string& where) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::parse_error& e) {
    fail("{}: invalid JSON at byte {}", where, e.byte);
  } catch (const json::exception& e) {  // a number too large for a double
    fail("{}: invalid JSON: {}", where, json_error(e));
  }
  if (!j.is_object()) fail("{}: not a JSON object", where);
  // A string, or a number written as its JSON text; `field` names it in messages.
  auto text = [&](const json& value, std::string_view field) {
    if (value.is_string()) return value.get<std::string>();
    if (value.is_number()) return value.dump();
    fail("{}: '{}' must be a string or a number", where, field);
  };
  Task task;
  std::string prompt_field, answer_field;
  for (const auto& [key, value] : j.items()) {
    const bool is_prompt = key == "prompt" || key == "question" || key == "problem";
    const bool is_answer = key == "answer" || key == "solution";
    if (key == "id") {
      task.id = text(value, key);
      if (task.id.empty()) fail("{}: empty id", where);
    } else if (is_prompt || is_answer) {
      std::string& seen = is_prompt ? prompt_field : answer_field;
      if (!seen.empty()) fail("{}: both '{}' and '{}' given", where, seen, key);
      seen = key;
      if (is_prompt && !value.is_string()) fail("{}: '{}' must be a string", where, key);
      (is_prompt ? task.prompt : task.answer) = text(value, key);
    } else {
      fail("{}: unknown field '{}' (expected id, prompt, answer)", where, key);
    }
  }
  if (prompt_field.empty()) fail("{}: no 'prompt'", where);
  if (task.prompt.find_first_not_of(" \t\r\n") == std::string::npos) fail("{}: empty prompt", where);
  if (answer_field.empty()) fail("{}: no 'answer'", where);
  if (answer_field == "solution")
    if (auto boxed = verify::last_boxed(task.answer)) task.answer = *boxed;
  return task;
}

}  // namespace

std::vector<Task> parse_tasks(std::string_view jsonl, const std::string& name) {
  std::vector<Task> tasks;
  std::unordered_map<std::string, size_t> id_lines;
  size_t line_number = 0;
  while (!jsonl.empty()) {
    const size_t end = std::min(jsonl.find('\n'), jsonl.size());
    std::string_view line = jsonl.substr(0, end);
    jsonl.remove_prefix(std::min(end + 1, jsonl.size()));
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const std::string where = fmt::format("{}:{}", name, line_number);
    if (line.size() > kMaxJsonlLineBytes)
      fail("{}: the line is {} bytes, more than the limit of {}", where, line.size(), kMaxJsonlLineBytes);
    Task task = parse_task(line, where);
    if (task.id.empty()) task.id = std::to_string(line_number);
    if (const auto [it, fresh] = id_lines.emplace(task.id, line_number); !fresh)
      fail("{}: id '{}' already used on line {}", where, task.id, it->second);
    tasks.push_back(std::move(task));
  }
  if (tasks.empty()) fail("{}: no tasks", name);
  return tasks;
}

std::vector<Task> load_tasks(const std::string& source) {
  if (source == "builtin:arith" || source == "builtin:arith:test")
    return arith_tasks(arith::test_set(kArithTestTasks, 0));
  if (source == "builtin:arith:train") return arith_train();
  if (source.starts_with("builtin:"))
    fail("unknown task set '{}' (built in: builtin:arith, builtin:arith:test, builtin:arith:train)", source);
  return parse_tasks(read_file(source), source == "-" ? "<stdin>" : source);
}

}  // namespace ds
