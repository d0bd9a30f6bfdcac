// `lathe compare A [B]`: metric deltas between two evaluations and the release gate
// (docs/compare.md); `lathe report PATH`: re-renders report.md and report.html from report.json
// (docs/report.md).
#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>
#include <memory>

#include "compressor/cli/commands.h"
#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/report/compare.h"
#include "compressor/report/report.h"

namespace lathe::cli {
namespace {

struct CompareArgs {
  std::string a, b, max_ppl_increase, max_acc_drop, json_out;
};

/// Each limit from its flag, else from B's report gate, else from A's.
Thresholds choose_thresholds(const CompareArgs& args, const CompareInput& a,
                             const CompareInput& b) {
  Thresholds t;
  if (!args.max_ppl_increase.empty()) {
    t.max_ppl_increase = parse_ppl_increase(args.max_ppl_increase);
  } else {
    t.max_ppl_increase =
        b.gate.max_ppl_increase ? b.gate.max_ppl_increase : a.gate.max_ppl_increase;
  }
  if (!args.max_acc_drop.empty()) {
    t.max_acc_drop = parse_acc_drop(args.max_acc_drop);
  } else {
    t.max_acc_drop = b.gate.max_acc_drop ? b.gate.max_acc_drop : a.gate.max_acc_drop;
  }
  return t;
}

void run_compare(const CompareArgs& args) {
  // Parse the flags before touching files, so a typo is a usage error (exit 2) whatever the inputs.
  if (!args.max_ppl_increase.empty()) parse_ppl_increase(args.max_ppl_increase);
  if (!args.max_acc_drop.empty()) parse_acc_drop(args.max_acc_drop);
  const bool one_report = args.b.empty();  // A's own before vs after
  const CompareInput a = load_compare_input(args.a, one_report);
  const CompareInput b = load_compare_input(one_report ? args.a : args.b);
  const Comparison comparison =
      compare_evals(a.eval, b.eval, choose_thresholds(args, a, b), b.label);
  std::cout << format_comparison(comparison, a.label, b.label) << std::flush;
  if (!args.json_out.empty()) {
    write_file_atomically(args.json_out,
                          comparison_to_json(comparison, a.label, b.label).dump(2) + "\n");
  }
  if (!comparison.passed) {
    const auto lines = regression_lines(comparison);
    std::string message = std::to_string(lines.size()) + " metric(s) regressed";
    for (const auto& line : lines) message += "\n  " + line;
    throw GateFailure(message);
  }
}

/// The report.json a `lathe report` argument names: DIR/report/report.json, DIR/report.json or
/// the file itself.
std::string locate_report_json(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    if (!fs::exists(path, ec)) throw ResourceError(path, "", "no such file or directory");
    return path;
  }
  for (const fs::path& candidate :
       {fs::path(path) / "report" / "report.json", fs::path(path) / "report.json"}) {
    if (fs::is_regular_file(candidate, ec)) return candidate.string();
  }
  throw ResourceError(path, "", "no report/report.json or report.json in this directory");
}

void run_report(const std::string& path) {
  const std::string json_path = locate_report_json(path);
  const Report report = read_report_file(json_path);
  render_report_files(report, json_path);
  const std::filesystem::path dir = std::filesystem::path(json_path).parent_path();
  std::cout << "wrote " << (dir / "report.md").string() << "\nwrote "
            << (dir / "report.html").string() << "\n";
}

}  // namespace

void add_compare_command(CLI::App& app) {
  auto args = std::make_shared<CompareArgs>();
  auto* cmd = app.add_subcommand(
      "compare", "Metric deltas between two evaluations; exit 1 when a threshold is exceeded");
  cmd->add_option("a", args->a, "baseline: eval JSON, report.json or output directory")->required();
  cmd->add_option("b", args->b,
                  "candidate: eval JSON, report.json or output directory "
                  "(omitted: A's report, eval.before against eval.after)");
  cmd->add_option("--max-ppl-increase", args->max_ppl_increase,
                  "allowed relative perplexity increase: 3% or 0.03");
  cmd->add_option("--max-acc-drop", args->max_acc_drop,
                  "allowed accuracy drop in percentage points: 1 or 1pp");
  cmd->add_option("--json", args->json_out, "write the comparison as JSON (docs/compare.md)");
  cmd->callback([args] { run_compare(*args); });

  auto report_path = std::make_shared<std::string>();
  auto* report =
      app.add_subcommand("report", "Re-render report.md and report.html next to a report.json");
  report
      ->add_option("path", *report_path,
                   "output directory, its report/ directory, or a report.json")
      ->required();
  report->callback([report_path] { run_report(*report_path); });
}

}  // namespace lathe::cli
