#include "compressor/pipeline/apply.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "calibrate/stats_store.h"
#include "calibrate/tokenizer.h"
#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/fault_injection.h"
#include "compressor/common/file_io.h"
#include "compressor/common/sha256.h"
#include "compressor/common/strict_json.h"
#include "compressor/model/activation_buffer.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/model/fingerprint.h"
#include "compressor/model/layer_weights.h"
#include "compressor/model/model_spec.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_store.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/moe_blocks.h"
#include "compressor/pipeline/layer_replay.h"
#include "export/checkpoint_writer.h"
#include "export/quant_sidecar.h"
#include "export/safetensors_writer.h"

namespace fs = std::filesystem;

namespace lathe {

namespace {

std::vector<std::unique_ptr<Pass>> make_passes(const std::vector<PassInstance>& passes) {
  std::vector<std::unique_ptr<Pass>> out;
  for (const auto& p : passes) {
    const PassInfo* info = find_pass(p.name);
    if (!info) throw ConfigError("", "passes", "unknown pass \"" + p.name + "\"");
    out.push_back(info->make(p));
  }
  return out;
}

/// The record of a tensor written as it was loaded (no pass changed it).
TensorRecord unchanged_record(const std::string& name, const std::string& source,
                              const at::Tensor& value) {
  TensorRecord r;
  r.name = name;
  r.source = source;
  r.format = dtype_name(safetensors_dtype(value.scalar_type(), name));
  r.bits = static_cast<int64_t>(value.element_size() * 8);
  return r;
}

/// config.json of the output model: expert counts after surgery (ALGORITHMS.md §4.4 for groups).
nlohmann::json output_config(const nlohmann::json& config, const ModelSpec& spec,
                             const CompressionPlan& plan, std::vector<std::string>* warnings) {
  nlohmann::json out = config;
  if (!plan.carve.empty()) write_cmoe_config(out, spec, carved_layers(spec, plan));
  if (plan.experts.empty()) return out;
  std::vector<int64_t> per_layer;
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    const LayerSpec& l = spec.layers[i];
    auto it = plan.experts.find(i);
    per_layer.push_back(!l.is_moe                  ? 0
                        : it == plan.experts.end() ? l.num_experts
                                                   : static_cast<int64_t>(it->second.size()));
  }
  if (!write_expert_counts(out, spec, per_layer)) {
    warnings->push_back(
        "expert counts differ between layers: config.json has num_experts_per_layer, which only "
        "lathe reads (transformers needs the same count in every layer)");
  }
  // Group-limited routing survives only when every group keeps the same share (ALGORITHMS.md §4.4).
  const RoutingRule& r = spec.routing;
  if (r.num_groups > 1) {
    bool keep_groups = true;
    for (const auto& [layer, ids] : plan.experts) {
      const LayerSpec& l = spec.layers[layer];
      const int64_t group = l.num_experts / r.num_groups, m = static_cast<int64_t>(ids.size());
      if (m % r.num_groups != 0 || r.topk_groups * (m / r.num_groups) < l.top_k)
        keep_groups = false;
      std::vector<int64_t> per_group(r.num_groups, 0);
      for (int64_t id : ids) per_group[id / group] += 1;
      for (int64_t c : per_group) keep_groups = keep_groups && c * r.num_groups == m;
    }
    if (!keep_groups) {
      out["n_group"] = 1;
      out["topk_group"] = 1;
      warnings->push_back(fmt::format(
          "group-limited routing (n_group {}, topk_group {}) turned off: the kept experts are "
          "not spread evenly over the groups, so routing changed",
          r.num_groups, r.topk_groups));
    }
  }
  return out;
}

struct ResumeState {
  std::string pipeline, weights, plan, calibration;
  std::map<int64_t, std::string> layers;  // shard index → sha256
  std::map<int64_t, std::string> quant;  // shard index → sha256 of its quant/ shard ("" when none)
  nlohmann::json to_json() const {
    nlohmann::json l = nlohmann::json::object(), q = nlohmann::json::object();
    for (const auto& [k, v] : layers) l[std::to_string(k)] = v;
    for (const auto& [k, v] : quant) q[std::to_string(k)] = v;
    return {{"format", "lathe-resume"},
            {"version", 1},
            {"pipeline", pipeline},
            {"weights_fingerprint", weights},
            {"plan_sha256", plan},
            {"calibration", calibration},
            {"shards", l},
            {"quant_shards", q}};
  }
};

/// Checks the plan against this model's quantizable tensors and shapes (ConfigError naming the
/// field).
void validate_plan(const CompressionPlan& plan, const ModelSpec& spec, ExpertLayout layout) {
  std::vector<std::string> quantizable;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& t : expected_tensors(spec, layout)) {
    if (is_quantizable(t.role)) {
      quantizable.push_back(t.name);
      shapes[t.name] = t.shape;
    }
  }
  plan.validate(spec, quantizable, shapes, "plan");
}

/// Whether a pass (or, without passes, the plan: smoothing or gptq tensors) needs the layers'
/// inputs.
bool apply_needs_activations(const ApplyRequest& req,
                             const std::vector<std::unique_ptr<Pass>>& passes) {
  bool needs = false;
  for (const auto& p : passes) needs = needs || p->needs_activations();
  if (passes.empty()) {
    needs = req.plan.smoothing.has_value();
    for (const auto& [name, t] : req.plan.tensors) needs = needs || t.method == "gptq";
    for (const auto& [name, t] : req.plan.sparsity) needs = needs || t.method != "magnitude";
    needs = needs || !req.plan.carve.empty();
  }
  return needs;
}

/// The calibration set of a run whose passes need the layers' inputs (ConfigError when none is
/// given).
CalibrationSet apply_calibration(const ApplyRequest& req) {
  if (!req.calibration) {
    throw ConfigError("", "calibration",
                      "gptq, smoothquant, wanda, sparsegpt and cmoe work from the layers' inputs: "
                      "give calibration data (a calibration section in the recipe, or --data "
                      "TASK=FILE for lathe apply)");
  }
  const Tokenizer tokenizer = Tokenizer::from_model_dir(req.model_dir);
  return build_calibration_set(
      *req.calibration, tokenizer,
      file_fingerprint((fs::path(req.model_dir) / "tokenizer.json").string()));
}

/// Resume (docs/output.md): a partial run of the same inputs keeps the shards whose bytes are what
/// its state recorded (and their quant/ shards); one of other inputs is refused, or discarded with
/// `fresh`; a partial directory without state is cleared. Then the directories exist.
void restore_resume_state(const fs::path& partial, int64_t layers, bool fresh, ResumeState* state) {
  const fs::path state_path = partial / ".lathe" / "state.json";
  if (fs::exists(state_path)) {
    const nlohmann::json old =
        parse_json_strict(read_file(state_path.string()), state_path.string(), "");
    std::vector<std::string> changed;
    if (old.value("pipeline", "") != state->pipeline) changed.push_back("the pipeline changed");
    if (old.value("weights_fingerprint", "") != state->weights)
      changed.push_back("the model weights changed");
    if (old.value("plan_sha256", "") != state->plan) changed.push_back("the plan changed");
    if (old.value("calibration", "") != state->calibration)
      changed.push_back("the calibration data changed");
    if (!changed.empty()) {
      if (!fresh) {
        std::string message = "a partial run of other inputs is here:";
        for (const auto& c : changed) message += "\n  - " + c;
        message += "\nre-run with --fresh to discard it and start again";
        throw DataError(partial.string(), "", message);
      }
      fs::remove_all(partial / "model");
      fs::remove_all(partial / "quant");
      fs::remove_all(partial / "verify");
      fs::remove_all(partial / ".lathe");
    } else if (old.contains("shards") && old["shards"].is_object()) {
      for (const auto& [k, v] : old["shards"].items()) {
        const int64_t index = std::stoll(k);
        const fs::path file = partial / "model" / checkpoint_shard_name(index, layers + 1);
        // A shard counts as finished only when its bytes are what the state recorded.
        if (v.is_string() && fs::exists(file) &&
            file_fingerprint(file.string()) == v.get<std::string>())
          state->layers[index] = v;
      }
      // ... and its quant/ shard, when it has one, is intact too.
      const nlohmann::json q = old.value("quant_shards", nlohmann::json::object());
      for (auto it = state->layers.begin(); it != state->layers.end();) {
        const std::string key = std::to_string(it->first);
        const fs::path file = partial / "quant" / checkpoint_shard_name(it->first, layers + 1);
        const bool ok = q.contains(key) && q[key].is_string() &&
                        (q[key].get<std::string>().empty()
                             ? !fs::exists(file)
                             : fs::exists(file) &&
                                   file_fingerprint(file.string()) == q[key].get<std::string>());
        if (ok) {
          state->quant[it->first] = q[key].get<std::string>();
          ++it;
        } else {
          it = state->layers.erase(it);
        }
      }
    }
  } else if (fs::exists(partial / "model")) {
    fs::remove_all(partial /
                   "model");  // killed before its first state was written: nothing to keep
    fs::remove_all(partial / "quant");
    fs::remove_all(partial / "verify");
  }
  fs::create_directories(partial / "model");
  fs::create_directories(partial / "quant");
  fs::create_directories(partial / "verify");
  fs::create_directories(partial / ".lathe");
}

using ApplyStep = std::pair<std::string, std::function<void(LayerApplyContext&)>>;

/// The passes' apply hooks; without passes (lathe apply on a plan.json) the plan alone drives the
/// built-in steps: the carve, expert surgery, sparsity, then each tensor's quantization method.
std::vector<ApplyStep> apply_steps(const ApplyRequest& req,
                                   const std::vector<std::unique_ptr<Pass>>& passes) {
  std::vector<ApplyStep> steps;
  for (size_t p = 0; p < passes.size(); ++p) {
    const Pass* pass = passes[p].get();
    steps.push_back({req.passes[p].name, [pass](LayerApplyContext& c) { pass->apply(c); }});
  }
  if (passes.empty()) {
    if (!req.plan.carve.empty()) steps.push_back({"cmoe", apply_carve});
    if (!req.plan.experts.empty() || !req.plan.expert_scale.empty())
      steps.push_back({"expert-surgery", apply_expert_surgery});
    for (const char* method : {"magnitude", "wanda", "sparsegpt"}) {  // before any quantization
      bool used = false;
      for (const auto& [name, t] : req.plan.sparsity) used = used || t.method == method;
      if (used)
        steps.push_back(
            {method, [m = std::string(method)](LayerApplyContext& c) { apply_sparsity(c, m); }});
    }
    bool rtn = false;
    for (const auto& [name, t] : req.plan.tensors) rtn = rtn || t.method == "rtn";
    if (rtn) steps.push_back({"rtn", apply_rtn});
    bool gptq = false;
    for (const auto& [name, t] : req.plan.tensors) gptq = gptq || t.method == "gptq";
    if (req.plan.smoothing) {
      steps.push_back(
          {"smoothquant", apply_smoothquant});  // smoothing, then GPTQ of the plan's tensors
    } else if (gptq) {
      steps.push_back({"gptq", apply_gptq});
    }
  }
  return steps;
}

/// The last shard: embedding, final norm and LM head, unchanged.
void write_last_shard(const ModelSpec& spec, ExpertLayout layout, const WeightStore& store,
                      CheckpointShards* shards, std::vector<TensorRecord>* records) {
  std::vector<TensorBytes> bytes;
  std::vector<at::Tensor> keep;
  std::vector<std::string> names;
  for (const auto& t : expected_tensors(spec, layout)) {
    if (t.layer >= 0) continue;
    require_tensor(store, t.name, t.shape);
    const at::Tensor v = load_tensor(store, t.name);
    bytes.push_back(tensor_bytes(t.name, v, &keep));
    records->push_back(unchanged_record(t.name, t.name, v));
    names.push_back(t.name);
  }
  shards->write(-1, bytes);
  store.release(names);
}

/// model/expert_map.json (FORMATS.md): the kept experts of each pruned layer.
void write_expert_map(const CompressionPlan& plan, const ModelSpec& spec, const fs::path& path) {
  nlohmann::json layers = nlohmann::json::object();
  for (const auto& [l, ids] : plan.experts) layers[std::to_string(l)] = ids;
  int64_t source = 0;
  for (const auto& l : spec.layers) source = std::max(source, l.num_experts);
  const nlohmann::json map = {
      {"format", "lathe-expert-map"},
      {"version", 1},
      {"source_num_experts", source},
      {"method", plan.decided_by.count("experts") ? plan.decided_by.at("experts") : ""},
      {"layers", layers},
      {"padding", nlohmann::json::object()}};
  write_file_atomically(path.string(), map.dump(2) + "\n");
}

/// lathe_manifest.json (docs/output.md): pipeline, input fingerprints, every tensor's format and
/// error, the removed experts and every output file's fingerprint.
nlohmann::json apply_manifest(const ApplyRequest& req, const ModelSpec& spec,
                              const nlohmann::json& config, const std::string& weights_fp,
                              const std::vector<TensorRecord>& records, const fs::path& partial) {
  // Output tensors by output name; removed experts listed by their input names apart, since a
  // renumbered kept expert may carry a removed one's old name.
  nlohmann::json tensors_json = nlohmann::json::object(), removed_json = nlohmann::json::array();
  for (const auto& r : records) {
    if (r.format == "removed") {
      removed_json.push_back(r.source);
      continue;
    }
    nlohmann::json t = {{"format", r.format}, {"source", r.source}, {"bits", r.bits}};
    if (r.rel_err >= 0) {
      t["group_size"] = r.group_size;
      t["sym"] = r.sym;
      t["rel_err"] = r.rel_err;
    }
    if (!r.details.is_null()) t["details"] = r.details;
    if (!r.sparsity.is_null()) t["sparsity"] = r.sparsity;
    tensors_json[r.name] = t;
  }
  nlohmann::json outputs = nlohmann::json::object();
  for (const char* sub : {"model", "quant", "verify"}) {
    if (!fs::exists(partial / sub)) continue;
    for (const auto& entry : fs::directory_iterator(partial / sub)) {
      if (entry.is_regular_file()) {
        outputs[std::string(sub) + "/" + entry.path().filename().string()] =
            file_fingerprint(entry.path().string());
      }
    }
  }
  outputs["plan.json"] = file_fingerprint((partial / "plan.json").string());
  nlohmann::json experts = nlohmann::json::object();
  for (const auto& [l, ids] : req.plan.experts)
    experts[std::to_string(l)] = {{"count", ids.size()}, {"map", ids}};
  const fs::path tok = fs::path(req.model_dir) / "tokenizer.json";
  return {{"format", "lathe-manifest"},
          {"version", 1},
          {"tool", {{"name", "lathe"}, {"version", LATHE_VERSION}}},
          {"pipeline", req.pipeline},
          {"input_model",
           {{"architecture", spec.model_type},
            {"config_sha256", config_fingerprint(config)},
            {"weights_fingerprint", weights_fp},
            {"tokenizer_fingerprint", fs::exists(tok) ? file_fingerprint(tok.string()) : ""}}},
          {"tensors", tensors_json},
          {"removed", removed_json},
          {"experts", experts},
          {"outputs", outputs}};
}

/// The layer-0 inputs of every calibration sequence (the embedding, in micro-batches).
ActivationBuffer embed_calibration(const ModelSpec& spec, const WeightStore& store,
                                   const at::Tensor& calib_ids, const StreamingOptions& streaming,
                                   at::ScalarType dtype) {
  const int64_t n = calib_ids.size(0), t = calib_ids.size(1);
  ActivationBuffer buffer(n, t, spec.hidden_size, streaming.buffer_dtype,
                          streaming.memory_limit_bytes, streaming.spill_dir);
  require_tensor(store, "model.embed_tokens.weight", {spec.vocab_size, spec.hidden_size});
  const at::Tensor table = load_tensor(store, "model.embed_tokens.weight");
  const auto cpu_work = at::TensorOptions().dtype(dtype);
  for (int64_t b = 0; b < n; b += streaming.micro_batch) {
    const at::Tensor ids = calib_ids.slice(0, b, std::min(n, b + streaming.micro_batch));
    buffer.write(b, embed_rows(spec, table, ids, cpu_work));
  }
  store.release("model.embed_tokens.weight");
  return buffer;
}

/// A layer's tensors as loaded (stored dtype, views of the mapping), before any pass.
std::vector<LayerTensor> load_layer_tensors(const WeightStore& store,
                                            const std::vector<ExpectedTensor>& expected) {
  std::vector<LayerTensor> tensors;
  for (const auto& t : expected) {
    require_tensor(store, t.name, t.shape);
    at::Tensor v = load_tensor(store, t.name);
    tensors.push_back({t.name, t.name, t.role, t.expert, v, v.scalar_type()});
  }
  return tensors;
}

/// Records for the tensors no pass changed.
void add_unchanged_records(const std::vector<LayerTensor>& tensors,
                           std::vector<TensorRecord>* records) {
  std::set<std::string> recorded;
  for (const auto& r : *records) {
    if (r.format != "removed")
      recorded.insert(r.name);  // a kept expert may now carry a removed one's name
  }
  for (const auto& t : tensors) {
    if (!recorded.count(t.name)) records->push_back(unchanged_record(t.name, t.source, t.value));
  }
  for (auto& r : *records) {  // stored dense but changed (pruned): the stored dtype's format
    if (!r.format.empty()) continue;
    for (const auto& t : tensors) {
      if (t.name != r.name) continue;
      const TensorRecord u = unchanged_record(t.name, t.source, t.value.to(t.stored));
      r.format = u.format;
      r.bits = u.bits;
    }
  }
}

/// Layer i's model and quant/ shards: written (their fingerprints into `state`; returns true), or,
/// when the partial run being resumed wrote them already, only recorded in the indexes.
bool write_layer_shards(int64_t i, const std::vector<LayerTensor>& tensors,
                        const std::vector<QuantRecord>& quant, ResumeState* state,
                        CheckpointShards* model_shards, CheckpointShards* quant_shards) {
  std::vector<TensorBytes> quant_bytes;
  std::vector<at::Tensor> quant_keep;
  for (const auto& q : quant) append_quant_tensors(q, &quant_bytes, &quant_keep);
  if (state->layers.count(i + 1)) {
    for (const auto& t : tensors) model_shards->record(i, t.name);
    for (const auto& b : quant_bytes) quant_shards->record(i, b.name);
    return false;
  }
  std::vector<TensorBytes> bytes;
  std::vector<at::Tensor> keep;
  for (const auto& t : tensors) bytes.push_back(tensor_bytes(t.name, t.value.to(t.stored), &keep));
  state->quant[i + 1] = quant_bytes.empty() ? "" : quant_shards->write(i, quant_bytes);
  state->layers[i + 1] = model_shards->write(i, bytes);
  return true;
}

/// The output's config.json (expert counts after surgery), the input's side files, the model and
/// quant/ indexes, the expert map and plan.json; returns the model shards' bytes.
uint64_t write_model_files(const ApplyRequest& req, const ModelSpec& spec,
                           const nlohmann::json& in_config, const std::string& plan_text,
                           const fs::path& partial, const CheckpointShards& model_shards,
                           const CheckpointShards& quant_shards,
                           std::vector<std::string>* warnings) {
  const nlohmann::json out_config = output_config(in_config, spec, req.plan, warnings);
  write_file_atomically((partial / "model" / "config.json").string(), out_config.dump(2) + "\n");
  copy_model_side_files(req.model_dir, partial / "model", {"expert_map.json"});
  const uint64_t total = model_shards.file_bytes();
  model_shards.write_index({{"total_size", total}});
  if (fs::is_empty(partial / "verify")) fs::remove_all(partial / "verify");
  if (quant_shards.empty()) {
    fs::remove_all(partial / "quant");
  } else {
    quant_shards.write_index({{"format", "lathe-quant"}, {"version", 1}});
  }
  if (!req.plan.experts.empty())
    write_expert_map(req.plan, spec, partial / "model" / "expert_map.json");
  write_file_atomically((partial / "plan.json").string(), plan_text);
  return total;
}

/// Runs each step on the layer as one call of its stage in `timings` (errors name the pass and
/// layer; the error itself names file and tensor).
void run_steps(const std::vector<ApplyStep>& steps, LayerApplyContext& ctx,
               std::vector<StageTiming>* timings, StageObserver* observer) {
  for (size_t p = 0; p < steps.size(); ++p) {
    run_stage((*timings)[p], fmt::format("{}, layer {}", steps[p].first, ctx.layer),
              [&] { steps[p].second(ctx); }, observer);
  }
}

/// The next layer's inputs: this layer as compressed (with its quantized tensors' activation bits)
/// on the calibration inputs.
ActivationBuffer next_layer_inputs(LayerReplay& replay, const std::vector<LayerTensor>& tensors,
                                   const std::vector<QuantRecord>& quant, const ModelSpec& spec,
                                   const at::Tensor& calib_ids, const StreamingOptions& streaming) {
  int64_t act_bits = 0;
  for (const auto& q : quant) act_bits = std::max(act_bits, q.act_bits);
  ActivationBuffer next(calib_ids.size(0), calib_ids.size(1), spec.hidden_size,
                        streaming.buffer_dtype, streaming.memory_limit_bytes, streaming.spill_dir);
  replay.run(tensors, act_bits, nullptr, &next);
  return next;
}

/// The layer loop of apply: what every layer reads and appends to.
struct ApplyRun {
  const ApplyRequest& req;
  const ModelSpec& spec;
  const ModelSpec& out_spec;  ///< what the compressed layers run as (expert counts after surgery)
  ExpertLayout layout;
  const WeightStore& store;
  const std::vector<ApplyStep>& steps;
  fs::path partial;
  ResumeState& state;
  std::function<void()> save_state;
  CheckpointShards& model_shards;
  CheckpointShards& quant_shards;
  std::vector<TensorRecord>& all_records;
  ApplyResult& result;
  // The calibration set's boundary activations (only when a pass needs them).
  bool calibrated = false;
  at::TensorOptions work{};
  at::Tensor calib_ids{}, calib_valid{};
  std::optional<ActivationBuffer> current{};  ///< the inputs of the layer being applied
  LayerActivations activations{};
  std::optional<GoldenRecorder> golden{};

  /// Embeds the calibration set once (layer 0's inputs).
  void start_calibration(const std::optional<CalibrationSet>& calib) {
    work = at::TensorOptions().dtype(req.forward.dtype).device(req.forward.device);
    if (!calib) return;
    calibrated = true;
    std::tie(calib_ids, calib_valid) = calibration_tensors(*calib);
    current.emplace(embed_calibration(spec, store, calib_ids, req.streaming, req.forward.dtype));
    activations.sequences = calib_ids.size(0);
    activations.tokens = calib->tokens();
  }

  /// Golden vectors for the verification harness: a few real rows carried through the compressed
  /// layers.
  void start_golden() {
    if (req.golden.rows <= 0) return;
    std::string source;
    const at::Tensor rows =
        golden_rows(spec, store, calib_ids, calib_valid, req.golden.rows, &source);
    store.release("model.embed_tokens.weight");
    golden.emplace(out_spec, layout, req.golden, rows, source);
  }

  /// Layer i: load, every step, golden vectors, records, shards (or the resumed run's), and the
  /// next layer's inputs.
  void apply_layer(int64_t i) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<ExpectedTensor> expected = expected_layer_tensors(spec, layout, i);
    std::vector<LayerTensor> tensors = load_layer_tensors(store, expected);
    std::vector<TensorRecord> records;
    std::vector<std::string> warnings;
    std::vector<QuantRecord> quant;
    // Replays of this layer over the calibration set (each resumes from where the last one left
    // off when nothing upstream changed since: layer_replay.h).
    std::optional<LayerReplay> replay;
    if (calibrated) {
      replay.emplace(out_spec, layout, i, *current, calib_valid, req.streaming, work, &spec);
      activations.run = [&](TapObserver& observer) { replay->run(tensors, 0, &observer, nullptr); };
    }
    LayerApplyContext ctx{spec,     layout,  i,
                          req.plan, tensors, records,
                          warnings, quant,   calibrated ? &activations : nullptr,
                          &out_spec};
    run_steps(steps, ctx, &result.timings, req.observer);
    if (golden) {
      const GoldenLayer g = golden->record(i, tensors, quant, records);
      if (!g.linears.empty())
        write_golden_layer((partial / "verify" / golden_file_name(i)).string(), g);
    }
    add_unchanged_records(tensors, &records);
    all_records.insert(all_records.end(), records.begin(), records.end());
    for (const auto& w : warnings) result.warnings.push_back(fmt::format("layer {}: {}", i, w));
    if (write_layer_shards(i, tensors, quant, &state, &model_shards, &quant_shards)) {
      save_state();
      result.written_layers += 1;
    } else {
      result.resumed_layers += 1;
    }
    // The next layer's inputs: this layer as compressed, on the calibration inputs.
    if (calibrated && i + 1 < spec.num_layers) {
      ActivationBuffer next =
          next_layer_inputs(*replay, tensors, quant, spec, calib_ids, req.streaming);
      replay.reset();
      *current = std::move(next);
    }
    activations.run = nullptr;
    for (const auto& t : expected) store.release(t.name);
    result.layer_seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
};

}  // namespace

CompressionPlan run_decide(const std::string& model_dir, const std::vector<PassInstance>& passes,
                           const std::string& pipeline, const std::string& stats_path,
                           std::vector<std::string>* log, const DecideRequest& data) {
  const ModelSpec spec = load_model_spec(model_dir);
  const WeightStore store(model_dir);
  const ExpertLayout layout =
      detect_expert_layout(spec, [&](const std::string& n) { return store.contains(n); });
  std::optional<StatsStore> stats;
  if (!stats_path.empty()) stats.emplace(StatsStore::open(stats_path));
  const std::vector<ExpectedTensor> tensors = expected_tensors(spec, layout);
  std::vector<std::string> notes;
  const ModelFingerprints fingerprints = model_fingerprints(store, spec, layout);
  DecideContext ctx{
      spec, store, layout, stats ? &*stats : nullptr, tensors, notes, fingerprints.upstream};
  const std::vector<std::unique_ptr<Pass>> instances = make_passes(passes);
  bool needs_model = false;
  for (const auto& pass : instances) needs_model = needs_model || pass->decide_needs_model();
  std::optional<CausalLM> model;
  std::optional<CalibrationSet> calib;
  std::optional<DecideModel> decide_model;
  if (needs_model) {
    if (!data.calibration) {
      throw ConfigError(
          "", "calibration",
          "naee and diep run the model on calibration data to decide: add a calibration section");
    }
    model.emplace(model_dir, data.forward);
    const Tokenizer tokenizer = Tokenizer::from_model_dir(model_dir);
    calib =
        build_calibration_set(*data.calibration, tokenizer,
                              file_fingerprint((fs::path(model_dir) / "tokenizer.json").string()));
    decide_model.emplace(DecideModel{*model, *calib, data.streaming});
    ctx.model = &*decide_model;
  }
  CompressionPlan plan;
  plan.pipeline = pipeline;
  plan.model = model_dir;
  plan.weights_fingerprint = fingerprints.weights;
  for (size_t p = 0; p < instances.size(); ++p) {
    try {
      instances[p]->decide(ctx, plan);
    } catch (const Error& e) {
      rethrow_with_context(e, passes[p].name + ", decide");
    }
  }
  if (log) *log = notes;
  return plan;
}

ApplyResult run_apply(const ApplyRequest& req,
                      const std::function<void(int64_t, int64_t)>& progress) {
  ApplyResult result;
  const fs::path out(req.out_dir), partial(req.out_dir + ".partial");
  if (fs::exists(out)) {
    if (!req.force)
      throw ConfigError(req.out_dir, "", "the output directory exists; use --force to replace it");
  }
  const ModelSpec spec = load_model_spec(req.model_dir);
  const WeightStore store(req.model_dir);
  const ExpertLayout layout =
      detect_expert_layout(spec, [&](const std::string& n) { return store.contains(n); });

  validate_plan(req.plan, spec, layout);  // before anything is written
  const std::string weights_fp =
      req.weights_fingerprint.empty() ? weights_fingerprint(store) : req.weights_fingerprint;
  const std::string plan_text = req.plan.to_json().dump(2) + "\n";
  Sha256 plan_sha;
  plan_sha.update(plan_text);
  // Passes that need the layers' inputs get them streamed (calibration set embedded once).
  const std::vector<std::unique_ptr<Pass>> passes = make_passes(req.passes);
  const bool needs_activations = apply_needs_activations(req, passes);
  const std::optional<CalibrationSet> calib =
      needs_activations ? std::optional<CalibrationSet>(apply_calibration(req)) : std::nullopt;
  ResumeState state{req.pipeline,
                    weights_fp,
                    fingerprint_from_digest(plan_sha.finish()),
                    calib ? calib->fingerprint : "",
                    {},
                    {}};

  const fs::path state_path = partial / ".lathe" / "state.json";
  restore_resume_state(partial, spec.num_layers, req.fresh, &state);
  auto save_state = [&] {
    write_file_atomically(state_path.string(), state.to_json().dump(2) + "\n");
  };
  save_state();

  const std::vector<ApplyStep> steps = apply_steps(req, passes);
  result.timings.resize(steps.size());
  for (size_t p = 0; p < steps.size(); ++p) result.timings[p].name = steps[p].first;
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"lathe.pipeline", req.pipeline}, {"lathe.version", LATHE_VERSION}};
  CheckpointShards model_shards(partial / "model", spec.num_layers, metadata);
  CheckpointShards quant_shards(partial / "quant", spec.num_layers, metadata);
  std::vector<TensorRecord> all_records;

  // The output's spec (expert counts after surgery): what the compressed layers run as.
  const fs::path config_path = fs::path(req.model_dir) / "config.json";
  const nlohmann::json in_config =
      parse_json_strict(read_file(config_path.string()), config_path.string(), "");
  std::vector<std::string> ignored;
  const ModelSpec out_spec =
      parse_model_spec(output_config(in_config, spec, req.plan, &ignored), "output config.json");

  ApplyRun run{req,   spec,       out_spec,     layout,       store,       steps, partial,
               state, save_state, model_shards, quant_shards, all_records, result};
  run.start_calibration(calib);
  run.start_golden();
  const std::function<void(int64_t)> fault = fault_injection_from_env();
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    run.apply_layer(i);
    if (req.after_layer) req.after_layer(i);
    if (fault) fault(i);
    if (progress) progress(i, spec.num_layers);
  }

  write_last_shard(spec, layout, store, &model_shards,
                   &all_records);  // embedding, final norm, LM head

  // Config, tokenizer files, indexes, expert map, plan; then the manifest.
  const uint64_t total = write_model_files(req, spec, in_config, plan_text, partial, model_shards,
                                           quant_shards, &result.warnings);
  for (const auto& name : store.names()) result.bytes_before += store.info(name).nbytes();
  result.bytes_after = total;
  const nlohmann::json manifest =
      apply_manifest(req, spec, in_config, weights_fp, all_records, partial);
  write_file_atomically((partial / "lathe_manifest.json").string(), manifest.dump(2) + "\n");
  result.records = std::move(all_records);

  if (req.publish) publish_output(req.out_dir);
  return result;
}

void publish_output(const std::string& out_dir) {
  // The finished directory appears at its final name in one rename.
  const fs::path out(out_dir), partial(out_dir + ".partial");
  fs::remove_all(partial / ".lathe");
  if (fs::exists(out)) fs::remove_all(out);
  fs::rename(partial, out);
}

}  // namespace lathe
