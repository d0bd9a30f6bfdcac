// The metrics of one `lathe eval --json` file (docs/eval.md), read defensively so that the report
// and `lathe compare` see the same numbers. Torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace lathe {

/// One text file's perplexity. `perplexity` is +infinity where the file stores null (nlohmann
/// writes a non-finite double as null: a diverged model).
struct PerplexityEntry {
  double perplexity = 0;
  std::optional<int64_t> tokens;     ///< tokens in the file, when recorded
  std::optional<int64_t> predicted;  ///< the perplexity's denominator, when recorded
};

/// One task file's accuracy, a fraction in [0, 1].
struct TaskEntry {
  double accuracy = 0;
  std::optional<int64_t> n, correct;
};

/// The parts of an eval JSON that reports and comparisons use; `raw` keeps the whole object so a
/// report can store it unchanged (keys are only ever added to the format).
struct EvalSummary {
  std::string model;
  std::optional<int64_t> seq_len, stride;
  std::map<std::string, PerplexityEntry> perplexity;  ///< by file name, sorted
  std::map<std::string, TaskEntry> tasks;             ///< by file name, sorted
  nlohmann::json raw;
};

/// Validates `eval` as an eval JSON object. Throws DataError(where, prefix + field) naming the
/// first malformed field: not an object, neither `perplexity` nor `tasks` present, a perplexity
/// that is not a positive number (or null), an accuracy outside [0, 1], a count that is not a
/// non-negative integer. Unknown keys are ignored.
EvalSummary parse_eval_summary(const nlohmann::json& eval, const std::string& where,
                               const std::string& prefix = "");

/// Reads and validates an eval JSON file: ResourceError when it cannot be read, DataError when it
/// is not strict JSON (duplicate keys rejected) or not an eval object.
EvalSummary read_eval_file(const std::string& path);

}  // namespace lathe
