// PreMoe's pattern bank (ALGORITHMS.md §4.2; docs/tcess.md): per calibration task, the router's
// mass vectors of every MoE layer and the experts each layer keeps for that task. The `tcess` pass
// writes it; `lathe route` reads it and picks the task whose pattern is nearest a prompt set
// (TAER, §4.3). Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lathe {

class CompressionPlan;

/// One task's pattern.
struct TaskPattern {
  std::string name;
  std::string score = "mass";  ///< "mass" | "frequency" | "top1-logit": what `kept` was ranked by
  double r = 0;                ///< mass threshold (0: every selected expert counts)
  int64_t tokens = 0;          ///< calibration tokens of the task (T)
  std::string calibration_fingerprint;
  /// [L_moe][E]: Σ_t p_{t,e}·1[e ∈ TopK(t)] / T, fp32 values (always stored: retrieval uses them).
  std::vector<std::vector<double>> mass;
  /// [L_moe][E]: the `score` vectors (sum / T); empty when score == "mass" (then they are `mass`).
  std::vector<std::vector<double>> scores;
  /// [L_moe][M]: kept ORIGINAL expert ids, ascending.
  std::vector<std::vector<int64_t>> kept;

  /// The vectors `kept` was ranked by.
  const std::vector<std::vector<double>>& ranking_scores() const {
    return scores.empty() ? mass : scores;
  }
};

struct PatternBank {
  std::string weights_fingerprint;   ///< FORMATS.md §7 weights fingerprint of the model
  std::vector<int64_t> moe_layers;   ///< decoder layer index of each MoE layer, ascending
  std::vector<int64_t> num_experts;  ///< routed experts per MoE layer (E)
  std::vector<int64_t> top_k;        ///< per MoE layer
  std::vector<TaskPattern> tasks;    ///< at least one, names unique

  /// The `lathe-pattern-bank` version 1 document (docs/tcess.md).
  nlohmann::json to_json() const;
  /// Parses and validates a document. DataError(where, field = JSON path, e.g. "tasks[1].mass[0]")
  /// for an unknown format or version, a missing or mistyped field, an unknown key, wrong vector
  /// lengths, non-finite or negative masses, kept ids out of range / not ascending / fewer than
  /// top_k, duplicate task names, or no task.
  static PatternBank from_json(const nlohmann::json& doc, const std::string& where);
  /// Reads `path` (ResourceError when it cannot be read; DataError when it is not JSON or invalid).
  static PatternBank read(const std::string& path);
  /// Writes the document to `path` atomically (atomic_file.h).
  void write(const std::string& path) const;
  /// Index of task `name`, or -1.
  int64_t find_task(const std::string& name) const;
};

/// The TAER query of per-layer mass vectors `layers` ([n][E]): each layer L2-normalised (a zero
/// vector stays zero), then concatenated.
std::vector<double> normalised_concat(const std::vector<std::vector<double>>& layers);

/// One task's similarity to a query.
struct RouteScore {
  int64_t task = 0;  ///< index into PatternBank::tasks
  double cosine = 0;
};

/// Every task of `bank` ranked by the cosine similarity of its pattern (mass vectors of the first
/// `layers` MoE layers, normalised and concatenated as the query) to `query` ([layers][E]): highest
/// first, ties → lower task index (ALGORITHMS.md §4.3).
std::vector<RouteScore> rank_patterns(const PatternBank& bank,
                                      const std::vector<std::vector<double>>& query, size_t layers);

/// Writes the pattern bank a `tcess` pass left in `plan` (diagnostics.tcess.pattern_bank) to `path`
/// atomically; false (nothing written) when the plan has none. `lathe run` writes
/// `<output>/pattern_bank.json`, `lathe plan --out P.json` writes `P.pattern_bank.json`.
bool write_plan_pattern_bank(const CompressionPlan& plan, const std::string& path);

}  // namespace lathe
