#include "compressor/report/compare.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <regex>

#include <fmt/format.h>

#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"
#include "compressor/report/report.h"
#include "compressor/report/report_sections.h"

namespace lathe {
namespace {

// Differences below this count as equal at the gate's boundary (floating-point noise).
constexpr double kBoundaryTolerance = 1e-9;

/// Splits "3.5%" into 3.5 and "%"; nullopt unless the text is digits with at most one decimal
/// point, then "%", "pp" or nothing. No signs, spaces, exponents, inf or nan.
std::optional<std::pair<double, std::string>> split_number(const std::string& text) {
  static const std::regex pattern(R"(^([0-9]+(\.[0-9]*)?|\.[0-9]+)(%|pp)?$)");
  std::smatch m;
  if (!std::regex_match(text, m, pattern)) return std::nullopt;
  return std::make_pair(std::stod(m[1].str()), m[3].str());
}

using report_detail::format_change;
using report_detail::format_metric;

std::string format_limit(const MetricDelta& m) {
  if (!m.limit) return "-";
  return m.kind == MetricKind::kPerplexity ? fmt::format("+{:.2f}%", 100 * *m.limit)
                                           : fmt::format("-{:.2f} pp", *m.limit);
}

/// The change with enough decimals to differ from the limit it exceeds ("+3.0001%" > "+3.00%").
std::string exceeding_change(const MetricDelta& m) {
  const double scale = m.kind == MetricKind::kPerplexity ? 100.0 : 1.0;
  const double change = std::abs(m.delta) * scale, limit = *m.limit * scale;
  int digits = 2;
  while (digits < 8 && std::isfinite(change) &&
         fmt::format("{:.{}f}", change, digits) == fmt::format("{:.{}f}", limit, digits))
    ++digits;
  if (std::isinf(m.delta)) return format_change(m.kind, m.delta);
  const std::string sign = m.delta < 0 ? "-" : "+";
  return sign + fmt::format("{:.{}f}", change, digits) +
         (m.kind == MetricKind::kPerplexity ? "%" : " pp");
}

double relative_change(double a, double b) {
  if (std::isinf(a) && std::isinf(b)) return 0.0;
  return b / a - 1.0;
}

void warn_on_setup(const EvalSummary& a, const EvalSummary& b, Comparison& out) {
  auto differs = [](const std::optional<int64_t>& x, const std::optional<int64_t>& y) {
    return x && y && *x != *y;
  };
  if (differs(a.seq_len, b.seq_len)) {
    out.warnings.push_back(
        fmt::format("seq_len differs: A {} tokens, B {}: perplexities are not comparable",
                    *a.seq_len, *b.seq_len));
  }
  if (differs(a.stride, b.stride)) {
    out.warnings.push_back(fmt::format("stride differs: A {}, B {}", *a.stride, *b.stride));
  }
}

template <typename Map, typename Fn>
void pair_up(const Map& a, const Map& b, MetricKind kind, Comparison& out, Fn on_both) {
  for (const auto& [name, entry] : a) {
    auto it = b.find(name);
    if (it == b.end()) {
      out.only_in_a.push_back({kind, name});
    } else {
      on_both(name, entry, it->second);
    }
  }
  for (const auto& [name, entry] : b) {
    if (!a.count(name)) out.only_in_b.push_back({kind, name});
  }
}

}  // namespace

double parse_ppl_increase(const std::string& text, const std::string& flag) {
  const auto parsed = split_number(text);
  if (!parsed || parsed->second == "pp") {
    throw ConfigError(
        "", flag,
        "expected a percentage such as 3% or a fraction such as 0.03, found \"" + text + "\"");
  }
  const auto [value, suffix] = *parsed;
  if (suffix == "%") return value / 100.0;
  if (value >= 1.0) {
    throw ConfigError(
        "", flag,
        fmt::format("\"{}\" as a fraction allows a {:g}% increase; write {}% for {} percent", text,
                    100 * value, text, text));
  }
  return value;
}

double parse_acc_drop(const std::string& text, const std::string& flag) {
  const auto parsed = split_number(text);
  if (parsed && parsed->second == "%") {
    throw ConfigError(
        "", flag,
        "\"" + text + "\" is ambiguous: the accuracy drop is in percentage points, write " +
            text.substr(0, text.size() - 1) + " (or " + text.substr(0, text.size() - 1) + "pp)");
  }
  if (!parsed)
    throw ConfigError("", flag,
                      "expected percentage points such as 1 or 0.5pp, found \"" + text + "\"");
  if (parsed->first > 100.0)
    throw ConfigError("", flag,
                      "an accuracy drop above 100 points gates nothing: \"" + text + "\"");
  return parsed->first;
}

const char* metric_kind_name(MetricKind kind) {
  return kind == MetricKind::kPerplexity ? "perplexity" : "accuracy";
}

Comparison compare_evals(const EvalSummary& a, const EvalSummary& b, const Thresholds& thresholds,
                         const std::string& b_label) {
  Comparison out;
  out.thresholds = thresholds;
  warn_on_setup(a, b, out);
  pair_up(a.perplexity, b.perplexity, MetricKind::kPerplexity, out,
          [&](const std::string& name, const PerplexityEntry& x, const PerplexityEntry& y) {
            MetricDelta m{MetricKind::kPerplexity,
                          name,
                          x.perplexity,
                          y.perplexity,
                          relative_change(x.perplexity, y.perplexity),
                          thresholds.max_ppl_increase,
                          false};
            m.regression = m.limit && m.delta > *m.limit + kBoundaryTolerance;
            if (x.tokens && y.tokens && *x.tokens != *y.tokens) {
              out.warnings.push_back(
                  fmt::format("{}: A has {} tokens, B {}: different text or tokenizer, "
                              "perplexities may not be comparable",
                              name, *x.tokens, *y.tokens));
            }
            out.metrics.push_back(m);
          });
  pair_up(a.tasks, b.tasks, MetricKind::kAccuracy, out,
          [&](const std::string& name, const TaskEntry& x, const TaskEntry& y) {
            MetricDelta m{MetricKind::kAccuracy,
                          name,
                          x.accuracy,
                          y.accuracy,
                          100.0 * (y.accuracy - x.accuracy),
                          thresholds.max_acc_drop,
                          false};
            m.regression = m.limit && -m.delta > *m.limit + kBoundaryTolerance;
            if (x.n && y.n && *x.n != *y.n) {
              out.warnings.push_back(
                  fmt::format("{}: A has {} items, B {}: different task files?", name, *x.n, *y.n));
            }
            out.metrics.push_back(m);
          });
  if (thresholds.any() && out.metrics.empty()) {
    throw DataError(b_label, "", "nothing to gate: A and B share no perplexity or task file");
  }
  for (const auto& m : out.metrics) out.passed = out.passed && !m.regression;
  return out;
}

std::vector<std::string> regression_lines(const Comparison& comparison) {
  std::vector<std::string> lines;
  for (const auto& m : comparison.metrics) {
    if (!m.regression) continue;
    const std::string values = format_metric(m.kind, m.a) + " -> " + format_metric(m.kind, m.b);
    if (m.kind == MetricKind::kPerplexity) {
      lines.push_back(fmt::format("perplexity {}: {} > {} allowed ({})", m.name,
                                  exceeding_change(m), format_limit(m), values));
    } else {
      lines.push_back(fmt::format("accuracy {}: {} exceeds the allowed drop of {:.2f} pp ({})",
                                  m.name, exceeding_change(m), *m.limit, values));
    }
  }
  return lines;
}

GateReport gate_report(const Comparison& comparison) {
  GateReport gate;
  gate.max_ppl_increase = comparison.thresholds.max_ppl_increase;
  gate.max_acc_drop = comparison.thresholds.max_acc_drop;
  gate.passed = comparison.passed;
  gate.failures = regression_lines(comparison);
  return gate;
}

std::string format_comparison(const Comparison& c, const std::string& a_label,
                              const std::string& b_label) {
  std::vector<std::vector<std::string>> rows = {
      {"kind", "name", "A", "B", "change", "limit", "result"}};
  for (const auto& m : c.metrics) {
    rows.push_back({metric_kind_name(m.kind), m.name, format_metric(m.kind, m.a),
                    format_metric(m.kind, m.b), format_change(m.kind, m.delta), format_limit(m),
                    !m.limit       ? "-"
                    : m.regression ? "REGRESSION"
                                   : "ok"});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  std::string out = fmt::format("A: {}\nB: {}\n\n", a_label, b_label);
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      const bool numeric = i >= 2 && i <= 5;  // right-align numbers so decimal points line up
      line += numeric ? fmt::format("{:>{}}  ", row[i], width[i])
                      : fmt::format("{:<{}}  ", row[i], width[i]);
    }
    out += line.substr(0, line.find_last_not_of(' ') + 1) + "\n";
  }
  for (const auto& m : c.only_in_a)
    out += fmt::format("only in A: {} {}\n", metric_kind_name(m.kind), m.name);
  for (const auto& m : c.only_in_b)
    out += fmt::format("only in B: {} {}\n", metric_kind_name(m.kind), m.name);
  for (const auto& w : c.warnings) out += "warning: " + w + "\n";
  if (!c.thresholds.any()) {
    out += "no thresholds given (--max-ppl-increase, --max-acc-drop): nothing gated\n";
  } else if (c.passed) {
    out += fmt::format("PASS: {} metric(s) within limits\n", c.metrics.size());
  } else {
    for (const auto& line : regression_lines(c)) out += "REGRESSION: " + line + "\n";
  }
  return out;
}

nlohmann::json comparison_to_json(const Comparison& c, const std::string& a_label,
                                  const std::string& b_label) {
  auto opt = [](const std::optional<double>& v) {
    return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
  };
  nlohmann::json metrics = nlohmann::json::array();
  for (const auto& m : c.metrics) {
    metrics.push_back({{"kind", metric_kind_name(m.kind)},
                       {"name", m.name},
                       {"a", m.a},
                       {"b", m.b},
                       {"delta", m.delta},
                       {"limit", opt(m.limit)},
                       {"regression", m.regression}});
  }
  auto one_sided = [](const std::vector<OneSidedMetric>& list) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& m : list)
      out.push_back({{"kind", metric_kind_name(m.kind)}, {"name", m.name}});
    return out;
  };
  return {{"a", a_label},
          {"b", b_label},
          {"thresholds",
           {{"max_ppl_increase", opt(c.thresholds.max_ppl_increase)},
            {"max_acc_drop", opt(c.thresholds.max_acc_drop)}}},
          {"metrics", metrics},
          {"only_in_a", one_sided(c.only_in_a)},
          {"only_in_b", one_sided(c.only_in_b)},
          {"warnings", c.warnings},
          {"passed", c.passed}};
}

CompareInput load_compare_input(const std::string& path, bool use_before) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string file = path;
  if (fs::is_directory(path, ec)) {
    file = (fs::path(path) / "report" / "report.json").string();
    if (!fs::exists(file, ec) && fs::exists(fs::path(path) / "report.json", ec))
      file = (fs::path(path) / "report.json").string();
    if (!fs::exists(file, ec)) {
      throw ResourceError(
          path, "",
          "an output directory must hold report/report.json; none found (was the run finished?)");
    }
  } else if (!fs::exists(path, ec)) {
    throw ResourceError(path, "", "no such file or directory");
  }
  const nlohmann::json doc = parse_json_strict(read_file(file), file, "");
  CompareInput input;
  if (doc.is_object() && doc.contains("format") && doc["format"] == kReportFormat) {
    const Report report = parse_report(doc, file);
    const char* which = use_before ? "eval.before" : "eval.after";
    const auto& eval = use_before ? report.eval_before : report.eval_after;
    if (!eval)
      throw DataError(file, which,
                      "the report holds no evaluation here (the run had no eval section?)");
    input.label = file + " (" + which + ")";
    input.eval = *eval;
    if (report.gate) input.gate = {report.gate->max_ppl_increase, report.gate->max_acc_drop};
  } else {
    input.label = file;
    input.eval = parse_eval_summary(doc, file);
  }
  return input;
}

}  // namespace lathe
