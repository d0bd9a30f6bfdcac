#include "export/export_source.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <regex>

#include <fmt/format.h>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_store.h"
#include "export/quant_sidecar.h"
#include "export/safetensors_writer.h"

namespace fs = std::filesystem;

namespace lathe {

namespace {

bool is_router(TensorRole role) {
  return role == TensorRole::kRouter || role == TensorRole::kSharedExpertGate;
}

std::string module_of(const std::string& weight_name) {
  static const std::string suffix = ".weight";
  if (weight_name.size() <= suffix.size() ||
      weight_name.compare(weight_name.size() - suffix.size(), suffix.size(), suffix) != 0) {
    throw InternalError(weight_name, "", "a linear weight's name must end in .weight");
  }
  return weight_name.substr(0, weight_name.size() - suffix.size());
}

/// The names of the tensors whose lathe_manifest.json record has sparsity pattern "2:4".
std::set<std::string> sparse24_tensors(const nlohmann::json& manifest) {
  std::set<std::string> out;
  if (!manifest.is_object() || !manifest.contains("tensors") || !manifest["tensors"].is_object())
    return out;
  for (const auto& [name, record] : manifest["tensors"].items()) {
    if (!record.is_object() || !record.contains("sparsity")) continue;
    const nlohmann::json& s = record["sparsity"];
    if (s.is_object() && s.contains("pattern") && s["pattern"] == "2:4") out.insert(name);
  }
  return out;
}

/// Rows [begin, begin + n) of a quantized weight (gate or up half of a fused gate_up).
QuantizedWeight rows_of(const QuantizedWeight& q, int64_t begin, int64_t n) {
  QuantizedWeight r;
  r.codes = q.codes.narrow(0, begin, n);
  r.scales = q.scales.narrow(0, begin, n);
  r.zeros = q.zeros.narrow(0, begin, n);
  r.spec = q.spec;
  return r;
}

}  // namespace

bool ExportLinear::permuted_groups() const {
  if (!quantized || !g_idx.defined()) return false;
  const int64_t in = g_idx.size(0), g = q.spec.group_size == -1 ? in : q.spec.group_size;
  const at::Tensor contiguous =
      at::arange(in, at::TensorOptions().dtype(at::kLong)).div(g, "floor");
  return !at::equal(g_idx.to(at::kLong), contiguous);
}

ExportSource::ExportSource(const fs::path& out_dir, const ExportSourceOptions& options)
    : out_dir_(out_dir), model_dir_(out_dir / "model") {
  const fs::path manifest = out_dir / "lathe_manifest.json";
  if (!fs::exists(manifest) || !fs::is_directory(model_dir_)) {
    throw ConfigError(out_dir.string(), "",
                      "not a lathe output directory (expected lathe_manifest.json and model/)");
  }
  const nlohmann::json m = parse_json_strict(read_file(manifest.string()), manifest.string(), "");
  if (m.is_object() && m.contains("pipeline") && m["pipeline"].is_string())
    pipeline_ = m["pipeline"].get<std::string>();
  sparse24_ = sparse24_tensors(m);
  const fs::path config = model_dir_ / "config.json";
  config_ = parse_json_strict(read_file(config.string()), config.string(), "");
  model_spec_ = load_model_spec(model_dir_);
  spec_ = model_spec_;
  padding_ =
      plan_expert_padding(model_spec_, options.pad_experts, options.target, out_dir.string());
  if (!padding_.empty()) {
    int64_t most = 0;
    for (const auto& l : spec_.layers) most = std::max(most, l.num_experts);
    for (auto& l : spec_.layers) {
      if (l.is_moe) l.num_experts = most;
    }
    std::vector<int64_t> per_layer;
    for (const auto& l : spec_.layers) per_layer.push_back(l.is_moe ? most : 0);
    write_expert_counts(config_, spec_, per_layer);
    // A group of dummies around one real expert would hide it (FORMATS.md §6).
    const RoutingRule& r = model_spec_.routing;
    if (r.num_groups > 1 && r.topk_groups < r.num_groups) {
      warnings_.push_back(fmt::format(
          "padding turned group-limited routing off (n_group {}, topk_group {} → 1, 1): "
          "the export routes differently from OUT",
          r.num_groups, r.topk_groups));
    }
    spec_.routing.num_groups = spec_.routing.topk_groups = 1;
    if (config_.contains("n_group")) config_["n_group"] = 1;
    if (config_.contains("topk_group")) config_["topk_group"] = 1;
  }
  store_ = std::make_unique<WeightStore>(model_dir_.string());
  quant_ = open_quant_sidecar(out_dir.string());
  if (!quant_ && options.require_quant && !(options.allow_sparse24 && !sparse24_.empty())) {
    throw ConfigError(out_dir.string(), "quant",
                      options.allow_sparse24
                          ? "neither quantized tensors (quant/ is missing) nor 2:4-sparse ones: "
                            "the compressed-tensors export needs a quantizing pass (rtn, gptq, "
                            "smoothquant) or pruning with pattern 2:4 (magnitude, wanda, sparsegpt)"
                          : "no quantized tensors (quant/ is missing): the packed exports need a "
                            "quantizing pass (rtn, gptq)");
  }
  layout_ = detect_expert_layout(model_spec_,
                                 [this](const std::string& n) { return store_->contains(n); });
  for (const auto& t : expected_tensors(model_spec_, layout_)) {
    if (t.role == TensorRole::kEmbed) model_dtype_ = to_scalar_type(store_->info(t.name).dtype);
  }
}

ExportSource::~ExportSource() = default;

ExportLayer ExportSource::layer(int64_t i) const {
  ExportLayer out;
  // Per-expert names of this layer, for splitting fused tensors.
  std::map<std::pair<TensorRole, int64_t>, std::string> per_expert;
  if (layout_ == ExpertLayout::kFused) {
    for (const auto& t : expected_layer_tensors(model_spec_, ExpertLayout::kPerExpert, i)) {
      per_expert[{t.role, t.expert}] = t.name;
    }
  }
  for (const auto& t : expected_layer_tensors(model_spec_, layout_, i)) {
    require_tensor(*store_, t.name, t.shape);
    const at::Tensor value = load_tensor(*store_, t.name);
    if (!is_quantizable(t.role) && !is_router(t.role)) {
      out.others.emplace_back(t.name, value);
      continue;
    }
    const bool fused = t.role == TensorRole::kExpertsGateUp || t.role == TensorRole::kExpertsDown;
    const bool quantized = quant_ && quant_->has(t.name);
    const QuantRecord rec = quantized ? quant_->record(t.name) : QuantRecord{};
    if (!fused) {
      ExportLinear l;
      l.module = module_of(t.name);
      l.role = t.role;
      l.router = is_router(t.role);
      l.weight = value;
      l.sparse24 = !l.router && value.dim() == 2 && sparse24_.count(t.name);
      l.quantized = quantized;
      if (quantized) {
        l.q = rec.slice(-1, &l.g_idx);
        l.act_bits = rec.act_bits;
      }
      out.linears.push_back(std::move(l));
      continue;
    }
    const int64_t experts = value.size(0), rows = value.size(1);
    for (int64_t e = 0; e < experts; ++e) {
      QuantizedWeight qe;
      at::Tensor ge;
      if (quantized) qe = rec.slice(e, &ge);
      struct Part {
        TensorRole role;
        int64_t begin, n;
      };
      const bool gate_up = t.role == TensorRole::kExpertsGateUp;
      const Part split[2] = {{TensorRole::kExpertGate, 0, rows / 2},
                             {TensorRole::kExpertUp, rows / 2, rows / 2}};
      const Part whole[1] = {{TensorRole::kExpertDown, 0, rows}};
      for (const Part& p : gate_up ? at::ArrayRef<Part>(split) : at::ArrayRef<Part>(whole)) {
        auto name = per_expert.find({p.role, e});
        if (name == per_expert.end())
          throw InternalError(t.name, "", fmt::format("no per-expert name for expert {}", e));
        ExportLinear l;
        l.module = module_of(name->second);
        l.role = p.role;
        l.weight = value.select(0, e).narrow(0, p.begin, p.n);
        l.sparse24 = sparse24_.count(t.name) > 0;
        l.quantized = quantized;
        if (quantized) {
          l.q = rows_of(qe, p.begin, p.n);
          l.g_idx = ge;
          l.act_bits = rec.act_bits;
        }
        out.linears.push_back(std::move(l));
      }
    }
  }
  if (padding_.count(i)) pad_layer(i, &out);
  return out;
}

namespace {

/// A dummy expert's linear shaped like `like` (a real expert's, same role): zero weight; when
/// `like` is quantized, the same setting and g_idx with every code at the zero point and unit
/// scales, so it dequantizes to exact zeros and packs like its layer's real experts.
ExportLinear dummy_like(const ExportLinear& like, const std::string& module) {
  ExportLinear d;
  d.module = module;
  d.role = like.role;
  d.weight = at::zeros(like.weight.sizes(), like.weight.options());
  d.sparse24 = like.sparse24;  // zeros are 2:4 (the mask keeps each group's first two)
  d.quantized = like.quantized;
  d.act_bits = like.act_bits;
  if (like.quantized) {
    const int64_t zero = int64_t{1} << (like.q.spec.bits - 1);
    d.q.spec = like.q.spec;
    d.q.codes = at::full(like.q.codes.sizes(), zero, like.q.codes.options());
    d.q.scales = at::ones(like.q.scales.sizes(), like.q.scales.options());
    d.q.zeros = at::full(like.q.zeros.sizes(), zero, like.q.zeros.options());
    d.g_idx = like.g_idx.clone();
  }
  return d;
}

}  // namespace

void ExportSource::pad_layer(int64_t i, ExportLayer* layer) const {
  const int64_t real = model_spec_.layers[i].num_experts, dummies = padding_.at(i);
  std::map<TensorRole, const ExportLinear*> like;  // the first (real) expert's linear per role
  for (const ExportLinear& l : layer->linears) {
    if (!like.count(l.role)) like[l.role] = &l;
  }
  std::vector<ExportLinear> added;
  for (const auto& t : expected_layer_tensors(spec_, ExpertLayout::kPerExpert, i)) {
    if (t.expert < real) continue;
    auto it = like.find(t.role);
    if (it == like.end())
      throw InternalError(t.name, "", "no real expert to shape a dummy expert after");
    added.push_back(dummy_like(*it->second, module_of(t.name)));
  }
  for (ExportLinear& l : layer->linears) {
    if (l.role != TensorRole::kRouter) continue;
    const at::Tensor rows = at::zeros({dummies, l.weight.size(1)}, l.weight.options());
    l.weight = at::cat({l.weight, rows}, 0);
  }
  for (auto& l : added) layer->linears.push_back(std::move(l));
  static const std::string bias = "e_score_correction_bias";
  for (auto& [name, value] : layer->others) {
    if (name.size() < bias.size() ||
        name.compare(name.size() - bias.size(), bias.size(), bias) != 0)
      continue;
    value = at::cat({value, at::full({dummies}, -1e4, value.options())}, 0);
  }
}

std::vector<std::pair<std::string, at::Tensor>> ExportSource::head_tensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& t : expected_tensors(model_spec_, layout_)) {
    if (t.layer >= 0) continue;
    require_tensor(*store_, t.name, t.shape);
    out.emplace_back(t.name, load_tensor(*store_, t.name));
  }
  return out;
}

void ExportSource::release_layer(int64_t i) const {
  std::vector<std::string> names;
  for (const auto& t : expected_layer_tensors(model_spec_, layout_, i)) {
    if (store_->contains(t.name)) store_->release(t.name);
    names.push_back(t.name);
  }
  if (quant_) quant_->release(names);
}

std::vector<std::string> ExportSource::all_linear_modules() const {
  std::vector<std::string> out;
  for (const auto& t : expected_tensors(spec_, ExpertLayout::kPerExpert)) {
    if (is_quantizable(t.role) || is_router(t.role)) out.push_back(module_of(t.name));
  }
  return out;
}

std::string escape_regex(const std::string& name) {
  std::string out;
  for (char c : name) {
    if (std::string("\\^$.|?*+()[]{}").find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

namespace {

/// The generalisations of a module name: for every subset of its numeric path components (layer,
/// expert), the escaped name with those components replaced by \d+. Most general first; the last
/// is the name itself.
std::vector<std::string> generalisations(const std::string& name) {
  std::vector<std::string> parts;
  std::vector<size_t> numeric;
  size_t start = 0;
  while (true) {
    const size_t dot = name.find('.', start);
    parts.push_back(name.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    const std::string& part = parts.back();
    if (!part.empty() &&
        std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      numeric.push_back(parts.size() - 1);
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  if (numeric.size() > 4) numeric.resize(4);     // bounded: 2^4 patterns per name
  std::vector<std::pair<int, std::string>> out;  // {generalised components, pattern}
  for (uint32_t mask = 0; mask < (1u << numeric.size()); ++mask) {
    std::vector<std::string> p = parts;
    int count = 0;
    for (size_t k = 0; k < numeric.size(); ++k) {
      if (mask & (1u << k)) p[numeric[k]] = "\\d+", count += 1;
    }
    std::string text;
    for (size_t k = 0; k < p.size(); ++k) {
      text += (k ? "\\." : "") + (p[k] == "\\d+" ? p[k] : escape_regex(p[k]));
    }
    out.emplace_back(count, text);
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> patterns;
  for (auto& [c, t] : out) patterns.push_back(std::move(t));
  return patterns;
}

}  // namespace

std::vector<std::string> module_patterns(const std::vector<std::string>& all,
                                         const std::set<std::string>& selected) {
  // A pattern may stand for its members only when every name of `all` it matches is selected, so
  // patterns of disjoint selections never match a common name.
  std::map<std::string, std::pair<int64_t, int64_t>> members;  // pattern → {names, selected names}
  for (const auto& name : all) {
    for (const auto& p : generalisations(name)) {
      auto& m = members[p];
      m.first += 1;
      m.second += selected.count(name) ? 1 : 0;
    }
  }
  std::set<std::string> out;
  for (const auto& name : selected) {
    const std::vector<std::string> candidates = generalisations(name);
    std::string chosen = candidates.back();
    for (const auto& p : candidates) {
      auto it = members.find(p);
      if (it != members.end() && it->second.first == it->second.second && it->second.first > 1) {
        chosen = p;
        break;
      }
    }
    out.insert(chosen + "$");
  }
  return {out.begin(), out.end()};
}

void ShardTensors::add(const std::string& name, const at::Tensor& value) {
  names_.push_back(name);
  bytes_.push_back(tensor_bytes(name, value, &values_));
}

uint64_t write_export_shards(const ExportSource& src, const fs::path& dir,
                             const std::map<std::string, std::string>& metadata,
                             const std::function<void(int64_t, ShardTensors*)>& write_layer) {
  CheckpointShards shards(dir, src.spec().num_layers, metadata);
  for (int64_t i = 0; i < src.spec().num_layers; ++i) {
    ShardTensors shard;
    write_layer(i, &shard);
    shards.write(i, shard.bytes());
    src.release_layer(i);
  }
  ShardTensors last;
  for (const auto& [name, value] : src.head_tensors()) last.add(name, value);
  shards.write(-1, last.bytes());
  shards.write_index({{"total_size", shards.tensor_bytes()}});
  return shards.tensor_bytes();
}

}  // namespace lathe

namespace lathe {

std::vector<std::string> fused_setting_warnings(
    const std::map<std::string, std::string>& setting_by_module) {
  static const std::regex expert(R"(\.experts\.\d+\.[A-Za-z0-9_]+$)");
  static const std::regex qkv(R"(\.(q_proj|k_proj|v_proj)$)");
  static const std::regex gate_up(R"(\.(gate_proj|up_proj)$)");
  static const std::regex w13(R"(\.(w1|w3)$)");
  std::map<std::string, std::set<std::string>> sets;
  for (const auto& [module, setting] : setting_by_module) {
    std::string key;
    if (std::regex_search(module, expert)) {
      key = std::regex_replace(module, expert, ".experts.*");
    } else if (std::regex_search(module, qkv)) {
      key = std::regex_replace(module, qkv, ".{q,k,v}_proj");
    } else if (std::regex_search(module, gate_up)) {
      key = std::regex_replace(module, gate_up, ".{gate,up}_proj");
    } else if (std::regex_search(module, w13)) {
      key = std::regex_replace(module, w13, ".{w1,w3}");
    } else {
      continue;
    }
    sets[key].insert(setting);
  }
  std::vector<std::string> out;
  for (const auto& [key, settings] : sets) {
    if (settings.size() < 2) continue;
    std::string list;
    for (const auto& s : settings) list += (list.empty() ? "" : ", ") + s;
    out.push_back(fmt::format(
        "{}: vLLM loads these as one fused layer with one setting, but they differ ({})", key,
        list));
  }
  return out;
}

bool exact_in(const at::Tensor& values, at::ScalarType dtype) {
  const at::Tensor f = values.to(at::kFloat);
  return at::equal(f.to(dtype).to(at::kFloat), f);
}

}  // namespace lathe
