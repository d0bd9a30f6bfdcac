// Expert coverage report (issue 4 item 4): per MoE layer × expert, the calibration tokens routed to
// it per task, and the experts below a threshold flagged. GPTQ's Hessian for an expert is only as
// good as the tokens that reached it (ALGORITHMS.md §1.7); this report says which ones are thin.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace lathe {

class StatsStore;

/// An expert is flagged for a task when it received fewer than
/// max(min_tokens, ⌈min_fraction · tokens of that task⌉) tokens: ALGORITHMS.md §1.7's rule for
/// trusting the routed-token Hessian.
struct CoverageOptions {
  int64_t min_tokens = 256;
  double min_fraction = 0.005;
};

struct CoverageReport {
  struct Layer {
    int64_t layer = 0;
    std::vector<int64_t> task_tokens;                 ///< [task] valid tokens the router saw
    std::vector<std::vector<int64_t>> expert_tokens;  ///< [expert][task] tokens routed to it
  };
  struct Flag {
    int64_t layer = 0, expert = 0;
    std::string task;  ///< a task, or "all" for every task together
    int64_t tokens = 0, threshold = 0;
  };
  std::vector<std::string> tasks;
  CoverageOptions options;
  std::vector<Layer> layers;  ///< MoE layers, ascending
  std::vector<Flag> flagged;  ///< by layer, expert, then task order ("all" last)

  /// The threshold for a task with `task_tokens` tokens.
  int64_t threshold(int64_t task_tokens) const;
};

/// Reads every "expert_tokens" entry of `store` (as stored, whatever the current inputs are).
/// An empty report (no layers) for a dense model's store. DataError when entries are inconsistent.
CoverageReport coverage_from_store(const StatsStore& store, const CoverageOptions& options);

/// {"format":"lathe-coverage","version":1,"rule":{...},"tasks":[...],"layers":[{"layer",
/// "tokens":{task:n},"experts":[{"expert","tokens":{task:n},"all":n}]}],"flagged":[{...}]}
nlohmann::json coverage_json(const CoverageReport& report);

/// A human summary: one line per layer (min / median / max tokens per expert, flagged counts) and
/// the flagged experts (first 40; the JSON has all).
std::string coverage_text(const CoverageReport& report);

}  // namespace lathe
