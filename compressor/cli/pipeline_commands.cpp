// `lathe passes` (the registry with options and defaults) and `lathe apply MODEL --plan plan.json
// --out DIR` (the apply stage on a possibly hand-edited plan; docs/plan.md, docs/output.md).
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <filesystem>
#include <optional>

#include <chrono>
#include <iostream>

#include <fmt/format.h>

#include "compressor/cli/commands.h"
#include "export/gguf_model_cache.h"
#include "compressor/common/errors.h"
#include "compressor/passes/pass.h"
#include "compressor/passes/pattern_bank.h"
#include "compressor/passes/plan.h"
#include "compressor/common/atomic_file.h"
#include "compressor/pipeline/apply.h"
#include "compressor/pipeline/recipe.h"
#include "compressor/pipeline/run.h"
#include "export/output_lock.h"

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

void add_pipeline_commands(CLI::App& app) {
  auto* passes = app.add_subcommand("passes", "List every pass with its options and defaults");
  passes->callback([] { print_passes(std::cout); });

  struct ApplyArgs {
    std::string model, plan, out;
    bool force = false, fresh = false;
    std::vector<std::string> data;
    int64_t samples = 128, seq_len = 2048, micro_batch = 8;
    GoldenOptions golden;
    uint64_t seed = 0;
    std::string packing = "pack", device = "cpu", dtype = "f32";
  };
  auto args = std::make_shared<ApplyArgs>();
  auto* apply = app.add_subcommand("apply", "Apply a plan.json to a model, one layer at a time, into an output directory");
  apply->add_option("model", args->model, "HF model directory or .gguf file")->required();
  apply->add_option("--plan", args->plan, "plan.json (docs/plan.md)")->required();
  apply->add_option("--out", args->out, "output directory (appears when complete)")->required();
  apply->add_flag("--force", args->force, "replace an existing output directory");
  apply->add_flag("--fresh", args->fresh, "discard a partial run of other inputs instead of refusing");
  apply->add_option("--data", args->data,
                    "calibration file for plans with gptq tensors: TASK=PATH (text or JSONL) or PATH.jsonl (repeatable)");
  apply->add_option("--samples", args->samples, "calibration samples per task")->capture_default_str();
  apply->add_option("--seq-len", args->seq_len, "tokens per calibration sample")->capture_default_str();
  apply->add_option("--packing", args->packing, "pack or document")->capture_default_str();
  apply->add_option("--seed", args->seed, "seed for choosing samples")->capture_default_str();
  apply->add_option("--device", args->device, "cpu or cuda")->capture_default_str();
  apply->add_option("--dtype", args->dtype, "working precision of the calibration forwards: f32 or bf16")->capture_default_str();
  apply->add_option("--micro-batch", args->micro_batch, "sequences per layer call")->capture_default_str();
  apply->add_option("--verify-rows", args->golden.rows, "golden-vector rows per quantized linear in verify/ (0: none)")
      ->capture_default_str();
  apply->add_option("--verify-experts", args->golden.experts, "routed experts per MoE layer with golden vectors (-1: all)")
      ->capture_default_str();
  apply->callback([args] {
    args->model = model_directory(args->model);
    ApplyRequest req;
    req.model_dir = args->model;
    req.out_dir = args->out;
    req.plan = CompressionPlan::read(args->plan);
    req.pipeline = req.plan.pipeline;
    req.force = args->force;
    req.fresh = args->fresh;
    if (!args->data.empty()) {
      CalibrationOptions c;
      for (const auto& d : args->data) c.sources.push_back(parse_data_option(d));
      c.samples = args->samples;
      c.seq_len = args->seq_len;
      c.packing = parse_packing(args->packing);
      c.seed = args->seed;
      req.calibration = c;
    }
    req.forward = parse_forward_options(args->device, args->dtype, "");
    req.streaming.micro_batch = args->micro_batch;
    req.golden = args->golden;
    const OutputLock lock(args->out);
    print_apply_summary(run_apply(req, apply_progress()), args->out);
  });

  struct RunArgs {
    std::string recipe, plan_out, stats;
    std::vector<std::string> sets;
    RunOptions options;
  };
  auto run_args = std::make_shared<RunArgs>();
  auto* run = app.add_subcommand("run", "Run a recipe: calibrate, decide, apply, evaluate, report (docs/recipes.md)");
  run->add_option("recipe", run_args->recipe, "recipe YAML")->required();
  run->add_option("--set", run_args->sets, "override a recipe value, e.g. passes.rtn.bits=3 (repeatable)");
  run->add_flag("--force", run_args->options.force, "replace an existing output directory");
  run->add_flag("--fresh", run_args->options.fresh, "discard a partial run of other inputs instead of refusing");
  run->add_flag("--dry-run", run_args->options.dry_run, "print what would be cut and quantized; write nothing");
  run->add_option("--micro-batch", run_args->options.micro_batch, "sequences per layer call")->capture_default_str();
  run->add_option("--verify-rows", run_args->options.golden.rows, "golden-vector rows per quantized linear in verify/ (0: none)")
      ->capture_default_str();
  run->add_option("--verify-experts", run_args->options.golden.experts,
                  "routed experts per MoE layer with golden vectors (-1: all)")
      ->capture_default_str();
  run->callback([run_args] {
    Recipe recipe = load_recipe(run_args->recipe, run_args->sets);
    recipe.model = model_directory(recipe.model);  // a .gguf model: its imported directory
    std::optional<OutputLock> lock;
    if (!run_args->options.dry_run) lock.emplace(recipe.output);
    const RunResult r = run_recipe(recipe, run_args->options);
    if (!r.gate_passed) {
      std::string message = "the compressed model regressed past the recipe's gate:";
      for (const auto& f : r.gate_failures) message += "\n  - " + f;
      throw GateFailure(message);
    }
  });

  auto* plan = app.add_subcommand("plan", "Calibrate and decide: write the plan.json that `lathe apply` executes");
  plan->add_option("recipe", run_args->recipe, "recipe YAML")->required();
  plan->add_option("--set", run_args->sets, "override a recipe value (repeatable)");
  plan->add_option("--out", run_args->plan_out, "plan.json to write")->required();
  plan->add_option("--stats", run_args->stats, "statistics store (default: next to the plan, .stats.h5)");
  plan->add_flag("--fresh", run_args->options.fresh, "recompute statistics made from other inputs");
  plan->callback([run_args] {
    Recipe recipe = load_recipe(run_args->recipe, run_args->sets);
    recipe.model = model_directory(recipe.model);  // a .gguf model: its imported directory
    std::string stats = run_args->stats;
    if (stats.empty()) stats = std::filesystem::path(run_args->plan_out).replace_extension(".stats.h5").string();
    const CompressionPlan p = plan_recipe(recipe, stats, run_args->options);
    write_file_atomically(run_args->plan_out, p.to_json().dump(2) + "\n");
    write_plan_pattern_bank(p, std::filesystem::path(run_args->plan_out).replace_extension(".pattern_bank.json").string());
    std::cout << describe_plan(recipe.model, p);
  });
}

}  // namespace lathe::cli
