// report.md: the report as Markdown tables (render_markdown in report.h).
#include <algorithm>

#include <fmt/format.h>

#include "compressor/report/report.h"
#include "compressor/report/report_sections.h"

namespace lathe {
namespace {

using namespace report_detail;
using report_text::human_bytes;
using report_text::markdown_cell;

std::string row(const std::vector<std::string>& cells) {
  std::string out = "|";
  for (const auto& c : cells) out += " " + c + " |";
  return out + "\n";
}

std::string code(const std::string& text) {
  return text.empty() ? "" : "`` " + text + " ``";
}

std::string summary_section(const Report& r) {
  std::string out = "# lathe report\n\n| | |\n|---|---|\n";
  // Pipelines and paths go in code spans, where only backticks (doubled delimiters) matter,
  // and the pipe that would end the table cell is still escaped.
  auto code_cell = [](const std::string& t) {
    std::string escaped;
    for (char c : t)
      escaped += c == '|' ? std::string("\\|") : c == '\n' ? std::string(" ") : std::string(1, c);
    return code(escaped);
  };
  out += row({"pipeline", code_cell(r.pipeline)});
  out += row({"model", code_cell(r.model)});
  out += row({"output", code_cell(r.output)});
  out += row({"lathe", markdown_cell(r.lathe_version)});
  out += row({"created", markdown_cell(r.created)});
  out += row({"gate", gate_summary(r)});
  return out + "\n";
}

std::string size_section(const Report& r) {
  auto cell = [](const std::optional<int64_t>& b) {
    return b ? fmt::format("{} ({})", *b, human_bytes(static_cast<double>(*b)))
             : std::string("unknown");
  };
  std::string out = "## Size\n\n| | bytes |\n|---|---:|\n";
  out += row({"before", cell(r.size_before_bytes)});
  out += row({"after", cell(r.size_after_bytes)});
  const std::string ratio = size_ratio(r);
  if (!ratio.empty()) out += row({"ratio", ratio});
  return out + "\n";
}

std::string single_eval_table(const EvalSummary& eval, const char* side) {
  std::string out = fmt::format("| metric | file | {} |\n|---|---|---:|\n", side);
  for (const auto& [name, e] : eval.perplexity)
    out += row(
        {"perplexity", markdown_cell(name), format_metric(MetricKind::kPerplexity, e.perplexity)});
  for (const auto& [name, e] : eval.tasks)
    out += row({"accuracy", markdown_cell(name), format_metric(MetricKind::kAccuracy, e.accuracy)});
  return out;
}

std::string eval_section(const Report& r) {
  std::string out = "## Evaluation\n\n";
  const auto c = eval_comparison(r);
  if (!c) {
    if (!r.eval_before && !r.eval_after) return out + "No evaluation was run.\n\n";
    const bool before = r.eval_before.has_value();
    out += fmt::format("Only the {} evaluation was run.\n\n", before ? "before" : "after");
    return out +
           single_eval_table(before ? *r.eval_before : *r.eval_after, before ? "before" : "after") +
           "\n";
  }
  out +=
      "| metric | file | before | after | change | limit | result "
      "|\n|---|---|---:|---:|---:|---:|---|\n";
  for (const auto& m : c->metrics) {
    const std::string limit = !m.limit ? "-"
                              : m.kind == MetricKind::kPerplexity
                                  ? fmt::format("+{:.2f}%", 100 * *m.limit)
                                  : fmt::format("-{:.2f} pp", *m.limit);
    out += row({metric_kind_name(m.kind), markdown_cell(m.name), format_metric(m.kind, m.a),
                format_metric(m.kind, m.b), format_change(m.kind, m.delta), limit,
                !m.limit       ? "-"
                : m.regression ? "**regression**"
                               : "ok"});
  }
  for (const auto& m : c->only_in_a)
    out += row({metric_kind_name(m.kind), markdown_cell(m.name), "", "-", "only before", "", ""});
  for (const auto& m : c->only_in_b)
    out += row({metric_kind_name(m.kind), markdown_cell(m.name), "-", "", "only after", "", ""});
  out += "\n";
  for (const auto& w : c->warnings) out += "- warning: " + markdown_cell(w) + "\n";
  return out + (c->warnings.empty() ? "" : "\n");
}

std::string gate_section(const Report& r) {
  if (!r.gate) return "";
  std::string out = fmt::format("## Gate: {}\n\nThresholds: {}.\n\n",
                                r.gate->passed ? "passed" : "FAILED", gate_thresholds(*r.gate));
  for (const auto& f : r.gate->failures) out += "- " + markdown_cell(f) + "\n";
  return out + (r.gate->failures.empty() ? "" : "\n");
}

std::string layer_section(const Report& r) {
  std::string out = "## Layers\n\n";
  if (r.layers.empty()) return out + "No per-layer records.\n\n";
  const bool carved = has_carve(r);
  if (!has_moe_layers(r) && !carved) out += "No MoE layers (dense model).\n\n";
  const bool sparse = has_sparsity(r);
  out += std::string("| layer | ") + (carved ? "carve | " : "") +
         "experts before | experts kept | " + (sparse ? "sparsity | " : "") +
         "rel. error | seconds |\n|---:|" + (carved ? "---|" : "") + "---:|---:|" +
         (sparse ? "---:|" : "") + "---:|---:|\n";
  for (const auto& l : r.layers) {
    std::vector<std::string> cells = {std::to_string(l.layer)};
    if (carved) cells.push_back(l.carve.empty() ? "-" : l.carve);
    cells.push_back(format_count(l.experts_before));
    cells.push_back(format_count(l.experts_kept));
    if (sparse) cells.push_back(format_sparsity(l));
    cells.push_back(format_rel_err(l.rel_err));
    cells.push_back(format_seconds(l.seconds));
    out += row(cells);
  }
  return out + "\n";
}

std::string tensor_section(const Report& r) {
  std::string out = "## Tensors\n\n";
  if (r.tensors.empty()) return out + "No per-tensor records.\n\n";
  out += fmt::format(
      "{} tensors by format:\n\n| format | bits | tensors | mean rel. error "
      "|\n|---|---:|---:|---:|\n",
      r.tensors.size());
  for (const auto& f : summarize_formats(r.tensors)) {
    out += row({markdown_cell(f.format), std::to_string(f.bits), std::to_string(f.tensors),
                format_rel_err(f.mean_rel_err)});
  }
  std::vector<const TensorReport*> worst;
  for (const auto& t : r.tensors)
    if (t.rel_err) worst.push_back(&t);
  std::stable_sort(worst.begin(), worst.end(),
                   [](auto* x, auto* y) { return *x->rel_err > *y->rel_err; });
  if (worst.size() > 10) worst.resize(10);
  if (!worst.empty()) {
    out +=
        "\nLargest reconstruction errors:\n\n| tensor | format | bits | rel. error "
        "|\n|---|---|---:|---:|\n";
    for (const auto* t : worst) {
      out += row({markdown_cell(t->name), markdown_cell(t->format), std::to_string(t->bits),
                  format_rel_err(t->rel_err)});
    }
  }
  return out + "\n";
}

std::string hessian_section(const Report& r) {
  const std::vector<HessianRow> rows = hessian_rows(r);
  if (rows.empty()) return "";
  std::string out =
      "## Calibration behind the quantized tensors\n\nHessian source per layer (ALGORITHMS.md "
      "§1.7: an expert "
      "uses its routed tokens when it saw at least max(256, 0.5% of the tokens), else every token; "
      "`lathe_manifest.json` "
      "has each tensor's tokens and rule).\n\n| layer | routed | all tokens | none | expert tokens "
      "(fewest–most) |\n"
      "|---:|---:|---:|---:|---|\n";
  for (const auto& h : rows) {
    out += row({std::to_string(h.layer), std::to_string(h.routed), std::to_string(h.all),
                std::to_string(h.none),
                h.fewest ? std::to_string(*h.fewest) + "–" + std::to_string(*h.most) : "-"});
  }
  return out + "\n";
}

std::string pass_section(const Report& r) {
  std::string out = "## Passes\n\n";
  if (r.passes.empty()) return out + "No pass timings.\n";
  out += "| pass | options | seconds | peak RSS |\n|---|---|---:|---:|\n";
  double total = 0;
  for (const auto& p : r.passes) {
    total += p.seconds;
    out += row({markdown_cell(p.name), markdown_cell(p.options), format_seconds(p.seconds),
                p.peak_rss_bytes ? human_bytes(static_cast<double>(*p.peak_rss_bytes)) : "-"});
  }
  return out + row({"**total**", "", format_seconds(total), ""});
}

}  // namespace

std::string render_markdown(const Report& report) {
  return summary_section(report) + size_section(report) + eval_section(report) +
         gate_section(report) + layer_section(report) + tensor_section(report) +
         hessian_section(report) + pass_section(report);
}

}  // namespace lathe
