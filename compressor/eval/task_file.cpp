#include "compressor/eval/task_file.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/common/strict_json.h"

namespace lathe {
namespace {

TaskItemText parse_item(const std::string& line, const std::string& where) {
  const nlohmann::json j = parse_json_strict(line, where, "");
  if (!j.is_object()) throw DataError(where, "", "expected a JSON object per line");
  TaskItemText item;
  if (!j.contains("context") || !j["context"].is_string())
    throw DataError(where, "context", "expected a string");
  item.context = j["context"].get<std::string>();
  if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].size() < 2) {
    throw DataError(where, "choices", "expected a list of at least 2 strings");
  }
  for (const auto& c : j["choices"]) {
    if (!c.is_string() || c.get<std::string>().empty())
      throw DataError(where, "choices", "expected non-empty strings");
    item.choices.push_back(c.get<std::string>());
  }
  if (!j.contains("answer") || !j["answer"].is_number_integer())
    throw DataError(where, "answer", "expected an integer");
  item.answer = j["answer"].get<int64_t>();
  if (item.answer < 0 || item.answer >= static_cast<int64_t>(item.choices.size())) {
    throw DataError(where, "answer",
                    std::to_string(item.answer) + " is not an index into the " +
                        std::to_string(item.choices.size()) + " choices");
  }
  return item;
}

}  // namespace

std::vector<TaskItemText> read_task_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ResourceError(path.string(), "", "cannot open the task file");
  std::vector<TaskItemText> items;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    items.push_back(parse_item(line, path.string() + ":" + std::to_string(number)));
  }
  if (items.empty()) throw DataError(path.string(), "", "no task items");
  return items;
}

}  // namespace lathe
