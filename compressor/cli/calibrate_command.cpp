// `lathe calibrate MODEL --data TASK=PATH... --out stats.h5`: the observe stage (DESIGN.md stage 1;
// docs/calibrate.md). Builds the CalibrationSet, streams it through the model once with the
// statistics collectors attached, and writes the fingerprinted HDF5 store plus the expert coverage
// report. A store that already holds every statistic for the same inputs is reused without a forward
// pass; one made from other inputs is refused (naming what changed) unless --force.
// `lathe coverage STATS.h5` prints the coverage report of an existing store.
#include <CLI/CLI.hpp>
#include <signal.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "calibrate/calibration_set.h"
#include "calibrate/collectors.h"
#include "calibrate/coverage.h"
#include "calibrate/stats_store.h"
#include "calibrate/tokenizer.h"
#include "compressor/cli/commands.h"
#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/fingerprint.h"
#include "compressor/model/streaming.h"
#include "compressor/model/weight_store.h"

namespace lathe::cli {
namespace {

struct CalibrateArgs {
  std::string model, out, coverage_json;
  std::vector<std::string> data;
  int64_t samples = 128, seq_len = 2048, micro_batch = 8, atopk = 10;
  uint64_t seed = 0;
  std::string packing = "pack", hessians, device = "cpu", dtype = "f32", spill_dir;
  double memory_limit_gib = 4.0;
  bool no_router = false, no_channels = false, no_neurons = false, force = false, check = false;
  CoverageOptions coverage;
};

/// "--data TASK=PATH" or "--data PATH.jsonl" (tasks from the records).
CalibrationSource parse_data(const std::string& spec) {
  CalibrationSource src;
  const size_t eq = spec.find('=');
  if (eq == std::string::npos) {
    src.path = spec;
  } else {
    src.task = spec.substr(0, eq);
    src.path = spec.substr(eq + 1);
    if (src.task.empty()) throw ConfigError("", "--data", "empty task label in \"" + spec + "\" (expected TASK=PATH)");
  }
  if (src.path.empty()) throw ConfigError("", "--data", "empty path in \"" + spec + "\" (expected TASK=PATH or FILE.jsonl)");
  return src;
}

/// Removes `<out>.tmp-<pid>` files left by lathe processes that no longer run (a killed run).
void remove_stale_temporaries(const std::string& out) {
  const std::filesystem::path target(out);
  const std::filesystem::path dir = target.parent_path().empty() ? "." : target.parent_path();
  const std::string prefix = target.filename().string() + ".tmp-";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string pid_text = name.substr(prefix.size());
    if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stoll(pid_text));
    if (pid == ::getpid() || (::kill(pid, 0) == 0 || errno == EPERM)) continue;  // still running
    std::filesystem::remove(entry.path(), ec);
    std::cerr << fmt::format("[calibrate] removed {} left by an interrupted run (process {} is gone)\n",
                             entry.path().string(), pid);
  }
}

const StatsKey kDescriptionKey{"calibration_description", StatsKey::kAllLayers, "input", "all"};

std::string no_weights_fingerprint() { return Fingerprinter("lathe.no-weights/1").finish(); }
std::string data_options_fingerprint() { return Fingerprinter("lathe.calibration-data/1").finish(); }

/// Every statistic this run must produce, with the fingerprints it must carry.
struct Expectation {
  std::vector<std::pair<StatsKey, StatsFingerprints>> entries;
};

/// Why the existing store does not fit this run: one line per changed input.
std::vector<std::string> explain_mismatch(const StatsStore& store, const Expectation& want,
                                          const std::vector<std::string>& upstream, const std::string& description) {
  std::vector<std::string> lines;
  bool weights = false, calibration = false, options = false, missing = false;
  int64_t first_layer = -1;
  for (const auto& [key, fps] : want.entries) {
    if (!store.contains(key)) {
      missing = true;
      continue;
    }
    const StatsInfo info = store.info(key);
    if (info.fingerprints.weights != fps.weights) {
      weights = true;
      if (key.layer >= 0 && (first_layer < 0 || key.layer < first_layer)) first_layer = key.layer;
    }
    calibration |= info.fingerprints.calibration != fps.calibration;
    options |= info.fingerprints.options != fps.options;
  }
  if (weights) {
    lines.push_back(first_layer >= 0 ? fmt::format("model weights changed (first in decoder layer {}, or the embedding "
                                                   "when 0)", first_layer)
                                     : "model weights changed");
  }
  (void)upstream;
  if (calibration) {
    std::vector<std::string> what;
    if (store.contains(kDescriptionKey)) {
      const at::Tensor bytes = store.get(kDescriptionKey, store.info(kDescriptionKey).fingerprints);
      const std::string stored(static_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(bytes.numel()));
      what = describe_calibration_change(stored, description);
    }
    if (what.empty()) lines.push_back("calibration data changed");
    for (const auto& w : what) lines.push_back("calibration data changed: " + w);
  }
  if (options) lines.push_back("collector options changed (statistics, --atopk, --hessians or --dtype)");
  if (missing && lines.empty()) lines.push_back("the store lacks statistics this run collects");
  return lines;
}

void print_coverage(const CoverageReport& report) { std::cout << coverage_text(report); }

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
  CalibrationOptions copts;
  for (const auto& d : args.data) copts.sources.push_back(parse_data(d));
  if (copts.sources.empty()) throw ConfigError("", "--data", "give at least one calibration file (TASK=PATH or FILE.jsonl)");
  copts.samples = args.samples;
  copts.seq_len = args.seq_len;
  copts.packing = parse_packing(args.packing);
  copts.seed = args.seed;

  CollectorOptions col;
  col.router = !args.no_router;
  col.channels = !args.no_channels;
  col.neurons = !args.no_neurons;
  col.atopk = args.atopk;
  col.hessians = parse_hessian_taps(args.hessians, "--hessians");
  if (args.dtype != "f32" && args.dtype != "bf16") throw ConfigError("", "--dtype", "expected f32 or bf16, found \"" + args.dtype + "\"");
  col.forward_dtype = args.dtype;
  if (args.micro_batch <= 0) throw ConfigError("", "--micro-batch", "must be positive");
  if (args.memory_limit_gib < 0) throw ConfigError("", "--memory-limit", "must be ≥ 0");

  ForwardOptions forward;
  forward.dtype = args.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  if (args.device == "cuda") {
    if (!at::hasCUDA()) throw UnsupportedError("", "--device", "no CUDA device visible to this lathe build");
    forward.device = at::kCUDA;
  } else if (args.device != "cpu") {
    throw ConfigError("", "--device", "expected cpu or cuda, found \"" + args.device + "\"");
  }

  const CausalLM model(args.model, forward);
  const ModelSpec& spec = model.spec();
  const std::string tokenizer_path = (std::filesystem::path(args.model) / "tokenizer.json").string();
  const Tokenizer tokenizer = Tokenizer::from_model_dir(args.model);
  const CalibrationSet set = build_calibration_set(copts, tokenizer, file_fingerprint(tokenizer_path));
  if (tokenizer.id_limit() > spec.vocab_size) {
    throw DataError(tokenizer_path, "vocab", fmt::format("the tokenizer has ids up to {} but the model's vocab_size is {}",
                                                         tokenizer.id_limit() - 1, spec.vocab_size));
  }
  std::cerr << fmt::format("[calibrate] {} samples × {} tokens over {} task(s); {} valid tokens\n", set.num_samples(),
                           set.seq_len, set.tasks.size(), set.tokens());

  const std::vector<std::string> upstream = upstream_weight_fingerprints(model.store(), spec, model.layout());
  StatsCollector collector(spec, col, set.task_of, set.tasks);
  const std::string no_weights = no_weights_fingerprint(), data_options = data_options_fingerprint();

  Expectation want;
  want.entries.push_back({kDescriptionKey, {no_weights, set.fingerprint, data_options}});
  for (size_t t = 0; t < set.tasks.size(); ++t) {
    want.entries.push_back({{"calibration_ids", StatsKey::kAllLayers, "input", set.tasks[t]}, {no_weights, set.fingerprint, data_options}});
    want.entries.push_back({{"calibration_lengths", StatsKey::kAllLayers, "input", set.tasks[t]}, {no_weights, set.fingerprint, data_options}});
  }
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    for (const auto& key : collector.expected_keys(i)) {
      const std::string group = key.kind == "hessian" ? "hessian"
                                : key.kind.rfind("channel_", 0) == 0 ? "channels"
                                : key.kind.rfind("neuron_", 0) == 0 ? "neurons"
                                                                      : "router";
      want.entries.push_back({key, {upstream[i], set.fingerprint, collector_options_fingerprint(col, group)}});
    }
  }

  if (args.coverage_json.empty()) args.coverage_json = default_coverage_path(args.out);
  remove_stale_temporaries(args.out);
  if (std::filesystem::exists(args.out)) {
    const StatsStore existing = StatsStore::open(args.out);
    bool current = true;
    for (const auto& [key, fps] : want.entries) current = current && existing.is_current(key, fps);
    if (current) {
      std::cerr << fmt::format("[calibrate] {} is up to date ({} statistics for these inputs); no forward pass\n", args.out,
                               want.entries.size());
      if (args.check) return;
      const CoverageReport report = coverage_from_store(existing, args.coverage);
      print_coverage(report);
      write_coverage(report, args.coverage_json);
      return;
    }
    const std::vector<std::string> why = explain_mismatch(existing, want, upstream, set.description_json);
    std::string message = "was computed from other inputs:";
    for (const auto& w : why) message += "\n  - " + w;
    if (args.check || !args.force) {
      message += args.check ? "" : "\nre-run with --force to recompute and replace it";
      throw DataError(args.out, "", message);
    }
    std::cerr << "[calibrate] " << args.out << " " << message << "\n[calibrate] --force: recomputing\n";
  } else if (args.check) {
    throw ResourceError(args.out, "", "no statistics store here");
  }

  StatsStore store = StatsStore::create(args.out);
  {
    const std::string& d = set.description_json;
    const at::Tensor bytes = at::from_blob(const_cast<char*>(d.data()), {static_cast<int64_t>(d.size())}, at::kByte).clone();
    store.put(kDescriptionKey, bytes, {no_weights, set.fingerprint, data_options}, set.tokens());
  }
  const int64_t n = set.num_samples(), t = set.seq_len;
  const at::Tensor ids = at::from_blob(const_cast<int32_t*>(set.ids.data()), {n, t}, at::kInt).to(at::kLong);
  const at::Tensor lengths = at::from_blob(const_cast<int64_t*>(set.lengths.data()), {n}, at::kLong).clone();
  const at::Tensor valid = at::arange(t, at::kLong).unsqueeze(0) < lengths.unsqueeze(1);
  const at::Tensor task_of = at::from_blob(const_cast<int32_t*>(set.task_of.data()), {n}, at::kInt).to(at::kLong);
  for (size_t k = 0; k < set.tasks.size(); ++k) {
    const at::Tensor rows = (task_of == static_cast<int64_t>(k)).nonzero().select(1, 0);
    const StatsFingerprints fps{no_weights, set.fingerprint, data_options};
    store.put({"calibration_ids", StatsKey::kAllLayers, "input", set.tasks[k]}, ids.index_select(0, rows).to(at::kInt), fps,
              set.tokens(static_cast<int32_t>(k)));
    store.put({"calibration_lengths", StatsKey::kAllLayers, "input", set.tasks[k]}, lengths.index_select(0, rows), fps,
              set.tokens(static_cast<int32_t>(k)));
  }

  StreamingOptions streaming;
  streaming.micro_batch = args.micro_batch;
  streaming.buffer_dtype = at::kBFloat16;
  streaming.memory_limit_bytes = static_cast<uint64_t>(args.memory_limit_gib * (1ull << 30));
  if (!args.spill_dir.empty()) streaming.spill_dir = args.spill_dir;
  const bool tty = ::isatty(STDERR_FILENO);
  auto layer_start = std::chrono::steady_clock::now();
  stream_forward(
      model, ids, valid, streaming, &collector, [](int64_t, const at::Tensor&, const at::Tensor&) {},
      [&](int64_t layer) {
        const std::vector<CollectedStat> stats = collector.finish_layer(layer);
        for (const auto& s : stats) {
          const StatsFingerprints fps{upstream[layer], set.fingerprint, s.options_fingerprint};
          store.put(s.key, s.value, fps, s.tokens);
        }
        const auto now = std::chrono::steady_clock::now();
        std::cerr << fmt::format("{}[calibrate] layer {}/{}: {} statistics, {:.1f} s{}", tty ? "\r" : "", layer + 1,
                                 spec.num_layers, stats.size(), std::chrono::duration<double>(now - layer_start).count(),
                                 tty && layer + 1 < spec.num_layers ? "" : "\n")
                  << std::flush;
        layer_start = now;
      });
  store.commit();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cerr << fmt::format("[calibrate] wrote {} ({} statistics) in {:.1f} s\n", args.out, want.entries.size(), seconds);
  const StatsStore done = StatsStore::open(args.out);
  const CoverageReport report = coverage_from_store(done, args.coverage);
  print_coverage(report);
  write_coverage(report, args.coverage_json);
}

}  // namespace

void add_calibrate_command(CLI::App& app) {
  auto args = std::make_shared<CalibrateArgs>();
  auto* cmd = app.add_subcommand("calibrate", "Collect calibration statistics into an HDF5 store (docs/calibrate.md)");
  cmd->add_option("model", args->model, "HF model directory (config.json, *.safetensors, tokenizer.json)")->required();
  cmd->add_option("--data", args->data, "calibration file: TASK=PATH (text or JSONL) or PATH.jsonl with a task per record (repeatable)")
      ->required();
  cmd->add_option("--out", args->out, "statistics store to write (HDF5)")->required();
  cmd->add_option("--samples", args->samples, "samples per task")->capture_default_str();
  cmd->add_option("--seq-len", args->seq_len, "tokens per sample")->capture_default_str();
  cmd->add_option("--packing", args->packing, "pack (windows of a concatenated stream) or document (one per sample)")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "seed for choosing samples")->capture_default_str();
  cmd->add_option("--hessians", args->hessians,
                  "comma-separated taps to store Σxxᵀ for: attn.in, attn.o.in, mlp.in, mlp.act, shared.act, expert.in, "
                  "expert.act, expert.act.all");
  cmd->add_option("--atopk", args->atopk, "K_a of the CMoE activation-rate marker rule")->capture_default_str();
  cmd->add_flag("--no-router", args->no_router, "skip router statistics");
  cmd->add_flag("--no-channels", args->no_channels, "skip channel norms and abs-max");
  cmd->add_flag("--no-neurons", args->no_neurons, "skip neuron activation rates");
  cmd->add_option("--coverage", args->coverage_json, "coverage report JSON (default: OUT with .coverage.json)");
  cmd->add_option("--min-expert-tokens", args->coverage.min_tokens, "coverage: flag experts with fewer tokens than this")
      ->capture_default_str();
  cmd->add_option("--min-expert-fraction", args->coverage.min_fraction,
                  "coverage: …or fewer than this fraction of the task's tokens")
      ->capture_default_str();
  cmd->add_option("--device", args->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "working precision: f32 or bf16")->capture_default_str();
  cmd->add_option("--micro-batch", args->micro_batch, "sequences per layer call")->capture_default_str();
  cmd->add_option("--memory-limit", args->memory_limit_gib, "GiB of activations kept in RAM before spilling to disk")
      ->capture_default_str();
  cmd->add_option("--spill-dir", args->spill_dir, "directory for spilled activations (default: the temp dir)");
  cmd->add_flag("--force", args->force, "replace a store computed from other inputs");
  cmd->add_flag("--check", args->check, "only check that OUT is current for these inputs (exit 0) or say what changed");
  cmd->callback([args] { run_calibrate(*args); });

  auto cov = std::make_shared<std::pair<std::string, CoverageOptions>>();
  auto json_out = std::make_shared<std::string>();
  auto* c = app.add_subcommand("coverage", "Expert coverage report of a statistics store: tokens per layer × expert × task");
  c->add_option("stats", cov->first, "statistics store written by lathe calibrate")->required();
  c->add_option("--min-expert-tokens", cov->second.min_tokens, "flag experts with fewer tokens than this")->capture_default_str();
  c->add_option("--min-expert-fraction", cov->second.min_fraction, "…or fewer than this fraction of the task's tokens")
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
