// Pieces that report.md and report.html both show, computed once. Internal to compressor/report.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "compressor/report/compare.h"
#include "compressor/report/report.h"

namespace lathe::report_detail {

/// eval.before vs eval.after under the gate's thresholds; nullopt unless both sides exist.
std::optional<Comparison> eval_comparison(const Report& report);

/// Tensors grouped by (format, bits), in order of first appearance.
struct FormatSummary {
  std::string format;
  int64_t bits = 0;
  int64_t tensors = 0;
  std::optional<double> mean_rel_err;  ///< over the tensors that have one
};
std::vector<FormatSummary> summarize_formats(const std::vector<TensorReport>& tensors);

/// The role of a tensor inside its layer: "model.layers.3.mlp.experts.5.down_proj.weight" →
/// "mlp.experts.*.down_proj" (layer prefix, expert index and ".weight" removed).
std::string tensor_kind(const std::string& name);

/// Per layer, where the Hessians of its calibration-quantized tensors came from (gptq;
/// ALGORITHMS.md §1.7): tensors per source and the fewest / most tokens among its routed-expert
/// tensors.
struct HessianRow {
  int64_t layer = 0;
  int64_t routed = 0, all = 0, none = 0;  ///< tensors (fused: experts) per Hessian source
  std::optional<int64_t> fewest, most;    ///< tokens of expert tensors
};
std::vector<HessianRow> hessian_rows(const Report& report);

/// True when any layer records an expert count (an MoE model).
bool has_moe_layers(const Report& report);

/// "0.81%" for a relative error, "-" for none.
std::string format_rel_err(const std::optional<double>& value);
/// "12" or "-".
std::string format_count(const std::optional<int64_t>& value);
/// True when some layer has weight sparsity (the layer tables then show it).
bool has_sparsity(const Report& report);
/// Whether any layer was carved by the cmoe pass (LayerReport::carve).
bool has_carve(const Report& report);
/// "50.8% (target 50.9%)", or "-" for a dense layer.
std::string format_sparsity(const LayerReport& layer);
/// "3.2 s".
std::string format_seconds(double seconds);
/// "3.55× smaller (28.2% of before)", or "" when a size is unknown or zero.
std::string size_ratio(const Report& report);
/// A metric value as the report shows it: perplexity 4 decimals, accuracy as a percentage.
std::string format_metric(MetricKind kind, double value);
/// A metric change: "+2.70%" for perplexity, "-1.20 pp" for accuracy.
std::string format_change(MetricKind kind, double delta);
/// "passed", "FAILED (2 regressions)" or "none".
std::string gate_summary(const Report& report);
/// "max perplexity increase 3.00%, max accuracy drop 1.00 pp".
std::string gate_thresholds(const GateReport& gate);

}  // namespace lathe::report_detail
