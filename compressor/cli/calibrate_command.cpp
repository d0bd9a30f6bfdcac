// `lathe calibrate MODEL --data TASK=PATH... --out stats.h5`: the observe stage (DESIGN.md stage 1;
// docs/calibrate.md). Builds the CalibrationSet, streams it through the model once with the
// statistics collectors attached, and writes the fingerprinted HDF5 store plus the expert coverage
// report. A store that already holds every statistic for the same inputs is reused without a
// forward pass; one made from other inputs is refused (naming what changed) unless --force. `lathe
// coverage STATS.h5` prints the coverage report of an existing store.
#include <ATen/ATen.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "calibrate/coverage.h"
#include "calibrate/stats_store.h"
#include "compressor/cli/commands.h"
#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/pipeline/observe.h"
#include "compressor/pipeline/preflight.h"
#include "export/gguf_model_cache.h"
#include "export/output_lock.h"

namespace lathe::cli {
namespace {

struct CalibrateArgs {
  std::string model, out, coverage_json, summary_json;
  std::vector<std::string> data;
  int64_t samples = 128, seq_len = 2048, micro_batch = 8, atopk = 10;
  uint64_t seed = 0;
  std::string packing = "pack", hessians, device = "cpu", dtype = "f32", spill_dir;
  double memory_limit_gib = 4.0;
  bool no_router = false, no_channels = false, no_neurons = false, force = false, check = false;
  CoverageOptions coverage;
};

void print_coverage(const CoverageReport& report) {
  std::cout << coverage_text(report);
}

void write_coverage(const CoverageReport& report, const std::string& path) {
  if (path.empty()) return;
  write_file_atomically(path, coverage_json(report).dump(2) + "\n");
  std::cerr << fmt::format("[calibrate] coverage report: {}\n", path);
}

std::string default_coverage_path(const std::string& out) {
  std::filesystem::path p(out);
  p.replace_extension(".coverage.json");
  return p.string();
}

void run_calibrate(CalibrateArgs& args) {
  const auto start = std::chrono::steady_clock::now();
  CalibrateRequest req;
  req.model_dir = args.model;
  req.out = args.out;
  std::vector<std::pair<std::string, std::string>> inputs;
  for (const auto& d : args.data) {
    req.calibration.sources.push_back(parse_data_option(d));
    inputs.emplace_back("--data", req.calibration.sources.back().path);
  }
  req.calibration.samples = args.samples;
  req.calibration.seq_len = args.seq_len;
  req.calibration.packing = parse_packing(args.packing);
  req.calibration.seed = args.seed;
  // The options, then every missing input at once, before anything is opened.
  if (!args.data.empty()) check_calibration_options(req.calibration);
  require_command_inputs(args.model, inputs);
  CollectorOptions& col = req.collectors;
  col.router = !args.no_router;
  col.channels = !args.no_channels;
  col.neurons = !args.no_neurons;
  col.atopk = args.atopk;
  col.hessians = parse_hessian_taps(args.hessians, "--hessians");
  req.forward = parse_forward_options(args.device, args.dtype, "");
  col.forward_dtype = args.dtype;
  if (args.micro_batch <= 0) throw ConfigError("", "--micro-batch", "must be positive");
  if (!(args.memory_limit_gib >= 0))
    throw ConfigError("", "--memory-limit", "must be a number of GiB ≥ 0");
  req.streaming.micro_batch = args.micro_batch;
  req.streaming.buffer_dtype = at::kBFloat16;
  req.streaming.memory_limit_bytes =
      static_cast<uint64_t>(args.memory_limit_gib * static_cast<double>(1ull << 30));
  if (!args.spill_dir.empty()) req.streaming.spill_dir = args.spill_dir;
  req.force = args.force;
  req.check_only = args.check;

  const bool tty = ::isatty(STDERR_FILENO);
  std::optional<OutputLock> lock;
  if (!args.check) lock.emplace(args.out);
  const CalibrateResult r =
      run_calibration(req, [tty](int64_t layer, int64_t layers, int64_t stats, double seconds) {
        std::cerr << fmt::format("{}[calibrate] layer {}/{}: {} statistics, {:.1f} s{}",
                                 tty ? "\r" : "", layer + 1, layers, stats, seconds,
                                 tty && layer + 1 < layers ? "" : "\n")
                  << std::flush;
      });
  for (const auto& f : r.removed_temporaries)
    std::cerr << "[calibrate] removed " << f << ", left by an interrupted run\n";
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (r.reused) {
    std::cerr << fmt::format(
        "[calibrate] {} is up to date ({} statistics for these inputs); no forward pass\n",
        args.out, r.statistics);
  } else {
    std::cerr << fmt::format(
        "[calibrate] wrote {} ({} statistics; {} samples, {} tokens) in {:.1f} s\n", args.out,
        r.statistics, r.samples, r.tokens, seconds);
  }
  if (!args.summary_json.empty()) {
    const nlohmann::json summary = {{"out", args.out},
                                    {"reused", r.reused},
                                    {"layer_forwards", r.layer_forwards},
                                    {"statistics", r.statistics},
                                    {"samples", r.samples},
                                    {"tokens", r.tokens},
                                    {"seconds", seconds},
                                    {"lathe_version", LATHE_VERSION}};
    write_file_atomically(args.summary_json, summary.dump(2) + "\n");
  }
  if (args.check) return;
  if (args.coverage_json.empty()) args.coverage_json = default_coverage_path(args.out);
  const CoverageReport report = coverage_from_store(StatsStore::open(args.out), args.coverage);
  print_coverage(report);
  write_coverage(report, args.coverage_json);
}

}  // namespace

CalibrationSource parse_data_option(const std::string& spec) {
  CalibrationSource src;
  const size_t eq = spec.find('=');
  if (eq == std::string::npos) {
    src.path = spec;
  } else {
    src.task = spec.substr(0, eq);
    src.path = spec.substr(eq + 1);
    if (src.task.empty())
      throw ConfigError("", "--data", "empty task label in \"" + spec + "\" (expected TASK=PATH)");
  }
  if (src.path.empty())
    throw ConfigError("", "--data",
                      "empty path in \"" + spec + "\" (expected TASK=PATH or FILE.jsonl)");
  return src;
}

void add_calibrate_command(CLI::App& app) {
  auto args = std::make_shared<CalibrateArgs>();
  auto* cmd = app.add_subcommand(
      "calibrate", "Collect calibration statistics into an HDF5 store (docs/calibrate.md)");
  cmd->add_option("model", args->model,
                  "HF model directory (config.json, *.safetensors, tokenizer.json) or .gguf file")
      ->required();
  cmd->add_option("--data", args->data,
                  "calibration file: TASK=PATH (text or JSONL) or PATH.jsonl with a task per "
                  "record (repeatable)")
      ->required();
  cmd->add_option("--out", args->out, "statistics store to write (HDF5)")->required();
  cmd->add_option("--samples", args->samples, "samples per task")->capture_default_str();
  cmd->add_option("--seq-len", args->seq_len, "tokens per sample")->capture_default_str();
  cmd->add_option("--packing", args->packing,
                  "pack (windows of a concatenated stream) or document (one per sample)")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "seed for choosing samples")->capture_default_str();
  cmd->add_option("--hessians", args->hessians,
                  "comma-separated taps to store Σxxᵀ for: attn.in, attn.o.in, mlp.in, mlp.act, "
                  "shared.act, expert.in, "
                  "expert.act, expert.act.all");
  cmd->add_option("--atopk", args->atopk, "K_a of the CMoE activation-rate marker rule")
      ->capture_default_str();
  cmd->add_flag("--no-router", args->no_router, "skip router statistics");
  cmd->add_flag("--no-channels", args->no_channels, "skip channel norms and abs-max");
  cmd->add_flag("--no-neurons", args->no_neurons, "skip neuron activation rates");
  cmd->add_option("--coverage", args->coverage_json,
                  "coverage report JSON (default: OUT with .coverage.json)");
  cmd->add_option("--min-expert-tokens", args->coverage.min_tokens,
                  "coverage: flag experts with fewer tokens than this")
      ->capture_default_str();
  cmd->add_option("--min-expert-fraction", args->coverage.min_fraction,
                  "coverage: …or fewer than this fraction of the task's tokens")
      ->capture_default_str();
  cmd->add_option("--device", args->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "working precision: f32 or bf16")->capture_default_str();
  cmd->add_option("--micro-batch", args->micro_batch, "sequences per layer call")
      ->capture_default_str();
  cmd->add_option("--memory-limit", args->memory_limit_gib,
                  "GiB of activations kept in RAM before spilling to disk")
      ->capture_default_str();
  cmd->add_option("--spill-dir", args->spill_dir,
                  "directory for spilled activations (default: the temp dir)");
  cmd->add_option("--json", args->summary_json,
                  "write a run summary (reused, layer_forwards, statistics, tokens, seconds)");
  cmd->add_flag("--force", args->force, "replace a store computed from other inputs");
  cmd->add_flag("--check", args->check,
                "only check that OUT is current for these inputs (exit 0) or say what changed");
  cmd->callback([args] {
    args->model = model_directory(args->model);
    run_calibrate(*args);
  });

  auto cov = std::make_shared<std::pair<std::string, CoverageOptions>>();
  auto json_out = std::make_shared<std::string>();
  auto* c = app.add_subcommand(
      "coverage", "Expert coverage report of a statistics store: tokens per layer × expert × task");
  c->add_option("stats", cov->first, "statistics store written by lathe calibrate")->required();
  c->add_option("--min-expert-tokens", cov->second.min_tokens,
                "flag experts with fewer tokens than this")
      ->capture_default_str();
  c->add_option("--min-expert-fraction", cov->second.min_fraction,
                "…or fewer than this fraction of the task's tokens")
      ->capture_default_str();
  c->add_option("--json", *json_out, "also write the report as JSON");
  c->callback([cov, json_out] {
    const StatsStore store = StatsStore::open(cov->first);
    const CoverageReport report = coverage_from_store(store, cov->second);
    print_coverage(report);
    if (!json_out->empty()) write_file_atomically(*json_out, coverage_json(report).dump(2) + "\n");
  });
}

}  // namespace lathe::cli
