#include "compressor/report/report_sections.h"

#include <cmath>
#include <map>
#include <regex>
#include <sstream>

#include <fmt/format.h>

namespace lathe {

namespace report_text {

std::string html_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string markdown_cell(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '|': out += "\\|"; break;
      case '\\': out += "\\\\"; break;
      case '`': out += "\\`"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\n':
      case '\r': out += ' '; break;
      default: out += c;
    }
  }
  return out;
}

std::string human_bytes(double bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (std::abs(bytes) >= 1024 && u < 5) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.2f} {}", bytes, units[u]);
}

}  // namespace report_text

namespace report_detail {

std::optional<Comparison> eval_comparison(const Report& report) {
  if (!report.eval_before || !report.eval_after) return std::nullopt;
  Comparison plain = compare_evals(*report.eval_before, *report.eval_after, {});
  if (!report.gate || plain.metrics.empty()) return plain;
  return compare_evals(*report.eval_before, *report.eval_after,
                       {report.gate->max_ppl_increase, report.gate->max_acc_drop});
}

std::vector<HessianRow> hessian_rows(const Report& report) {
  std::map<int64_t, HessianRow> rows;
  for (const auto& t : report.tensors) {
    if (t.h_source.empty() || !t.layer) continue;
    HessianRow& row = rows[*t.layer];
    row.layer = *t.layer;
    // "routed", "all", "none", or a fused tensor's "all 3, routed 5".
    std::istringstream parts(t.h_source);
    std::string part;
    while (std::getline(parts, part, ',')) {
      std::istringstream words(part);
      std::string kind;
      int64_t n = 1;
      words >> kind;
      if (!(words >> n)) n = 1;
      (kind == "routed" ? row.routed : kind == "all" ? row.all : row.none) += n;
    }
    if (t.tokens && t.name.find(".experts.") != std::string::npos) {
      row.fewest = row.fewest ? std::min(*row.fewest, *t.tokens) : *t.tokens;
      row.most = row.most ? std::max(*row.most, *t.tokens) : *t.tokens;
    }
  }
  std::vector<HessianRow> out;
  for (auto& [layer, row] : rows) out.push_back(row);
  return out;
}

std::vector<FormatSummary> summarize_formats(const std::vector<TensorReport>& tensors) {
  std::vector<FormatSummary> out;
  std::vector<std::pair<double, int64_t>> err_sums;
  for (const auto& t : tensors) {
    size_t i = 0;
    while (i < out.size() && !(out[i].format == t.format && out[i].bits == t.bits)) ++i;
    if (i == out.size()) {
      out.push_back({t.format, t.bits, 0, std::nullopt});
      err_sums.emplace_back(0.0, 0);
    }
    out[i].tensors += 1;
    if (t.rel_err) {
      err_sums[i].first += *t.rel_err;
      err_sums[i].second += 1;
    }
  }
  for (size_t i = 0; i < out.size(); ++i) {
    if (err_sums[i].second) out[i].mean_rel_err = err_sums[i].first / err_sums[i].second;
  }
  return out;
}

std::string tensor_kind(const std::string& name) {
  static const std::regex layer_prefix(R"(^(.*\.)?layers\.[0-9]+\.)");
  static const std::regex expert_index(R"(\.experts\.[0-9]+\.)");
  std::string kind = std::regex_replace(name, layer_prefix, "");
  kind = std::regex_replace(kind, expert_index, ".experts.*.");
  const std::string suffix = ".weight";
  if (kind.size() > suffix.size() &&
      kind.compare(kind.size() - suffix.size(), suffix.size(), suffix) == 0) {
    kind.resize(kind.size() - suffix.size());
  }
  return kind;
}

bool has_moe_layers(const Report& report) {
  for (const auto& l : report.layers)
    if (l.experts_before || l.experts_kept) return true;
  return false;
}

std::string format_rel_err(const std::optional<double>& value) {
  if (!value) return "-";
  return fmt::format("{:.3g}%", 100 * *value);
}

bool has_carve(const Report& report) {
  for (const auto& l : report.layers)
    if (!l.carve.empty()) return true;
  return false;
}

bool has_sparsity(const Report& report) {
  for (const auto& l : report.layers)
    if (l.sparsity) return true;
  return false;
}

std::string format_sparsity(const LayerReport& l) {
  if (!l.sparsity) return "-";
  return l.sparsity_target
             ? fmt::format("{:.1f}% (target {:.1f}%)", 100 * *l.sparsity, 100 * *l.sparsity_target)
             : fmt::format("{:.1f}%", 100 * *l.sparsity);
}

std::string format_count(const std::optional<int64_t>& value) {
  return value ? std::to_string(*value) : "-";
}

std::string format_seconds(double seconds) {
  return seconds < 10 ? fmt::format("{:.2f} s", seconds) : fmt::format("{:.1f} s", seconds);
}

std::string size_ratio(const Report& report) {
  if (!report.size_before_bytes || !report.size_after_bytes || *report.size_before_bytes == 0 ||
      *report.size_after_bytes == 0) {
    return "";
  }
  const double before = static_cast<double>(*report.size_before_bytes),
               after = static_cast<double>(*report.size_after_bytes);
  return fmt::format("{:.2f}\u00d7 smaller ({:.1f}% of before)", before / after,
                     100 * after / before);
}

std::string format_metric(MetricKind kind, double value) {
  if (kind == MetricKind::kAccuracy) return fmt::format("{:.2f}%", 100 * value);
  return std::isinf(value) ? "inf" : fmt::format("{:.4f}", value);
}

std::string format_change(MetricKind kind, double delta) {
  if (kind == MetricKind::kAccuracy) return fmt::format("{:+.2f} pp", delta);
  if (std::isinf(delta)) return delta > 0 ? "+inf%" : "-inf%";
  return fmt::format("{:+.2f}%", 100 * delta);
}

std::string gate_summary(const Report& report) {
  if (!report.gate) return "none";
  if (report.gate->passed) return "passed";
  return fmt::format("FAILED ({} regression{})", report.gate->failures.size(),
                     report.gate->failures.size() == 1 ? "" : "s");
}

std::string gate_thresholds(const GateReport& gate) {
  std::vector<std::string> parts;
  if (gate.max_ppl_increase)
    parts.push_back(fmt::format("max perplexity increase {:.2f}%", 100 * *gate.max_ppl_increase));
  if (gate.max_acc_drop)
    parts.push_back(fmt::format("max accuracy drop {:.2f} pp", *gate.max_acc_drop));
  if (gate.max_kl)
    parts.push_back(fmt::format("max KL to the original {:g} nats/token", *gate.max_kl));
  if (parts.empty()) return "no thresholds";
  std::string out = parts[0];
  for (size_t i = 1; i < parts.size(); ++i) out += ", " + parts[i];
  return out;
}

}  // namespace report_detail
}  // namespace lathe
