// `lathe passes` (the registry with options and defaults) and `lathe apply MODEL --plan plan.json
// --out DIR` (the apply stage on a possibly hand-edited plan; docs/plan.md, docs/output.md).
#include <CLI/CLI.hpp>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>

#include <chrono>
#include <iostream>

#include <fmt/format.h>

#include "compressor/cli/commands.h"
#include "compressor/common/errors.h"
#include "compressor/passes/pass.h"
#include "compressor/passes/plan.h"
#include "compressor/pipeline/apply.h"

namespace lathe::cli {

void print_passes(std::ostream& out) {
  for (const PassInfo& p : pass_registry()) {
    out << fmt::format("{}  — {}\n", p.name, p.summary);
    for (const OptionSpec& o : p.options) {
      std::string range;
      if (o.type == OptionType::kEnum) {
        for (const auto& c : o.choices) range += (range.empty() ? "" : "|") + c;
      } else if (o.min || o.max) {
        auto num = [&](double v) { return o.type == OptionType::kFloat ? fmt::format("{:g}", v) : fmt::format("{}", static_cast<int64_t>(v)); };
        range = fmt::format("{}..{}", o.min ? num(*o.min) : "", o.max ? num(*o.max) : "");
      }
      out << fmt::format("    {:<14} {:<11} default {:<8} {}{}\n", o.name, option_type_name(o.type),
                         o.required ? "(required)" : o.default_value.empty() ? "(none)" : o.default_value, o.help,
                         range.empty() ? "" : " [" + range + "]");
    }
    if (p.per_tensor_overrides) out << "    overrides: [{match: REGEX, <option>: value}] per tensor, first match wins\n";
    if (!p.statistics.empty()) {
      std::string s;
      for (const auto& k : p.statistics) s += (s.empty() ? "" : ", ") + k;
      out << "    reads statistics: " << s << "\n";
    }
  }
}

void print_apply_summary(const ApplyResult& r, const std::string& out_dir) {
  std::cerr << fmt::format("[apply] {}: {} layers written, {} resumed; {:.2f} MB → {:.2f} MB\n", out_dir, r.written_layers,
                           r.resumed_layers, r.bytes_before / 1e6, r.bytes_after / 1e6);
  for (const auto& t : r.timings) {
    std::cerr << fmt::format("[apply]   {:<16} {:8.2f} s   peak RSS {:.0f} MB\n", t.name, t.seconds, t.peak_rss_bytes / 1e6);
  }
  for (const auto& w : r.warnings) std::cerr << "[apply] warning: " << w << "\n";
}

std::function<void(int64_t, int64_t)> apply_progress() {
  const bool tty = ::isatty(STDERR_FILENO);
  return [tty](int64_t layer, int64_t layers) {
    std::cerr << fmt::format("{}[apply] layer {}/{}{}", tty ? "\r" : "", layer + 1, layers,
                             tty && layer + 1 < layers ? "" : "\n")
              << std::flush;
  };
}

/// Test-only fault injection: LATHE_FAULT_KILL_AFTER_LAYER=i makes the process SIGKILL itself right
/// after layer i is on disk, so tests can prove that resume works from every point.
std::function<void(int64_t)> fault_injection_hook() {
  const char* env = std::getenv("LATHE_FAULT_KILL_AFTER_LAYER");
  if (!env || !*env) return {};
  const int64_t target = std::strtoll(env, nullptr, 10);
  return [target](int64_t layer) {
    if (layer == target) ::kill(::getpid(), SIGKILL);
  };
}

void add_pipeline_commands(CLI::App& app) {
  auto* passes = app.add_subcommand("passes", "List every pass with its options and defaults");
  passes->callback([] { print_passes(std::cout); });

  struct ApplyArgs {
    std::string model, plan, out;
    bool force = false, fresh = false;
  };
  auto args = std::make_shared<ApplyArgs>();
  auto* apply = app.add_subcommand("apply", "Apply a plan.json to a model, one layer at a time, into an output directory");
  apply->add_option("model", args->model, "HF model directory")->required();
  apply->add_option("--plan", args->plan, "plan.json (docs/plan.md)")->required();
  apply->add_option("--out", args->out, "output directory (appears when complete)")->required();
  apply->add_flag("--force", args->force, "replace an existing output directory");
  apply->add_flag("--fresh", args->fresh, "discard a partial run of other inputs instead of refusing");
  apply->callback([args] {
    ApplyRequest req;
    req.model_dir = args->model;
    req.out_dir = args->out;
    req.plan = CompressionPlan::read(args->plan);
    req.pipeline = req.plan.pipeline;
    req.force = args->force;
    req.fresh = args->fresh;
    req.after_layer = fault_injection_hook();
    print_apply_summary(run_apply(req, apply_progress()), args->out);
  });
}

}  // namespace lathe::cli
