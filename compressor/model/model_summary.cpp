#include "compressor/model/model_summary.h"

#include <algorithm>
#include <optional>
#include <sstream>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/model/weight_store.h"

namespace lathe {
namespace {

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

bool has_weight_files(const std::filesystem::path& dir) {
  return std::filesystem::exists(dir / "model.safetensors") ||
         std::filesystem::exists(dir / "model.safetensors.index.json");
}

/// Element size implied by config.json's declared dtype, for config-only estimates.
uint64_t declared_element_bytes(const std::string& torch_dtype) {
  if (torch_dtype == "float32") return 4;
  if (torch_dtype == "float64") return 8;
  return 2;  // bfloat16, float16, or undeclared: HF checkpoints are half precision by default
}

void add_tensor(ModelSummary* s, const ExpectedTensor& t, int64_t params, uint64_t bytes,
                const std::string& dtype) {
  const std::string key = category_key(category_of(t.role));
  s->params[key] += params;
  s->total_params += params;
  s->bytes_by_category[key] += bytes;
  s->bytes_by_dtype[dtype] += bytes;
  s->total_bytes += bytes;
  if (t.layer >= 0) {
    s->layers[t.layer].params += params;
    s->layers[t.layer].bytes += bytes;
    if (category_of(t.role) == Category::kRoutedExperts) {
      s->layers[t.layer].routed_params += params;
      s->layers[t.layer].routed_bytes += bytes;
    }
  }
}

/// Accounts the checkpoint's tensors against the expected list, failing on missing or misshapen
/// ones.
void account_weights(ModelSummary* s, const std::vector<ExpectedTensor>& expected,
                     const WeightStore& store, const SummaryOptions& options) {
  std::unordered_map<std::string, bool> known;
  for (const auto& t : expected) {
    known[t.name] = true;
    const TensorInfo& info = require_tensor(store, t.name, t.shape);
    add_tensor(s, t, info.numel(), info.nbytes(), dtype_name(info.dtype));
  }
  for (const auto& name : store.names()) {
    const TensorInfo& info = store.info(name);
    if (options.check_finite) {
      s->non_finite += store.count_non_finite(name);
      store.release(
          name);  // a whole-checkpoint scan must not stay resident (DESIGN.md "Memory model")
    }
    if (known.count(name)) continue;
    s->bytes_by_dtype[dtype_name(info.dtype)] += info.nbytes();
    s->total_bytes += info.nbytes();
    // A tied head stored anyway is the embedding again: bytes on disk, no parameters of its own.
    if (name == "lm_head.weight" && s->spec.tie_word_embeddings) continue;
    s->unrecognised.push_back(name);
    s->params["other"] += info.numel();
    s->total_params += info.numel();
  }
}

void account_config_only(ModelSummary* s, const std::vector<ExpectedTensor>& expected) {
  const uint64_t element = declared_element_bytes(s->spec.torch_dtype);
  const std::string dtype = element == 4                       ? "F32"
                            : element == 8                     ? "F64"
                            : s->spec.torch_dtype == "float16" ? "F16"
                                                               : "BF16";
  for (const auto& t : expected) {
    const int64_t n = numel_of(t.shape);
    add_tensor(s, t, n, static_cast<uint64_t>(n) * element, dtype);
  }
}

StreamingEstimate estimate_memory(const ModelSummary& s, const SummaryOptions& options) {
  StreamingEstimate m;
  const ModelSpec& spec = s.spec;
  // A layer while it runs (layer_weights.h): non-expert tensors converted to fp32, routed experts
  // left in their mapped pages and converted one at a time.
  auto working = [&](size_t i) {
    const LayerSummary& l = s.layers[i];
    const LayerSpec& ls = spec.layers[i];
    const uint64_t one_expert =
        ls.is_moe ? static_cast<uint64_t>(3 * ls.expert_intermediate * spec.hidden_size) * 4 : 0;
    return static_cast<uint64_t>(l.params - l.routed_params) * 4 + l.routed_bytes + one_expert;
  };
  for (size_t i = 0; i < s.layers.size(); ++i) {
    if (working(i) > working(m.largest_layer)) m.largest_layer = static_cast<int64_t>(i);
  }
  if (!s.layers.empty()) {
    m.largest_layer_bytes = s.layers[m.largest_layer].bytes;
    m.layer_working_bytes = working(m.largest_layer);
  }
  const uint64_t tokens = static_cast<uint64_t>(options.samples) * options.seq_len;
  m.activation_buffer_bytes = tokens * spec.hidden_size * 2;
  int64_t widest = 0;
  for (const auto& l : spec.layers) {
    widest = std::max({widest, l.dense_intermediate, l.expert_intermediate, l.shared_intermediate});
  }
  // gate, up and their product for one sequence, plus one head's T×T attention scores at a time.
  const uint64_t t = options.seq_len;
  m.forward_scratch_bytes = 4 * t * (3 * widest + 4 * spec.hidden_size + t);
  m.embedding_working_bytes = static_cast<uint64_t>(spec.vocab_size) * spec.hidden_size * 4;
  m.peak_bytes =
      m.activation_buffer_bytes +
      std::max(m.layer_working_bytes + m.forward_scratch_bytes, m.embedding_working_bytes);
  return m;
}

}  // namespace

ModelSummary summarize_model(const std::filesystem::path& model_dir,
                             const SummaryOptions& options) {
  if (!std::filesystem::is_directory(model_dir)) {
    throw ResourceError(model_dir.string(), "",
                        "not a model directory (expected config.json and *.safetensors)");
  }
  if (options.samples <= 0 || options.seq_len <= 0) {
    throw ConfigError("", options.samples <= 0 ? "samples" : "seq-len", "must be positive");
  }
  ModelSummary s;
  s.path = model_dir.string();
  s.spec = load_model_spec(model_dir);
  s.layers.resize(s.spec.num_layers);
  for (Category c : all_categories()) {
    s.params[category_key(c)] = 0;
    s.bytes_by_category[category_key(c)] = 0;
  }
  s.params["other"] = 0;
  s.has_weights = has_weight_files(model_dir);
  if (s.has_weights) {
    WeightStore store(model_dir.string());
    s.num_shards = store.shard_paths().size();
    s.layout =
        detect_expert_layout(s.spec, [&store](const std::string& n) { return store.contains(n); });
    account_weights(&s, expected_tensors(s.spec, s.layout), store, options);
    if (s.non_finite > 0) {
      throw DataError(store.path(), "",
                      std::to_string(s.non_finite) +
                          " NaN/Inf weight elements (run `lathe tensors` to locate)");
    }
  } else {
    account_config_only(&s, expected_tensors(s.spec, s.layout));
  }
  s.memory = estimate_memory(s, options);
  return s;
}

nlohmann::json summary_to_json(const ModelSummary& s) {
  using nlohmann::json;
  const ModelSpec& spec = s.spec;
  json experts = json::array(), layers = json::array();
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    const LayerSpec& l = spec.layers[i];
    experts.push_back(l.is_moe ? json(l.num_experts) : json(nullptr));
    layers.push_back({{"index", i},
                      {"kind", l.is_moe ? "moe" : "dense"},
                      {"experts", l.is_moe ? json(l.num_experts) : json(nullptr)},
                      {"top_k", l.top_k},
                      {"dense_intermediate", l.dense_intermediate},
                      {"expert_intermediate", l.expert_intermediate},
                      {"shared_experts", l.num_shared_experts},
                      {"shared_intermediate", l.shared_intermediate},
                      {"attention_window",
                       spec.attention_window(i) ? json(*spec.attention_window(i)) : json(nullptr)},
                      {"params", s.layers[i].params},
                      {"bytes", s.layers[i].bytes}});
  }
  json params = {{"total", s.total_params}};
  for (const auto& [k, v] : s.params) params[k] = v;
  const AttentionSpec& a = spec.attention;
  json out = {{"path", s.path},
              {"family", spec.model_type},
              {"weights", s.has_weights},
              {"num_layers", spec.num_layers},
              {"hidden_size", spec.hidden_size},
              {"vocab_size", spec.vocab_size},
              {"tie_word_embeddings", spec.tie_word_embeddings},
              {"attention",
               {{"kind", a.kind == AttentionKind::kMla ? "mla" : "gqa"},
                {"heads", a.num_heads},
                {"kv_heads", a.num_kv_heads},
                {"head_dim", a.head_dim}}},
              {"moe", spec.is_moe()},
              {"expert_layout", layout_name(s.layout)},
              {"experts_per_layer", experts},
              {"routing",
               {{"scoring", scoring_name(spec.routing.scoring)},
                {"renormalize", spec.routing.renormalize},
                {"scaling_factor", spec.routing.scaling_factor},
                {"selection_bias", spec.routing.selection_bias},
                {"groups", spec.routing.num_groups},
                {"topk_groups", spec.routing.topk_groups},
                {"shared_expert_gate", spec.routing.shared_expert_gate}}},
              {"layers", layers},
              {"params", params},
              {"bytes",
               {{"total", s.total_bytes},
                {"by_dtype", s.bytes_by_dtype},
                {"by_category", s.bytes_by_category}}},
              {"shards", s.num_shards},
              {"unrecognised_tensors", s.unrecognised},
              {"memory",
               {{"largest_layer", s.memory.largest_layer},
                {"largest_layer_bytes", s.memory.largest_layer_bytes},
                {"layer_working_bytes", s.memory.layer_working_bytes},
                {"activation_buffer_bytes", s.memory.activation_buffer_bytes},
                {"forward_scratch_bytes", s.memory.forward_scratch_bytes},
                {"embedding_working_bytes", s.memory.embedding_working_bytes},
                {"streaming_peak_bytes", s.memory.peak_bytes}}}};
  return out;
}

namespace {

std::string human_bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.1f} {}", v, units[u]);
}

std::string human_count(int64_t n) {
  if (n >= 1000000000) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1000000) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1000) return fmt::format("{:.1f}K", n / 1e3);
  return std::to_string(n);
}

}  // namespace

std::string summary_to_text(const ModelSummary& s) {
  const ModelSpec& spec = s.spec;
  std::ostringstream out;
  out << fmt::format("{}  ({}{}{})\n", s.path, spec.model_type,
                     spec.carved ? std::string(": carved ") + family_name(spec.family) : "",
                     s.has_weights ? "" : ", config only: figures from config.json");
  out << fmt::format("  layers {}  hidden {}  vocab {}  heads {}/{} kv  head_dim {}  {}\n",
                     spec.num_layers, spec.hidden_size, spec.vocab_size, spec.attention.num_heads,
                     spec.attention.num_kv_heads, spec.attention.head_dim,
                     spec.attention.kind == AttentionKind::kMla ? "MLA" : "GQA");
  if (spec.local_attention) {
    const auto sliding = std::count_if(spec.layers.begin(), spec.layers.end(),
                                       [](const LayerSpec& l) { return l.sliding_attention; });
    out << fmt::format(
        "  attention: window {} on {} of {} layers (RoPE base {:g}), full on the rest (base "
        "{:g})\n",
        spec.local_attention->window, sliding, spec.num_layers, spec.local_attention->rope.theta,
        spec.rope.theta);
  } else if (spec.attention.sliding_window) {
    out << fmt::format("  attention: window {} on every layer\n", *spec.attention.sliding_window);
  }
  if (spec.is_moe()) {
    const RoutingRule& r = spec.routing;
    out << fmt::format(
        "  MoE: experts stored {}; routing {} top-k{}{}{}\n", layout_name(s.layout),
        r.scoring == ScoringFunc::kCmoe ? "cmoe (|Wc x ⊙ act(Wg x)|, softmax, selection bias)"
                                        : scoring_name(r.scoring),
        r.renormalize ? ", renormalised" : "", r.selection_bias ? ", selection bias" : "",
        r.num_groups > 1 ? fmt::format(", {} of {} groups", r.topk_groups, r.num_groups) : "");
  }
  out << "  layer  kind   experts  top-k  ffn width  shared     params       bytes\n";
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    const LayerSpec& l = spec.layers[i];
    out << fmt::format("  {:>5}  {:<5}  {:>7}  {:>5}  {:>9}  {:>6}  {:>9}  {:>10}\n", i,
                       l.is_moe ? "moe" : "dense", l.is_moe ? std::to_string(l.num_experts) : "-",
                       l.is_moe ? std::to_string(l.top_k) : "-",
                       l.is_moe ? l.expert_intermediate : l.dense_intermediate,
                       l.shared_intermediate ? std::to_string(l.shared_intermediate) : "-",
                       human_count(s.layers[i].params), human_bytes(s.layers[i].bytes));
  }
  out << fmt::format("  parameters: {} total\n", human_count(s.total_params));
  for (const auto& [k, v] : s.params) {
    if (v)
      out << fmt::format("    {:<15} {:>10}  {:5.1f}%\n", k, human_count(v),
                         100.0 * v / std::max<int64_t>(1, s.total_params));
  }
  out << fmt::format("  bytes: {}", human_bytes(s.total_bytes));
  for (const auto& [k, v] : s.bytes_by_dtype) out << fmt::format("  {} {}", k, human_bytes(v));
  out << fmt::format(
      "\n  streaming run: peak ≈ {} (activation buffer {}, layer {} working set {})\n",
      human_bytes(s.memory.peak_bytes), human_bytes(s.memory.activation_buffer_bytes),
      s.memory.largest_layer, human_bytes(s.memory.layer_working_bytes));
  if (!s.unrecognised.empty()) {
    out << fmt::format(
        "  warning: {} tensors not in the {} architecture table (counted as other), e.g. {}\n",
        s.unrecognised.size(), spec.model_type, s.unrecognised.front());
  }
  return out.str();
}

}  // namespace lathe
