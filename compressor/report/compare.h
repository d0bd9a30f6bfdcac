// `lathe compare A B`: metric deltas between two evaluations and the regression gate
// (docs/compare.md). Torch-free.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compressor/report/eval_summary.h"

namespace lathe {

struct GateReport;

/// Regression limits; an absent limit gates nothing.
struct Thresholds {
  std::optional<double>
      max_ppl_increase;                ///< relative perplexity increase, as a fraction (0.03 = 3%)
  std::optional<double> max_acc_drop;  ///< accuracy drop in percentage points (1 = 71% → 70%)
  bool any() const { return max_ppl_increase.has_value() || max_acc_drop.has_value(); }
};

/// "3%" → 0.03, "0.03" → 0.03, "0" → 0. A bare number is a fraction and must be below 1 (a bare
/// "3" would allow a 300% increase, so it is refused with a hint to write "3%"). Throws
/// ConfigError(field = `flag`) for anything else: empty, "3%%", "-1%", "nan", "3 %", trailing text.
double parse_ppl_increase(const std::string& text, const std::string& flag = "--max-ppl-increase");

/// "1" → 1.0 percentage point, "0.5pp" → 0.5. A "%" suffix is refused as ambiguous (relative or
/// points?). Throws ConfigError(field = `flag`) for negative, non-finite or malformed text, and
/// for values above 100.
double parse_acc_drop(const std::string& text, const std::string& flag = "--max-acc-drop");

enum class MetricKind { kPerplexity, kAccuracy };

/// "perplexity" or "accuracy".
const char* metric_kind_name(MetricKind kind);

/// One metric present on both sides.
struct MetricDelta {
  MetricKind kind = MetricKind::kPerplexity;
  std::string name;     ///< the eval file name
  double a = 0, b = 0;  ///< perplexity, or accuracy as a fraction in [0, 1]
  /// perplexity: b / a - 1 (relative, +inf when only b is infinite, 0 when both are);
  /// accuracy: 100 · (b − a), in percentage points.
  double delta = 0;
  /// The allowed perplexity increase (fraction) or accuracy drop (points, positive); none if
  /// ungated.
  std::optional<double> limit;
  /// True when gated and the change is worse than the limit: perplexity delta > limit, or accuracy
  /// −delta > limit. Strictly greater: a change equal to the limit passes; differences below 1e-9
  /// count as equal, so 10 → 10.3 passes a 3% limit despite 10.3 / 10 − 1 = 0.030000000000000072.
  bool regression = false;
};

/// A metric that only one side has.
struct OneSidedMetric {
  MetricKind kind;
  std::string name;
};

struct Comparison {
  std::vector<MetricDelta> metrics;  ///< perplexities first, then accuracies, each sorted by name
  std::vector<OneSidedMetric> only_in_a, only_in_b;
  std::vector<std::string> warnings;  ///< token-count, seq_len or stride mismatches
  Thresholds thresholds;
  bool passed = true;  ///< no metric regressed (true when ungated)
};

/// Compares A (baseline) with B (candidate) under `thresholds`. Throws DataError (where =
/// `b_label`) when thresholds are given but the two sides share no metric: a gate must not pass
/// vacuously.
Comparison compare_evals(const EvalSummary& a, const EvalSummary& b, const Thresholds& thresholds,
                         const std::string& b_label = "B");

/// One readable line per regressed metric, e.g. "perplexity wiki.txt: +3.40% > 3.00%".
std::vector<std::string> regression_lines(const Comparison& comparison);

/// The gate record a report stores for `comparison` (thresholds, passed, failure lines).
GateReport gate_report(const Comparison& comparison);

/// The aligned text table `lathe compare` prints, with the only-in-one-side lines, warnings and a
/// final verdict line.
std::string format_comparison(const Comparison& comparison, const std::string& a_label,
                              const std::string& b_label);

/// {"a", "b", "thresholds", "metrics": [{"kind", "name", "a", "b", "delta", "limit",
/// "regression"}],
///  "only_in_a", "only_in_b", "warnings", "passed"} (docs/compare.md).
nlohmann::json comparison_to_json(const Comparison& comparison, const std::string& a_label,
                                  const std::string& b_label);

/// One side of a comparison, loaded from a path.
struct CompareInput {
  std::string label;  ///< the path, plus " (eval.after)" etc. when taken from a report
  EvalSummary eval;
  Thresholds gate;  ///< thresholds recorded in a report's gate (empty for an eval JSON)
};

/// Loads `path`: an output directory (its report/report.json, eval.after), a report.json
/// (eval.after, or eval.before when `use_before`), or an eval JSON. ResourceError when missing or
/// unreadable, DataError when malformed or when the report has no such evaluation.
CompareInput load_compare_input(const std::string& path, bool use_before = false);

}  // namespace lathe
