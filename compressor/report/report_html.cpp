// report.html: one self-contained page, inline CSS and SVG, no scripts (render_html in report.h).
#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include <fmt/format.h>

#include "compressor/report/report.h"
#include "compressor/report/report_sections.h"
#include "compressor/report/svg_chart.h"

namespace lathe {
namespace {

using namespace report_detail;
using report_text::html_escape;
using report_text::human_bytes;

constexpr const char* kBefore = "#9aa5b1";
constexpr const char* kAfter = "#2f6fdf";

constexpr const char* kStyle = R"(
body{margin:0;background:#f4f6f9;color:#1f2937;font:14px/1.45 "DejaVu Sans",system-ui,sans-serif}
main{max-width:1040px;margin:0 auto;padding:20px}
header{display:flex;align-items:center;gap:16px;margin-bottom:12px}
h1{font-size:24px;margin:0}
h2{font-size:17px;margin:0 0 10px}
h3{font-size:14px;margin:12px 0 2px;color:#334155}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;
  padding:14px 18px;margin:0 0 14px}
table{border-collapse:collapse;margin:6px 0}
th,td{padding:3px 10px;border-bottom:1px solid #edf0f4;text-align:left;vertical-align:top}
th{background:#f1f5f9;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv td:first-child{color:#64748b;white-space:nowrap}
code{font:12px/1.4 "DejaVu Sans Mono",monospace;word-break:break-all}
.badge{padding:3px 10px;border-radius:12px;font-weight:600;font-size:13px}
.pass{background:#dcfce7;color:#166534}.fail{background:#fee2e2;color:#991b1b}
.none{background:#e2e8f0;color:#475569}
.note{color:#64748b;font-style:italic;margin:4px 0}
.regression{color:#b91c1c;font-weight:600}
svg.plot{display:block;max-width:960px;margin:4px 0 8px}
svg text{font-family:"DejaVu Sans",system-ui,sans-serif}
svg .tick{font-size:11px;fill:#475569} svg .value{font-size:10px;fill:#1f2937}
svg .legend{font-size:12px;fill:#1f2937} svg .caption{font-size:11px;fill:#64748b}
svg .cell{font-size:10px;fill:#0f172a} svg .grid{stroke:#e5e9f0} svg .axis{stroke:#94a3b8}
details summary{cursor:pointer;color:#334155;margin:6px 0}
)";

std::string esc(const std::string& s) {
  return html_escape(s);
}
std::string note(const std::string& s) {
  return "<p class=\"note\">" + esc(s) + "</p>\n";
}

/// A table from a header row and body rows; columns listed in `numeric` are right-aligned.
std::string table(const std::vector<std::string>& head,
                  const std::vector<std::vector<std::string>>& rows,
                  const std::set<size_t>& numeric) {
  std::string out = "<table><tr>";
  for (size_t i = 0; i < head.size(); ++i)
    out += fmt::format("<th{}>{}</th>", numeric.count(i) ? " class=\"num\"" : "", esc(head[i]));
  out += "</tr>\n";
  for (const auto& r : rows) {
    out += "<tr>";
    for (size_t i = 0; i < r.size(); ++i)
      out += fmt::format("<td{}>{}</td>", numeric.count(i) ? " class=\"num\"" : "", esc(r[i]));
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

std::string header(const Report& r) {
  const char* cls = !r.gate ? "none" : r.gate->passed ? "pass" : "fail";
  std::string out = fmt::format(
      "<header><h1>lathe report</h1><span class=\"badge {}\">gate: {}</span></header>\n", cls,
      esc(gate_summary(r)));
  out += "<section><table class=\"kv\">\n";
  auto kv = [](const char* k, const std::string& v, bool code) {
    return fmt::format("<tr><td>{}</td><td>{}{}{}</td></tr>\n", k, code ? "<code>" : "", esc(v),
                       code ? "</code>" : "");
  };
  out += kv("pipeline", r.pipeline, true) + kv("model", r.model, true) +
         kv("output", r.output, true) + kv("lathe", r.lathe_version, false) +
         kv("created", r.created, false);
  out += "</table></section>\n";
  return out;
}

std::string size_section(const Report& r) {
  std::string out = "<section><h2>Size</h2>\n";
  if (!r.size_before_bytes || !r.size_after_bytes)
    return out + note("Size not recorded.") + "</section>\n";
  const double before = static_cast<double>(*r.size_before_bytes),
               after = static_cast<double>(*r.size_after_bytes);
  out += svg::size_bars("Checkpoint size before and after", before, after, human_bytes(before),
                        human_bytes(after));
  const std::string ratio = size_ratio(r);
  if (!ratio.empty()) out += "<p>" + esc(ratio) + "</p>\n";
  return out + "</section>\n";
}

std::string percent_label(double fraction) {
  return fmt::format("{:.4g}%", 100 * fraction);
}

/// Before/after bars for one metric kind, over the union of file names.
template <typename Entry, typename Get>
std::string metric_chart(const std::string& title, const std::string& y_label,
                         const std::optional<EvalSummary>& before,
                         const std::optional<EvalSummary>& after,
                         const std::map<std::string, Entry> EvalSummary::*member, Get get,
                         bool accuracy) {
  std::set<std::string> names;
  for (const auto* side : {&before, &after})
    if (*side)
      for (const auto& [name, e] : (**side).*member) names.insert(name);
  if (names.empty()) return "";
  svg::BarChart chart;
  chart.title = title;
  chart.y_label = y_label;
  chart.categories.assign(names.begin(), names.end());
  auto series = [&](const char* label, const char* color, const std::optional<EvalSummary>& side) {
    svg::Series s{label, color, {}};
    for (const auto& name : names) {
      auto it = ((*side).*member).find(name);
      s.values.push_back(it == ((*side).*member).end() ? std::nullopt
                                                       : std::optional<double>(get(it->second)));
    }
    chart.series.push_back(s);
  };
  if (before) series("before", kBefore, before);
  if (after) series("after", kAfter, after);
  if (accuracy) {
    chart.y_max = 1.0;
    chart.format = percent_label;
  } else {
    chart.format = [](double v) {
      return std::isinf(v) ? std::string("inf") : fmt::format("{:.4g}", v);
    };
  }
  return svg::bar_chart(chart);
}

std::string eval_table(const Report& r) {
  std::vector<std::vector<std::string>> rows;
  const auto c = eval_comparison(r);
  if (c) {
    for (const auto& m : c->metrics) {
      const std::string limit = !m.limit ? "-"
                                : m.kind == MetricKind::kPerplexity
                                    ? fmt::format("+{:.2f}%", 100 * *m.limit)
                                    : fmt::format("-{:.2f} pp", *m.limit);
      rows.push_back({metric_kind_name(m.kind), m.name, format_metric(m.kind, m.a),
                      format_metric(m.kind, m.b), format_change(m.kind, m.delta), limit,
                      !m.limit       ? "-"
                      : m.regression ? "REGRESSION"
                                     : "ok"});
    }
    for (const auto& m : c->only_in_a)
      rows.push_back({metric_kind_name(m.kind), m.name, "", "-", "only before", "", ""});
    for (const auto& m : c->only_in_b)
      rows.push_back({metric_kind_name(m.kind), m.name, "-", "", "only after", "", ""});
    std::string out = table({"metric", "file", "before", "after", "change", "limit", "result"},
                            rows, {2, 3, 4, 5});
    // Mark regressions without building HTML from data: the cell text is fixed.
    size_t pos = 0;
    while ((pos = out.find("<td>REGRESSION</td>", pos)) != std::string::npos) {
      out.replace(pos, 4, "<td class=\"regression\">");
      pos += 20;
    }
    for (const auto& w : c->warnings) out += note("warning: " + w);
    return out;
  }
  const bool before = r.eval_before.has_value();
  const EvalSummary& e = before ? *r.eval_before : *r.eval_after;
  for (const auto& [name, p] : e.perplexity)
    rows.push_back({"perplexity", name, format_metric(MetricKind::kPerplexity, p.perplexity)});
  for (const auto& [name, t] : e.tasks)
    rows.push_back({"accuracy", name, format_metric(MetricKind::kAccuracy, t.accuracy)});
  return note(fmt::format("Only the {} evaluation was run.", before ? "before" : "after")) +
         table({"metric", "file", before ? "before" : "after"}, rows, {2});
}

std::string eval_section(const Report& r) {
  std::string out = "<section><h2>Evaluation</h2>\n";
  if (!r.eval_before && !r.eval_after)
    return out + note("No evaluation was run (the recipe has no eval section).") + "</section>\n";
  const std::string ppl = metric_chart(
      "Perplexity before and after (lower is better)", "perplexity", r.eval_before, r.eval_after,
      &EvalSummary::perplexity, [](const PerplexityEntry& e) { return e.perplexity; }, false);
  const std::string acc = metric_chart(
      "Task accuracy before and after (higher is better)", "accuracy", r.eval_before, r.eval_after,
      &EvalSummary::tasks, [](const TaskEntry& e) { return e.accuracy; }, true);
  out +=
      ppl.empty() ? note("No perplexity files.") : "<h3>Perplexity (lower is better)</h3>\n" + ppl;
  out += acc.empty() ? note("No task files.") : "<h3>Task accuracy (higher is better)</h3>\n" + acc;
  out += eval_table(r);
  if (r.gate) {
    out += fmt::format("<p>Gate: <b>{}</b> ({}).</p>\n", esc(r.gate->passed ? "passed" : "FAILED"),
                       esc(gate_thresholds(*r.gate)));
    if (!r.gate->failures.empty()) {
      out += "<ul>\n";
      for (const auto& f : r.gate->failures)
        out += "<li class=\"regression\">" + esc(f) + "</li>\n";
      out += "</ul>\n";
    }
  }
  return out + "</section>\n";
}

std::string experts_section(const Report& r) {
  std::string out = "<section><h2>Experts kept per layer</h2>\n";
  if (!has_moe_layers(r))
    return out +
           note(r.layers.empty() ? "No per-layer records." : "No MoE layers: the model is dense.") +
           "</section>\n";
  svg::BarChart chart;
  chart.title = "Experts kept per layer, against the experts before";
  chart.y_label = "experts";
  chart.overlay = true;
  chart.series = {{"before", "#d5dce5", {}}, {"kept", "#2a9d8f", {}}};
  int64_t before = 0, kept = 0;
  for (const auto& l : r.layers) {
    chart.categories.push_back(std::to_string(l.layer));
    chart.series[0].values.push_back(l.experts_before ? std::optional<double>(*l.experts_before)
                                                      : std::nullopt);
    chart.series[1].values.push_back(l.experts_kept ? std::optional<double>(*l.experts_kept)
                                                    : std::nullopt);
    before += l.experts_before.value_or(0);
    kept += l.experts_kept.value_or(l.experts_before.value_or(0));
  }
  chart.format = [](double v) { return fmt::format("{:g}", v); };
  out += svg::bar_chart(chart);
  out +=
      fmt::format("<p>{} of {} experts kept ({:.1f}%); layer index on the horizontal axis.</p>\n",
                  kept, before, before ? 100.0 * kept / before : 100.0);
  return out + "</section>\n";
}

/// Fill colour of a bits cell: one hue per common width, grey for unquantized, light for removed.
std::pair<std::string, std::string> bits_bucket(double bits) {
  if (bits <= 0) return {"#eceff3", "removed"};
  if (bits <= 2.5) return {"#d62828", "2 bits"};
  if (bits <= 3.5) return {"#f4a261", "3 bits"};
  if (bits <= 4.5) return {"#2a9d8f", "4 bits"};
  if (bits <= 6.5) return {"#8ab17d", "5-6 bits"};
  if (bits <= 8.5) return {"#457b9d", "8 bits"};
  return {"#b8c4d6", "16+ bits (unquantized)"};
}

/// The tensors of one (tensor kind, layer) cell of the bits heatmap.
struct BitsCell {
  double kept_bits = 0;
  int64_t kept = 0, removed = 0;
  std::map<std::string, int64_t> formats;
};

/// Tensors inside layers grouped by (kind, layer); kinds ordered attention first, then the
/// MLP/experts, norms last, otherwise in checkpoint order.
struct BitsGrid {
  std::vector<std::string> kinds;
  std::set<int64_t> layers;
  std::map<std::pair<std::string, int64_t>, BitsCell> cells;
};

BitsGrid group_bits(const std::vector<TensorReport>& tensors) {
  BitsGrid grid;
  for (const auto& t : tensors) {
    if (!t.layer) continue;
    const std::string kind = tensor_kind(t.name);
    if (std::find(grid.kinds.begin(), grid.kinds.end(), kind) == grid.kinds.end())
      grid.kinds.push_back(kind);
    grid.layers.insert(*t.layer);
    BitsCell& cell = grid.cells[{kind, *t.layer}];
    cell.formats[t.format] += 1;
    cell.removed += t.bits == 0;
    cell.kept += t.bits != 0;
    cell.kept_bits += static_cast<double>(t.bits);
  }
  auto rank = [](const std::string& kind) {
    return kind.find("attn") != std::string::npos   ? 0
           : kind.find("norm") != std::string::npos ? 2
                                                    : 1;
  };
  std::stable_sort(grid.kinds.begin(), grid.kinds.end(),
                   [&](const auto& x, const auto& y) { return rank(x) < rank(y); });
  return grid;
}

std::string bits_heatmap(const BitsGrid& grid) {
  svg::Heatmap map;
  map.title = "Bits per weight by layer and tensor kind (mean over the tensors that remain)";
  map.rows = grid.kinds;
  for (int64_t l : grid.layers) map.columns.push_back(std::to_string(l));
  std::set<std::string> buckets;
  for (const auto& kind : grid.kinds) {
    map.cells.emplace_back();
    map.tooltips.emplace_back();
    for (int64_t l : grid.layers) {
      auto it = grid.cells.find({kind, l});
      if (it == grid.cells.end()) {
        map.cells.back().push_back(std::nullopt);
        map.tooltips.back().push_back(fmt::format("layer {} · {}: no tensor", l, kind));
        continue;
      }
      const BitsCell& c = it->second;
      const double value = c.kept ? c.kept_bits / c.kept : 0.0;
      buckets.insert(bits_bucket(value).second);
      std::string tip = fmt::format("layer {} · {}:", l, kind);
      for (const auto& [format, n] : c.formats) tip += fmt::format(" {} × {};", n, format);
      map.cells.back().push_back(value);
      map.tooltips.back().push_back(tip.substr(0, tip.size() - 1));
    }
  }
  map.color = [](double v) { return bits_bucket(v).first; };
  map.label = [](double v) { return v <= 0 ? std::string("x") : fmt::format("{:.3g}", v); };
  for (double b : {2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 0.0}) {
    if (buckets.count(bits_bucket(b).second)) map.legend.push_back(bits_bucket(b));
  }
  return svg::heatmap(map) +
         note(
             "Columns are layers. A cell shows the mean bits of the tensors of that kind that "
             "remain; x marks a kind whose tensors were all removed.");
}

std::string bits_tables(const std::vector<TensorReport>& tensors) {
  std::string out;
  std::vector<std::vector<std::string>> rows;
  for (const auto& t : tensors)
    if (!t.layer)
      rows.push_back({t.name, t.format, std::to_string(t.bits), format_rel_err(t.rel_err)});
  if (!rows.empty())
    out += "<p>Outside decoder layers:</p>\n" +
           table({"tensor", "format", "bits", "rel. error"}, rows, {2, 3});
  rows.clear();
  for (const auto& f : summarize_formats(tensors)) {
    rows.push_back({f.format, std::to_string(f.bits), std::to_string(f.tensors),
                    format_rel_err(f.mean_rel_err)});
  }
  out += "<p>Tensors by format:</p>\n" +
         table({"format", "bits", "tensors", "mean rel. error"}, rows, {1, 2, 3});
  rows.clear();
  for (const auto& t : tensors) {
    rows.push_back({t.name, t.layer ? std::to_string(*t.layer) : "-", t.format,
                    std::to_string(t.bits), format_rel_err(t.rel_err)});
  }
  return out + fmt::format("<details><summary>All {} tensors</summary>\n", tensors.size()) +
         table({"tensor", "layer", "format", "bits", "rel. error"}, rows, {1, 3, 4}) +
         "</details>\n";
}

std::string bits_section(const Report& r) {
  std::string out = "<section><h2>Bits per tensor</h2>\n";
  if (r.tensors.empty()) return out + note("No per-tensor records.") + "</section>\n";
  const BitsGrid grid = group_bits(r.tensors);
  if (!grid.kinds.empty()) out += bits_heatmap(grid);
  return out + bits_tables(r.tensors) + "</section>\n";
}

std::string error_section(const Report& r) {
  std::string out = "<section><h2>Reconstruction error per layer</h2>\n";
  double lo = INFINITY, hi = 0;
  for (const auto& l : r.layers)
    if (l.rel_err && *l.rel_err > 0) {
      lo = std::min(lo, *l.rel_err);
      hi = std::max(hi, *l.rel_err);
    }
  if (hi <= 0)
    return out + note("No per-layer reconstruction error was measured.") + "</section>\n";
  svg::BarChart chart;
  chart.title = "Relative reconstruction error of each layer's output";
  chart.y_label = "relative error";
  chart.series = {{"rel. error", "#e76f51", {}}};
  for (const auto& l : r.layers) {
    chart.categories.push_back(std::to_string(l.layer));
    chart.series[0].values.push_back(l.rel_err);
  }
  chart.log_scale = hi / lo > 100;  // a spread of more than two decades hides the small bars
  chart.format = [](double v) { return fmt::format("{:.3g}%", 100 * v); };
  out += svg::bar_chart(chart);
  return out + "</section>\n";
}

std::string layers_section(const Report& r) {
  std::string out = "<section><h2>Layers</h2>\n";
  if (r.layers.empty()) return out + note("No per-layer records.") + "</section>\n";
  const bool sparse = has_sparsity(r), carved = has_carve(r);
  std::vector<std::vector<std::string>> rows;
  for (const auto& l : r.layers) {
    rows.push_back({std::to_string(l.layer)});
    if (carved) rows.back().push_back(l.carve.empty() ? "-" : l.carve);
    rows.back().push_back(format_count(l.experts_before));
    rows.back().push_back(format_count(l.experts_kept));
    if (sparse) rows.back().push_back(format_sparsity(l));
    rows.back().push_back(format_rel_err(l.rel_err));
    rows.back().push_back(format_seconds(l.seconds));
  }
  std::vector<std::string> head = {"layer"};
  if (carved) head.push_back("carve");
  head.push_back("experts before");
  head.push_back("experts kept");
  if (sparse) head.push_back("sparsity");
  head.push_back("rel. error");
  head.push_back("seconds");
  std::set<size_t> numeric;  // right-aligned columns: all but the carve
  for (size_t c = 0; c < head.size(); ++c)
    if (head[c] != "carve") numeric.insert(c);
  const std::string body = table(head, rows, numeric);
  out += r.layers.size() <= 32
             ? body
             : fmt::format("<details><summary>{} layers</summary>\n", r.layers.size()) + body +
                   "</details>\n";
  return out + "</section>\n";
}

std::string hessians_section(const Report& r) {
  const std::vector<HessianRow> hs = hessian_rows(r);
  if (hs.empty()) return "";
  std::vector<std::vector<std::string>> rows;
  for (const auto& h : hs) {
    rows.push_back({std::to_string(h.layer), std::to_string(h.routed), std::to_string(h.all),
                    std::to_string(h.none),
                    h.fewest ? std::to_string(*h.fewest) + "–" + std::to_string(*h.most) : "-"});
  }
  return "<section><h2>Calibration behind the quantized tensors</h2>\n" +
         note(
             "Hessian source per layer: an expert uses its routed tokens when it saw at least "
             "max(256, 0.5% of "
             "the tokens), else every token (ALGORITHMS.md §1.7); lathe_manifest.json has each "
             "tensor's tokens.") +
         table({"layer", "routed", "all tokens", "none", "expert tokens (fewest–most)"}, rows,
               {0, 1, 2, 3}) +
         "</section>\n";
}

std::string passes_section(const Report& r) {
  std::string out = "<section><h2>Passes</h2>\n";
  if (r.passes.empty()) return out + note("No pass timings.") + "</section>\n";
  std::vector<std::vector<std::string>> rows;
  double total = 0;
  for (const auto& p : r.passes) {
    total += p.seconds;
    rows.push_back({p.name, p.options, format_seconds(p.seconds),
                    p.peak_rss_bytes ? human_bytes(static_cast<double>(*p.peak_rss_bytes)) : "-"});
  }
  rows.push_back({"total", "", format_seconds(total), ""});
  return out + table({"pass", "options", "seconds", "peak RSS"}, rows, {2, 3}) + "</section>\n";
}

}  // namespace

std::string render_html(const Report& report) {
  std::string out = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  out += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  out += "<title>lathe report: " + esc(report.model) + "</title>\n<style>" + kStyle +
         "</style>\n</head>\n<body><main>\n";
  out += header(report) + size_section(report) + eval_section(report) + experts_section(report) +
         bits_section(report) + error_section(report) + layers_section(report) +
         hessians_section(report) + passes_section(report);
  return out + "</main></body>\n</html>\n";
}

}  // namespace lathe
