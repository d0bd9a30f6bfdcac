// `lathe verify DIR [--backend cpu-ref,cpu-fast,cuda] [--json FILE]`: replays the golden vectors
// through an export's packed files on every available kernel backend (docs/verify.md). Exit 0 when
// every module matches, 1 when one does not (each failure named), the error codes otherwise.
#include <CLI/CLI.hpp>

#include <iostream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "compressor/cli/commands.h"
#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/pipeline/verify.h"

namespace lathe::cli {
namespace {

std::vector<kernels::Backend> parse_backends(const std::string& text) {
  std::vector<kernels::Backend> out;
  std::stringstream in(text);
  std::string name;
  while (std::getline(in, name, ',')) {
    if (name == "cpu-ref")
      out.push_back(kernels::Backend::kCpuRef);
    else if (name == "cpu-fast")
      out.push_back(kernels::Backend::kCpuFast);
    else if (name == "cuda")
      out.push_back(kernels::Backend::kCuda);
    else
      throw ConfigError("", "--backend",
                        "unknown backend \"" + name + "\": expected cpu-ref, cpu-fast or cuda");
  }
  return out;
}

std::string case_line(const VerifyCase& c) {
  std::string line = fmt::format("{:<4} {:<56} {:<20}",
                                 c.status == "ok"     ? "OK"
                                 : c.status == "fail" ? "FAIL"
                                                      : "SKIP",
                                 c.name, c.format);
  for (const auto& k : c.checks) {
    line += fmt::format("  {} nmse {:.1e} max|Δ| {:.1e}{}", k.backend, k.nmse, k.max_abs,
                        k.passed ? "" : " (> " + fmt::format("{:.0e}", k.bound) + ")");
  }
  if (!c.note.empty()) line += "  " + c.note;
  return line;
}

}  // namespace

void add_verify_command(CLI::App& app) {
  struct Args {
    std::string dir, backends, json;
    bool quiet = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "verify",
      "Replay the golden vectors through an export's packed weights on every kernel backend");
  cmd->add_option("dir", args->dir,
                  "an export (OUT/gptq, OUT/ct) or a lathe output directory holding exports")
      ->required();
  cmd->add_option(
      "--backend", args->backends,
      "comma-separated backends (default: every available one: cpu-ref, cpu-fast, cuda)");
  cmd->add_option("--json", args->json, "also write the results as JSON to this file");
  cmd->add_flag("--quiet", args->quiet, "print failures and the summary only");
  cmd->callback([args] {
    VerifyOptions options;
    if (!args->backends.empty()) options.backends = parse_backends(args->backends);
    const VerifyResult r = verify_exports(args->dir, options, [&](const VerifyCase& c) {
      if (!args->quiet || c.status == "fail") std::cout << case_line(c) << "\n";
    });
    if (!args->json.empty()) {
      nlohmann::json cases = nlohmann::json::array();
      for (const auto& c : r.cases) {
        nlohmann::json checks = nlohmann::json::array();
        for (const auto& k : c.checks) {
          checks.push_back({{"backend", k.backend},
                            {"nmse", k.nmse},
                            {"max_abs", k.max_abs},
                            {"bound", k.bound},
                            {"passed", k.passed}});
        }
        cases.push_back({{"export", c.export_dir},
                         {"layer", c.layer},
                         {"name", c.name},
                         {"format", c.format},
                         {"status", c.status},
                         {"note", c.note},
                         {"checks", checks}});
      }
      const nlohmann::json j = {{"exports", r.exports},
                                {"passed", r.passed},
                                {"failed", r.failed},
                                {"skipped", r.skipped},
                                {"cases", cases}};
      write_file_atomically(args->json, j.dump(2) + "\n");
    }
    std::cout << fmt::format("verify: {} export(s), {} passed, {} failed, {} skipped\n",
                             r.exports.size(), r.passed, r.failed, r.skipped);
    if (r.failed > 0) {
      std::string names;
      int64_t shown = 0;
      for (const auto& c : r.cases) {
        if (c.status != "fail") continue;
        if (shown++ < 10)
          names +=
              "\n  - " + c.export_dir + ": " + c.name + (c.note.empty() ? "" : " (" + c.note + ")");
      }
      if (shown > 10) names += fmt::format("\n  ... and {} more", shown - 10);
      throw GateFailure(
          fmt::format("{} module(s) do not compute what lathe measured:{}", r.failed, names));
    }
  });
}

}  // namespace lathe::cli
