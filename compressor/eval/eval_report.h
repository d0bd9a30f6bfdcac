// Held-out evaluation as a library: perplexity files and multiple-choice task files through the
// streaming forward, giving the eval JSON of docs/eval.md. `lathe eval` and `lathe run` (before/after)
// both call it.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compressor/eval/evaluate.h"
#include "compressor/model/causal_lm.h"

namespace lathe {

struct EvalRequest {
  std::string model;
  std::vector<std::string> texts, tasks;
  WindowOptions windows;
  ForwardOptions forward;
  int64_t micro_batch = 8;
  bool print = true;        ///< one result line per file on stdout
  std::string label = "eval";  ///< progress prefix on stderr
};

/// Runs the evaluation; returns the eval JSON object (docs/eval.md).
nlohmann::json evaluate_model(const EvalRequest& request);

}  // namespace lathe
