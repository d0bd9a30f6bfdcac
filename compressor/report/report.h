// The run report (DESIGN.md "Output directory": out/report/): report.json, schema v1 documented in
// docs/report.md, and its two renderings, report.md and a self-contained report.html whose plots
// are inline SVG. The pipeline runner fills a Report; `lathe report` re-renders from report.json.
// Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compressor/report/eval_summary.h"

namespace lathe {

/// The report.json "format" and "version" values this code reads and writes.
inline constexpr const char* kReportFormat = "lathe-report";
inline constexpr int kReportVersion = 1;

/// One decoder layer. Expert counts are null for a dense layer.
struct LayerReport {
  int64_t layer = 0;
  std::optional<int64_t> experts_before, experts_kept;
  std::optional<double>
      rel_err;         ///< relative reconstruction error of the layer output, null if not measured
  double seconds = 0;  ///< wall time spent on this layer in the apply stage
  /// Weight sparsity (docs/sparsity.md): the mean fraction of zeros over the layer's pruned
  /// linears, and the ratio its pass aimed at (the layer's OWL / DLP allocation); null: none
  /// pruned.
  std::optional<double> sparsity, sparsity_target;
  /// The cmoe pass carved its dense FFN (docs/cmoe.md): "S2A6E16" (S shared, A active routed of
  /// N experts); empty: not carved.
  std::string carve;
};

/// One tensor of the input checkpoint and what became of it.
struct TensorReport {
  std::string name;              ///< checkpoint name, e.g. model.layers.0.mlp.down_proj.weight
  std::optional<int64_t> layer;  ///< null for tensors outside decoder layers (embeddings, lm_head)
  std::string format;            ///< "rtn-int4-g128-sym", "bf16", "removed", ...
  int64_t bits = 16;             ///< bits per weight: 16 unquantized bf16/fp16, 32 fp32, 0 removed
  std::optional<double> rel_err;
  /// Calibration-aware quantization (gptq): tokens behind the Hessian (an expert's routed tokens
  /// n_e, or all tokens) and its source ("routed", "all", "none"; fused experts: "routed 5, all
  /// 3").
  std::optional<int64_t> tokens;
  std::string h_source;
  std::optional<double> zeros;  ///< the fraction of weights a sparsity pass zeroed (null: dense)
};

/// Instrumentation of one pass (DESIGN.md: timing and peak memory are hooks around passes).
struct PassReport {
  std::string name, options;  ///< options printed as "k=v,k=v"
  double seconds = 0;
  std::optional<int64_t> peak_rss_bytes;
};

/// The outcome of the quality gate, when the recipe had one.
struct GateReport {
  std::optional<double> max_ppl_increase;  ///< fraction (0.03 = 3%)
  std::optional<double> max_acc_drop;      ///< percentage points
  std::optional<double> max_kl;            ///< nats/token (absent in reports before it existed)
  bool passed = true;
  std::vector<std::string> failures;  ///< one readable line per regressed metric
};

/// report.json in memory.
struct Report {
  std::string pipeline, model, output, lathe_version, created;
  std::optional<int64_t> size_before_bytes, size_after_bytes;
  std::vector<LayerReport> layers;
  std::vector<TensorReport> tensors;
  std::vector<PassReport> passes;
  std::optional<EvalSummary> eval_before, eval_after;
  std::optional<GateReport> gate;
};

/// Validates `doc` as report.json v1. Throws DataError(where, field path such as
/// "layers[2].rel_err") on malformed content, UnsupportedError(where, "version") for a newer
/// version. Unknown keys are ignored (the format only ever adds keys).
Report parse_report(const nlohmann::json& doc, const std::string& where);

/// Reads and validates a report.json file (ResourceError when unreadable, DataError when
/// malformed).
Report read_report_file(const std::string& path);

/// report.json v1 for `report` (the inverse of parse_report).
nlohmann::json report_to_json(const Report& report);

/// report.md: summary, size, eval before/after with deltas, gate, per-layer table, tensor formats,
/// per-pass timings. Table cells are escaped for Markdown.
std::string render_markdown(const Report& report);

/// report.html: one self-contained page (inline CSS, inline SVG, no scripts, no external resources)
/// with one <svg> per plot that has data: size before/after, experts kept per layer, bits per
/// tensor, per-layer reconstruction error, perplexity before/after, accuracy before/after. Missing
/// parts are stated in words instead of a plot. All text is HTML-escaped.
std::string render_html(const Report& report);

/// Writes report.json, report.md and report.html into `dir` (created if missing), each atomically.
void write_report_files(const Report& report, const std::string& dir);

/// Writes report.md and report.html next to the report.json at `report_json` (each atomically).
void render_report_files(const Report& report, const std::string& report_json);

/// Text helpers shared with `lathe compare`, exposed for tests.
namespace report_text {
/// `&`, `<`, `>`, `"`, `'` replaced by entities.
std::string html_escape(const std::string& text);
/// `|`, `\`, backtick, `<`, `>` and newlines made safe inside a Markdown table cell.
std::string markdown_cell(const std::string& text);
/// 1536 → "1.50 KiB"; binary units.
std::string human_bytes(double bytes);
}  // namespace report_text

}  // namespace lathe
