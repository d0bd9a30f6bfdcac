// Held-out evaluation as a library: perplexity files and multiple-choice task files through the
// streaming forward, giving the eval JSON of docs/eval.md. `lathe eval` and `lathe run`
// (before/after) both call it.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compressor/eval/evaluate.h"
#include "compressor/model/causal_lm.h"

namespace lathe {

struct EvalRequest {
  std::string model;
  /// Optional reference model (any form `model` takes): each text file also gets the divergence
  /// of `model` from it (KL, top-1 agreement, the reference's perplexity; docs/eval.md).
  std::string reference;
  std::vector<std::string> texts, tasks;
  WindowOptions windows;  ///< its prefix_token is set from `bos`
  /// "auto": each perplexity window and task context starts with the tokenizer's BOS when
  /// tokenizer_config.json says add_bos_token: true (Gemma); "on": always (ConfigError without a
  /// bos_token); "off": never.
  std::string bos = "auto";
  ForwardOptions forward;
  int64_t micro_batch = 8;
  bool print = true;           ///< one result line per file on stdout
  std::string label = "eval";  ///< progress prefix on stderr
};

/// Runs the evaluation; returns the eval JSON object (docs/eval.md).
nlohmann::json evaluate_model(const EvalRequest& request);

}  // namespace lathe
