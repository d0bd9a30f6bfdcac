// Multiple-choice task files: JSONL lines {"context": str, "choices": [str...], "answer": int}.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lathe {

/// One item of a task file, as text.
struct TaskItemText {
  std::string context;
  std::vector<std::string> choices;  ///< continuations, each appended to the context as is
  int64_t answer = 0;
};

/// Reads a task file. DataError naming "file:line" and the field for malformed lines (not JSON,
/// missing or mistyped field, fewer than 2 choices, answer out of range); ResourceError when the
/// file cannot be read. Blank lines are skipped.
std::vector<TaskItemText> read_task_file(const std::filesystem::path& path);

}  // namespace lathe
