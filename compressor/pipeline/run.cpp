#include "compressor/pipeline/run.h"

#include <ATen/ATen.h>

#include <ctime>
#include <filesystem>
#include <iostream>
#include <limits>
#include <regex>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/eval/eval_report.h"
#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"
#include "compressor/model/weight_store.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/pattern_bank.h"
#include "compressor/pipeline/apply.h"
#include "compressor/pipeline/observe.h"
#include "compressor/pipeline/verify.h"
#include "compressor/report/compare.h"
#include "compressor/report/report.h"
#include "export/quant_export.h"

namespace fs = std::filesystem;

namespace lathe {
namespace {

bool needs_statistics(const Recipe& recipe) {
  for (const auto& p : recipe.pipeline.passes) {
    const PassInfo* info = find_pass(p.name);
    if (info && pass_reads_statistics(*info, p)) return true;
  }
  return false;
}

/// The pass count of the first segment: through the first pass that changes the model's structure
/// when more passes follow it; 0 when the recipe is one segment.
size_t first_segment(const Recipe& recipe) {
  const auto& passes = recipe.pipeline.passes;
  for (size_t i = 0; i + 1 < passes.size(); ++i) {
    const PassInfo* info = find_pass(passes[i].name);
    if (info && info->make(passes[i])->changes_structure()) return i + 1;
  }
  return 0;
}

ForwardOptions forward_options(const Recipe& recipe) {
  return parse_forward_options(recipe.device, recipe.dtype, recipe.source, "device", "dtype");
}

DecideRequest decide_request(const Recipe& recipe, const RunOptions& options) {
  DecideRequest req;
  req.calibration = recipe.pipeline.calibration;
  req.forward = forward_options(recipe);
  req.streaming.micro_batch = options.micro_batch;
  return req;
}

void calibrate_into(const Recipe& recipe, const std::string& stats_path,
                    const RunOptions& options) {
  if (!recipe.pipeline.calibration) return;
  CalibrateRequest req;
  req.model_dir = recipe.model;
  req.out = stats_path;
  req.calibration = *recipe.pipeline.calibration;
  req.forward = forward_options(recipe);
  req.collectors.forward_dtype = recipe.dtype;
  req.streaming.micro_batch = options.micro_batch;
  req.force = options.fresh;
  const CalibrateResult r =
      run_calibration(req, [](int64_t layer, int64_t layers, int64_t, double) {
        std::cerr << fmt::format("[calibrate] layer {}/{}\n", layer + 1, layers);
      });
  std::cerr << (r.reused ? fmt::format("[calibrate] {}: up to date, reused\n", stats_path)
                         : fmt::format("[calibrate] {}: {} statistics from {} tokens\n", stats_path,
                                       r.statistics, r.tokens));
}

std::optional<int64_t> layer_of(const std::string& name) {
  static const std::regex re(R"(^model\.layers\.(\d+)\.)");
  std::smatch m;
  if (std::regex_search(name, m, re)) return std::stoll(m[1].str());
  return std::nullopt;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

/// The eval JSON of `model_dir` on the recipe's eval files: its text files only when `texts`, and
/// with their divergence from `reference` when one is given.
nlohmann::json evaluate(const Recipe& recipe, const std::string& model_dir,
                        const std::string& label, const RunOptions& options, bool texts,
                        const std::string& reference = "") {
  EvalRequest req;
  req.model = model_dir;
  req.reference = reference;
  if (texts) req.texts = recipe.eval->text;
  req.tasks = recipe.eval->tasks;
  req.windows.seq_len = recipe.eval->seq_len;
  req.bos = recipe.eval->bos;
  req.forward = forward_options(recipe);
  req.micro_batch = options.micro_batch;
  req.print = false;
  req.label = label;
  return evaluate_model(req);
}

/// Refuses, before apply, a plan whose expert counts differ between layers when an export needs one
/// count and cannot pad (plan_expert_padding; FORMATS.md §6).
void check_export_expert_counts(const Recipe& recipe, const CompressionPlan& plan,
                                const std::vector<ExportFormat>& exports) {
  if (exports.empty() || plan.experts.empty()) return;
  ModelSpec spec = load_model_spec(recipe.model);
  for (const auto& [layer, ids] : plan.experts) {
    if (layer >= 0 && layer < static_cast<int64_t>(spec.layers.size())) {
      spec.layers[layer].num_experts = static_cast<int64_t>(ids.size());
    }
  }
  plan_expert_padding(spec, recipe.pipeline.pad_experts,
                      fmt::format("the {} export", export_format_name(exports.front())),
                      recipe.source);
}

}  // namespace

CompressionPlan plan_recipe(const Recipe& whole, const std::string& stats_path,
                            const RunOptions& options) {
  Recipe recipe = whole;  // a two-segment recipe: its first segment's plan (run.h)
  if (const size_t split = first_segment(whole)) {
    recipe.pipeline.passes.resize(split);
    std::cerr << fmt::format(
        "[plan] the passes after {} run on the model it writes (a second segment, docs/recipes.md "
        "\"Segments\"): this is the first segment's plan\n",
        whole.pipeline.passes[split - 1].name);
  }
  const std::string pipeline = recipe_pipeline_string(recipe);
  std::string stats;
  if (needs_statistics(recipe)) {
    if (!recipe.pipeline.calibration) {
      throw ConfigError(
          recipe.source, "calibration",
          "a pass of this recipe reads calibration statistics: add a calibration section");
    }
    if (stats_path.empty()) throw InternalError("", "stats", "no statistics path");
    calibrate_into(recipe, stats_path, options);
    stats = stats_path;
  }
  std::vector<std::string> log;
  CompressionPlan plan = run_decide(recipe.model, recipe.pipeline.passes, pipeline, stats, &log,
                                    decide_request(recipe, options));
  for (const auto& line : log) std::cerr << "[decide] " << line << "\n";
  return plan;
}

std::string describe_plan(const std::string& model_dir, const CompressionPlan& plan) {
  const ModelSpec spec = load_model_spec(model_dir);
  const WeightStore store(model_dir);
  const ExpertLayout layout =
      detect_expert_layout(spec, [&](const std::string& n) { return store.contains(n); });
  uint64_t before = 0, after = 0;
  int64_t quantized = 0, removed_tensors = 0;
  std::map<std::string, int64_t> formats;
  for (const auto& t : expected_tensors(spec, layout)) {
    const uint64_t bytes = store.info(t.name).nbytes();
    before += bytes;
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    if (t.expert >= 0) {
      auto kept = plan.experts.find(t.layer);
      if (kept != plan.experts.end() &&
          !std::binary_search(kept->second.begin(), kept->second.end(), t.expert)) {
        removed_tensors += 1;
        continue;
      }
    }
    auto q = plan.tensors.find(t.name);
    if (q == plan.tensors.end()) {
      after += bytes;
      continue;
    }
    const TensorPlan& p = q->second;
    int64_t kept_fraction_num = 1, kept_fraction_den = 1;
    if (t.role == TensorRole::kExpertsGateUp || t.role == TensorRole::kExpertsDown) {
      auto kept = plan.experts.find(t.layer);
      if (kept != plan.experts.end()) {
        kept_fraction_num = static_cast<int64_t>(kept->second.size());
        kept_fraction_den = t.shape[0];
      }
    }
    const int64_t in = t.shape.back();
    const int64_t groups = numel / in * (p.group_size == -1 ? 1 : in / p.group_size);
    // Packed estimate: codes at `bits`, an fp16 scale and a packed zero per group.
    const uint64_t packed = static_cast<uint64_t>(numel) * p.bits / 8 +
                            static_cast<uint64_t>(groups) * (2 + p.bits / 8.0);
    after += packed * kept_fraction_num / kept_fraction_den;
    quantized += 1;
    formats[quant_format(p)] += 1;
  }
  std::string out = fmt::format("plan for {} ({})\n", model_dir, spec.model_type);
  for (const auto& [layer, ids] : plan.experts) {
    const int64_t e = spec.layers[layer].num_experts;
    std::string removed;
    for (int64_t id = 0, k = 0; id < e; ++id) {
      if (k < static_cast<int64_t>(ids.size()) && ids[k] == id) {
        ++k;
      } else {
        removed += (removed.empty() ? "" : ",") + std::to_string(id);
      }
    }
    out += fmt::format("  layer {:>3}: keep {}/{} experts, remove [{}]\n", layer, ids.size(), e,
                       removed);
  }
  for (const auto& [layer, c] : plan.carve) {
    out += fmt::format(
        "  layer {:>3}: carve the FFN into S{}A{}E{} ({} of {} experts active, {} "
        "neurons each)\n",
        layer, c.shared, c.active, c.experts, c.shared + c.active, c.experts,
        spec.layers[layer].dense_intermediate / c.experts);
  }
  for (const auto& [f, n] : formats) out += fmt::format("  {} tensors → {}\n", n, f);
  if (removed_tensors) out += fmt::format("  {} expert tensors removed\n", removed_tensors);
  out += fmt::format(
      "  size: {:.2f} MB → {:.2f} MB (packed estimate; out/model stores dequantized weights in the "
      "original dtype)\n",
      before / 1e6, after / 1e6);
  return out;
}

namespace {

/// The recipe's export formats (out/hf, out/gptq, out/ct; out/model is always written);
/// `packed` tells whether one is packed (gptq, ct: verified after writing).
std::vector<ExportFormat> recipe_exports(const Recipe& recipe, bool* packed) {
  std::vector<ExportFormat> exports;
  *packed = false;
  for (const auto& f : recipe.pipeline.export_formats) {
    if (f == "gguf") {
      throw UnsupportedError(recipe.source, "export",
                             "export format \"gguf\" is not implemented in this lathe yet");
    }
    exports.push_back(parse_export_format(f, recipe.source, "export"));
    *packed = *packed || exports.back() == ExportFormat::kGptq ||
              exports.back() == ExportFormat::kCompressedTensors;
  }
  return exports;
}

/// The apply stage of a recipe run: publishing is left to the run (after eval and the report).
ApplyRequest recipe_apply_request(const Recipe& recipe, const RunOptions& options,
                                  const std::string& pipeline, const CompressionPlan& plan) {
  ApplyRequest req;
  req.model_dir = recipe.model;
  req.out_dir = recipe.output;
  req.pipeline = pipeline;
  req.passes = recipe.pipeline.passes;
  req.plan = plan;
  req.force = options.force;
  req.fresh = options.fresh;
  req.weights_fingerprint = plan.weights_fingerprint;  // decide just hashed the same weights
  req.publish = false;
  req.calibration =
      recipe.pipeline.calibration;  // passes that need the layers' inputs (gptq) stream it
  req.forward = forward_options(recipe);
  req.streaming.micro_batch = options.micro_batch;
  req.golden = options.golden;
  return req;
}

/// The recipe's exports, written into the partial output directory.
void write_recipe_exports(const Recipe& recipe, const fs::path& partial,
                          const std::vector<ExportFormat>& exports) {
  for (const ExportFormat f : exports) {
    ExportOptions export_options;
    export_options.force = true;  // a leftover of a killed run in the partial directory
    export_options.pad_experts = recipe.pipeline.pad_experts;
    const ExportResult exported = export_checkpoint(partial.string(), f, export_options);
    for (const auto& line : exported.log) std::cerr << "[export] " << line << "\n";
    std::cerr << fmt::format("[export] {}/{}: {} modules packed, {} stored dequantized{}\n",
                             recipe.output, export_dir_name(f), exported.packed_modules,
                             exported.unpacked_modules, sparse24_note(exported));
  }
}

/// Checks the packed exports against the golden vectors with every available backend but the
/// reference; each failing case appends a line to `failures`.
void verify_run_exports(const Recipe& recipe, const fs::path& partial,
                        std::vector<std::string>* failures) {
  VerifyOptions vo;
  for (const kernels::Backend b : kernels::available_backends()) {
    if (b != kernels::Backend::kCpuRef)
      vo.backends.push_back(b);  // the reference is for lathe verify
  }
  const VerifyResult v = verify_exports(partial.string(), vo);
  for (const auto& c : v.cases) {
    if (c.status == "fail")
      failures->push_back(fmt::format("verify: {} in {} does not compute what lathe measured{}",
                                      c.name, fs::path(c.export_dir).filename().string(),
                                      c.note.empty() ? "" : " (" + c.note + ")"));
  }
  std::cerr << fmt::format(
      "[verify] {} passed, {} failed, {} skipped (lathe verify {} for details)\n", v.passed,
      v.failed, v.skipped, recipe.output);
}

/// The report's per-tensor rows (format, Hessian source and tokens, relative error) and per-layer
/// rows (experts kept, mean relative error, seconds).
void add_tensor_and_layer_reports(const ModelSpec& spec, const CompressionPlan& plan,
                                  const ApplyResult& applied, Report* report) {
  std::map<int64_t, std::pair<double, int64_t>> layer_err;
  std::map<int64_t, std::vector<double>> layer_zeros, layer_target;
  for (const auto& r : applied.records) {
    TensorReport t;
    t.name = r.format == "removed" ? r.source : r.name;
    t.layer = layer_of(r.source);
    t.format = r.format;
    t.bits = r.bits;
    if (r.details.is_object() &&
        r.details.contains("experts")) {  // fused experts: per-expert sources
      std::map<std::string, int64_t> sources;
      int64_t fewest = -1;
      for (const auto& e : r.details["experts"]) {
        sources[e.value("h_source", "none")] += 1;
        const int64_t n = e.value("routed_tokens", e.value("tokens", int64_t{0}));
        fewest = fewest < 0 ? n : std::min(fewest, n);
      }
      for (const auto& [k, v] : sources)
        t.h_source += (t.h_source.empty() ? "" : ", ") + k + " " + std::to_string(v);
      t.tokens = fewest;
    } else if (r.details.is_object() && r.details.contains("h_source")) {
      t.h_source = r.details["h_source"].get<std::string>();
      t.tokens = r.details.value("routed_tokens", r.details.value("tokens", int64_t{0}));
    }
    if (r.rel_err >= 0) {
      t.rel_err = r.rel_err;
      if (t.layer) {
        layer_err[*t.layer].first += r.rel_err;
        layer_err[*t.layer].second += 1;
      }
    }
    if (r.sparsity.is_object()) {
      t.zeros = r.sparsity.value("zeros", 0.0);
      if (t.layer) {
        layer_zeros[*t.layer].push_back(*t.zeros);
        layer_target[*t.layer].push_back(r.sparsity.value("ratio", 0.0));
      }
    }
    report->tensors.push_back(t);
  }
  auto mean = [](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return s / static_cast<double>(v.size());
  };
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    LayerReport l;
    l.layer = i;
    const LayerSpec& ls = spec.layers[i];
    if (ls.is_moe) {
      l.experts_before = ls.num_experts;
      auto it = plan.experts.find(i);
      l.experts_kept =
          it == plan.experts.end() ? ls.num_experts : static_cast<int64_t>(it->second.size());
    }
    if (auto it = layer_err.find(i); it != layer_err.end())
      l.rel_err = it->second.first / it->second.second;
    if (i < static_cast<int64_t>(applied.layer_seconds.size()))
      l.seconds = applied.layer_seconds[i];
    if (auto it = layer_zeros.find(i); it != layer_zeros.end()) {
      l.sparsity = mean(it->second);
      l.sparsity_target = mean(layer_target.at(i));
    }
    if (auto it = plan.carve.find(i); it != plan.carve.end()) {
      const CarvePlan& c = it->second;
      l.carve = fmt::format("S{}A{}E{}", c.shared, c.active, c.experts);
    }
    report->layers.push_back(l);
  }
}

/// The before / after evaluation of a run (docs/eval.md) and its gate: eval_before.json and
/// eval_after.json in the partial directory, the comparison printed, the report's eval and gate.
void evaluate_and_gate(const Recipe& recipe, const RunOptions& options, const fs::path& partial,
                       Report* report, RunResult* result) {
  // The output is measured with quant/ dequantized exactly. The original streams once over the text
  // files, as the reference of the output's KL (docs/eval.md); the before-evaluation's perplexities
  // are the reference's, on the same windows. Task files are scored by each model on its own.
  const bool texts = !recipe.eval->text.empty();
  const std::string& original =
      options.reference_model.empty() ? recipe.model : options.reference_model;
  nlohmann::json before = evaluate(recipe, original, "eval before", options, /*texts=*/false);
  const nlohmann::json after = evaluate(recipe, partial.string(), "eval after", options,
                                        /*texts=*/true, texts ? original : "");
  if (texts) {
    for (const auto& [name, d] : after.at("divergence").items()) {
      before["perplexity"][name] = d.at("reference_perplexity");
      before["tokens"][name] = after.at("tokens").at(name);
      before["predicted"][name] = after.at("predicted").at(name);
    }
  }
  write_file_atomically((partial / "eval_before.json").string(), before.dump(2) + "\n");
  write_file_atomically((partial / "eval_after.json").string(), after.dump(2) + "\n");
  report->eval_before = parse_eval_summary(before, "eval before");
  report->eval_after = parse_eval_summary(after, "eval after");
  Thresholds thresholds;
  thresholds.max_ppl_increase = recipe.gate.max_ppl_increase;
  thresholds.max_acc_drop = recipe.gate.max_acc_drop;
  const Comparison cmp =
      compare_evals(*report->eval_before, *report->eval_after, thresholds, "compressed");
  std::cout << format_comparison(cmp, "original", "compressed");
  std::vector<std::string> kl_failures;
  if (after.contains("divergence")) {
    for (const auto& [name, d] : after["divergence"].items()) {
      // JSON null: a non-finite KL (a diverged model, or no predicted tokens); it fails a KL gate.
      const bool finite = d.contains("kl") && d.at("kl").is_number();
      const double kl = finite ? d.at("kl").get<double>() : std::numeric_limits<double>::infinity();
      const double top1 =
          d.contains("top1") && d.at("top1").is_number() ? d.at("top1").get<double>() : 0.0;
      std::cout << fmt::format(
          "KL to the original {}: {:.6f} nats/token, top-1 agreement {:.2f}%\n", name, kl,
          100 * top1);
      if (recipe.gate.max_kl && !(kl <= *recipe.gate.max_kl)) {
        kl_failures.push_back(fmt::format("KL to the original {}: {:.6f} > {:g} nats/token", name,
                                          kl, *recipe.gate.max_kl));
      }
    }
  }
  if (thresholds.any() || recipe.gate.max_kl) {
    report->gate = gate_report(cmp);
    report->gate->max_kl = recipe.gate.max_kl;
    report->gate->failures.insert(report->gate->failures.end(), kl_failures.begin(),
                                  kl_failures.end());
    report->gate->passed = cmp.passed && kl_failures.empty();
    result->gate_passed = report->gate->passed;
    result->gate_failures = report->gate->failures;
  }
}

/// `lathe run --dry-run`: the plan described, when no pass needs statistics.
void dry_run(const Recipe& recipe, const RunOptions& options,
             const std::vector<ExportFormat>& exports) {
  if (const size_t split = first_segment(recipe)) {  // only the first segment can be planned
    Recipe first = recipe;
    first.pipeline.passes.resize(split);
    dry_run(first, options, {});
    std::cerr << fmt::format(
        "[run] dry run: segment 2 ({} pass(es) after {}) is planned on the model segment 1 "
        "writes (docs/recipes.md \"Segments\")\n",
        recipe.pipeline.passes.size() - split, recipe.pipeline.passes[split - 1].name);
    return;
  }
  if (needs_statistics(recipe)) {
    std::cerr << "[run] dry run: the passes need calibration statistics; run `lathe plan` to "
                 "compute them\n";
    return;
  }
  const CompressionPlan plan = plan_recipe(recipe, "", options);
  check_export_expert_counts(recipe, plan, exports);
  std::cout << describe_plan(recipe.model, plan);
}

/// The run's report before evaluation: sizes, tensors, layers, and the costs of the stages and
/// passes: `before` (calibrate, decide), the passes in pipeline order, then `after` (verify);
/// stages that did not run are left out. `options_reference`: the original model of a second
/// segment (RunOptions::reference_model), named as the report's model.
Report run_report(const Recipe& recipe, const std::string& pipeline, const CompressionPlan& plan,
                  const ApplyResult& applied, const std::vector<StageTiming>& before,
                  const std::vector<StageTiming>& after, const std::string& options_reference) {
  Report report;
  report.pipeline = pipeline;
  report.model = options_reference.empty()
                     ? recipe.model
                     : options_reference + " (through segment 1: " + recipe.model + ")";
  report.output = recipe.output;
  report.lathe_version = LATHE_VERSION;
  report.created = utc_now();
  report.size_before_bytes = static_cast<int64_t>(applied.bytes_before);
  report.size_after_bytes = static_cast<int64_t>(applied.bytes_after);
  add_tensor_and_layer_reports(load_model_spec(recipe.model), plan, applied, &report);
  auto add = [&report](const StageTiming& t, const std::string& options) {
    report.passes.push_back({t.name, options, t.seconds, t.peak_rss_bytes});
  };
  for (const StageTiming& t : before)
    if (t.calls > 0) add(t, "");
  for (size_t p = 0; p < applied.timings.size(); ++p) {
    std::string opts;  // every pass is listed, also one that ran on no layer (all resumed)
    if (p < recipe.pipeline.passes.size()) {
      const PassInfo* info = find_pass(recipe.pipeline.passes[p].name);
      if (info) opts = recipe.pipeline.passes[p].options.canonical(info->options);
    }
    add(applied.timings[p], opts);
  }
  for (const StageTiming& t : after)
    if (t.calls > 0) add(t, "");
  return report;
}

/// run_recipe of a two-segment recipe (run.h).
RunResult run_segments(const Recipe& recipe, const RunOptions& options, size_t split) {
  Recipe first = recipe;
  first.output = recipe.output + ".segment1";
  first.pipeline.passes.resize(split);
  first.pipeline.export_formats.clear();
  first.pipeline.pad_experts = false;
  first.eval.reset();
  first.gate = GateSpec{};
  first.search.reset();
  const fs::path done(first.output);
  const std::string first_pipeline = recipe_pipeline_string(first);
  bool reuse = false;  // a finished first segment of the same pipeline (a resumed run)
  if (fs::exists(done / "lathe_manifest.json")) {
    const nlohmann::json m =
        nlohmann::json::parse(read_file((done / "lathe_manifest.json").string()), nullptr, false);
    reuse = m.is_object() && m.value("pipeline", "") == first_pipeline;
  }
  std::cerr << fmt::format("[run] segment 1 of 2 ({} pass(es), into {}){}\n", split, first.output,
                           reuse ? ": finished before, reused" : "");
  if (!reuse) {
    RunOptions o = options;
    o.force = true;  // a stale first segment of other inputs
    o.golden.rows = 0;
    run_recipe(first, o);
  }
  Recipe second = recipe;
  second.model = (done / "model").string();
  second.pipeline.passes.erase(second.pipeline.passes.begin(),
                               second.pipeline.passes.begin() + static_cast<std::ptrdiff_t>(split));
  RunOptions o = options;
  o.reference_model = recipe.model;
  std::cerr << fmt::format("[run] segment 2 of 2 ({} pass(es), on {})\n",
                           second.pipeline.passes.size(), second.model);
  RunResult result = run_recipe(second, o);
  const fs::path kept = fs::path(recipe.output) / "segments" / "1";
  fs::create_directories(kept);
  for (const char* f : {"lathe_manifest.json", "plan.json"})
    if (fs::exists(done / f))
      fs::copy_file(done / f, kept / f, fs::copy_options::overwrite_existing);
  fs::remove_all(done);
  return result;
}

}  // namespace

RunResult run_recipe(const Recipe& recipe, const RunOptions& options) {
  if (!options.dry_run) {
    if (const size_t split = first_segment(recipe)) return run_segments(recipe, options, split);
  }
  const std::string pipeline = recipe_pipeline_string(recipe);
  std::cerr << "[run] pipeline: " << pipeline << "\n";
  RunResult result;
  result.out_dir = recipe.output;
  bool packed_exports = false;  // gptq or ct: verified after writing
  const std::vector<ExportFormat> exports = recipe_exports(recipe, &packed_exports);
  if (options.dry_run) {
    dry_run(recipe, options, exports);
    return result;
  }
  const fs::path out(recipe.output), partial(recipe.output + ".partial");
  if (fs::exists(out) && !options.force) {
    throw ConfigError(recipe.output, "output",
                      "the output directory exists; use --force to replace it");
  }
  fs::create_directories(partial);
  // Every stage runs through run_stage (instrument.h): timed, its peak RSS taken, a line printed.
  StageLog stage_log(std::cerr);
  StageTiming calibrate{"calibrate"}, decide{"decide"}, verify{"verify"}, eval{"eval"};
  const std::string stats_path = (partial / "stats.h5").string();
  // The observe stage runs only for passes that read statistics; gptq and smoothquant stream the
  // calibration set through apply themselves.
  if (needs_statistics(recipe))
    run_stage(
        calibrate, "", [&] { calibrate_into(recipe, stats_path, options); }, &stage_log);

  CompressionPlan plan;
  run_stage(
      decide, "",
      [&] {
        std::vector<std::string> log;
        plan = run_decide(recipe.model, recipe.pipeline.passes, pipeline,
                          needs_statistics(recipe) ? stats_path : "", &log,
                          decide_request(recipe, options));
        for (const auto& line : log) std::cerr << "[decide] " << line << "\n";
        check_export_expert_counts(recipe, plan, exports);
      },
      &stage_log);

  ApplyRequest req = recipe_apply_request(recipe, options, pipeline, plan);
  req.observer = &stage_log;
  // apply and export are timed per pass and per format in the report; here they print a line.
  StageTiming apply{"apply"}, export_stage{"export"};
  ApplyResult applied;
  run_stage(
      apply, "",
      [&] {
        applied = run_apply(req, [](int64_t layer, int64_t layers) {
          std::cerr << fmt::format("[apply] layer {}/{}\n", layer + 1, layers);
        });
      },
      &stage_log);
  for (const auto& w : applied.warnings) std::cerr << "[apply] warning: " << w << "\n";
  if (write_plan_pattern_bank(plan, (partial / "pattern_bank.json").string()))  // docs/tcess.md
    std::cerr << fmt::format("[decide] pattern bank: {}/pattern_bank.json\n", recipe.output);
  if (!exports.empty())  // inside the partial directory: published with it
    run_stage(
        export_stage, "", [&] { write_recipe_exports(recipe, partial, exports); }, &stage_log);

  // The exports recompute the golden vectors (docs/verify.md); a mismatch fails the run like a
  // gate.
  std::vector<std::string> verify_failures;
  if (packed_exports && options.golden.rows > 0)
    run_stage(
        verify, "", [&] { verify_run_exports(recipe, partial, &verify_failures); }, &stage_log);

  Report report = run_report(recipe, pipeline, plan, applied, {calibrate, decide}, {verify},
                             options.reference_model);
  if (recipe.eval && (!recipe.eval->text.empty() || !recipe.eval->tasks.empty())) {
    run_stage(
        eval, "", [&] { evaluate_and_gate(recipe, options, partial, &report, &result); },
        &stage_log);
    report.passes.push_back({eval.name, "", eval.seconds, eval.peak_rss_bytes});
  }
  if (!verify_failures.empty()) {
    result.gate_passed = false;
    result.gate_failures.insert(result.gate_failures.end(), verify_failures.begin(),
                                verify_failures.end());
  }
  write_report_files(report, (partial / "report").string());
  publish_output(recipe.output);
  std::cerr << fmt::format(
      "[run] wrote {} ({:.2f} MB → {:.2f} MB); report: {}/report/report.html\n", recipe.output,
      applied.bytes_before / 1e6, applied.bytes_after / 1e6, recipe.output);
  return result;
}

}  // namespace lathe
