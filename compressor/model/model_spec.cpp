#include "compressor/model/model_spec.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/json_reader.h"
#include "compressor/common/strict_json.h"

namespace lathe {
namespace {

using nlohmann::json;

struct FamilyEntry {
  Family family;
  const char* name;
  /// Field defaults of the transformers 5.x config class, for the fields lathe reads. HF omits a
  /// field from config.json when it equals the class default, so these are part of the format.
  const char* defaults;
};

// Checked against transformers by tests/python/test_model_spec_defaults.py.
const FamilyEntry kFamilies[] = {
    {Family::kLlama, "llama", R"({"vocab_size":32000,"hidden_size":4096,"intermediate_size":11008,
      "num_hidden_layers":32,"num_attention_heads":32,"max_position_embeddings":2048,
      "rms_norm_eps":1e-6,"tie_word_embeddings":false,"rope_theta":10000.0,"attention_bias":false})"},
    {Family::kMistral, "mistral",
     R"({"vocab_size":32000,"hidden_size":4096,"intermediate_size":14336,
      "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"head_dim":128,
      "max_position_embeddings":131072,"rms_norm_eps":1e-6,"tie_word_embeddings":false,
      "rope_theta":10000.0,"sliding_window":4096})"},
    {Family::kQwen2, "qwen2", R"({"vocab_size":151936,"hidden_size":4096,"intermediate_size":22016,
      "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,
      "max_position_embeddings":32768,"rms_norm_eps":1e-6,"tie_word_embeddings":false,
      "rope_theta":10000.0,"use_sliding_window":false})"},
    {Family::kMixtral, "mixtral",
     R"({"vocab_size":32000,"hidden_size":4096,"intermediate_size":14336,
      "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,
      "max_position_embeddings":131072,"rms_norm_eps":1e-5,"tie_word_embeddings":false,
      "rope_theta":1000000.0,"num_local_experts":8,"num_experts_per_tok":2})"},
    {Family::kQwen2Moe, "qwen2_moe",
     R"({"vocab_size":151936,"hidden_size":2048,"intermediate_size":5632,
      "num_hidden_layers":24,"num_attention_heads":16,"num_key_value_heads":16,
      "max_position_embeddings":32768,"rms_norm_eps":1e-6,"tie_word_embeddings":false,
      "rope_theta":10000.0,"use_sliding_window":false,"num_experts":60,"num_experts_per_tok":4,
      "moe_intermediate_size":1408,"shared_expert_intermediate_size":5632,"norm_topk_prob":false,
      "decoder_sparse_step":1,"mlp_only_layers":[],"qkv_bias":true})"},
    {Family::kQwen3Moe, "qwen3_moe",
     R"({"vocab_size":151936,"hidden_size":2048,"intermediate_size":6144,
      "num_hidden_layers":24,"num_attention_heads":32,"num_key_value_heads":4,
      "max_position_embeddings":32768,"rms_norm_eps":1e-6,"tie_word_embeddings":false,
      "rope_theta":10000.0,"attention_bias":false,"use_sliding_window":false,"num_experts":128,
      "num_experts_per_tok":8,"moe_intermediate_size":768,"norm_topk_prob":false,
      "decoder_sparse_step":1,"mlp_only_layers":[]})"},
    {Family::kOlmoe, "olmoe", R"({"vocab_size":50304,"hidden_size":2048,"intermediate_size":2048,
      "num_hidden_layers":16,"num_attention_heads":16,"max_position_embeddings":4096,
      "rms_norm_eps":1e-5,"tie_word_embeddings":false,"rope_theta":10000.0,"attention_bias":false,
      "num_experts":64,"num_experts_per_tok":8,"norm_topk_prob":false})"},
    {Family::kDeepseekV2, "deepseek_v2", R"({"vocab_size":102400,"hidden_size":4096,
      "intermediate_size":11008,"num_hidden_layers":32,"num_attention_heads":32,
      "max_position_embeddings":2048,"rms_norm_eps":1e-6,"tie_word_embeddings":false,
      "rope_theta":10000.0,"attention_bias":false,"n_routed_experts":64,"moe_intermediate_size":1407,
      "n_shared_experts":2,"norm_topk_prob":false,"first_k_dense_replace":0,
      "routed_scaling_factor":1.0,"topk_method":"greedy","scoring_func":"softmax",
      "q_lora_rank":1536,"kv_lora_rank":512,"qk_nope_head_dim":128,"qk_rope_head_dim":64,
      "v_head_dim":128})"},
    {Family::kDeepseekV3, "deepseek_v3", R"({"vocab_size":129280,"hidden_size":7168,
      "intermediate_size":18432,"num_hidden_layers":61,"num_attention_heads":128,
      "max_position_embeddings":4096,"rms_norm_eps":1e-6,"tie_word_embeddings":false,
      "rope_theta":10000.0,"attention_bias":false,"n_routed_experts":256,"num_experts_per_tok":8,
      "moe_intermediate_size":2048,"n_shared_experts":1,"norm_topk_prob":true,
      "first_k_dense_replace":3,"routed_scaling_factor":2.5,"n_group":8,"topk_group":4,
      "topk_method":"noaux_tc","scoring_func":"sigmoid","q_lora_rank":1536,"kv_lora_rank":512,
      "qk_nope_head_dim":128,"qk_rope_head_dim":64,"v_head_dim":128})"},
    // No rope_theta: Gemma 3's two bases have their own defaults (gemma3_ropes).
    {Family::kGemma3Text, "gemma3_text", R"({"vocab_size":262208,"hidden_size":2304,
      "intermediate_size":9216,"num_hidden_layers":26,"num_attention_heads":8,"num_key_value_heads":4,
      "head_dim":256,"hidden_activation":"gelu_pytorch_tanh","max_position_embeddings":131072,
      "rms_norm_eps":1e-6,"tie_word_embeddings":true,"attention_bias":false,"query_pre_attn_scalar":256,
      "sliding_window":4096,"use_bidirectional_attention":false})"},
};

const FamilyEntry& family_entry(Family family) {
  for (const auto& entry : kFamilies) {
    if (entry.family == family) return entry;
  }
  throw InternalError("", "family", "family missing from the family table");
}

bool is_deepseek(Family f) {
  return f == Family::kDeepseekV2 || f == Family::kDeepseekV3;
}

int64_t positive(const JsonReader& fields, const char* name, int64_t value) {
  if (value <= 0) fields.fail(name, "must be positive, found " + std::to_string(value));
  return value;
}

/// The config overlaid on the family defaults: a field the config sets (even to null) wins.
json merged_with_defaults(const json& config, const FamilyEntry& entry) {
  json merged = json::parse(entry.defaults);
  for (auto it = config.begin(); it != config.end(); ++it) merged[it.key()] = it.value();
  return merged;
}

/// RoPE from one parameters object (v5 `rope_parameters`, v4 `rope_scaling`, or one layer type's
/// entry); `theta` applies when the object has no rope_theta. `path` names the object in errors.
RopeSpec rope_from_object(const json& object, const std::string& file, const std::string& path,
                          double theta) {
  JsonReader p(object, file, path, ErrorKind::kConfig);
  RopeSpec rope;
  rope.theta = p.number_or({"rope_theta"}, theta);
  rope.scaling_type = p.string_or({"rope_type", "type"}, "default");
  rope.factor = p.number_or({"factor"}, 1.0);
  rope.parameters_json = object.dump();
  if (!(rope.theta > 0)) p.fail("rope_theta", "must be positive");
  return rope;
}

RopeSpec parse_rope(const JsonReader& fields) {
  // v5 writes rope_parameters {rope_type, rope_theta, ...}; v4 writes rope_theta + rope_scaling.
  const auto params = fields.object_at({"rope_parameters"});
  const auto scaling = fields.object_at({"rope_scaling"});
  const double theta = fields.number_or({"rope_theta"}, 10000.0);
  if (params) return rope_from_object(params->value(), fields.file(), params->path(), theta);
  if (scaling) return rope_from_object(scaling->value(), fields.file(), scaling->path(), theta);
  if (!(theta > 0)) fields.fail("rope_theta", "must be positive");
  RopeSpec rope;
  rope.theta = theta;
  return rope;
}

AttentionSpec parse_attention(const JsonReader& f, Family family, int64_t hidden) {
  AttentionSpec a;
  a.num_heads = positive(f, "num_attention_heads", f.int_at({"num_attention_heads"}));
  a.num_kv_heads =
      positive(f, "num_key_value_heads", f.int_or({"num_key_value_heads"}, a.num_heads));
  if (a.num_heads % a.num_kv_heads != 0) {
    f.fail("num_key_value_heads", std::to_string(a.num_kv_heads) +
                                      " must divide num_attention_heads " +
                                      std::to_string(a.num_heads));
  }
  if (is_deepseek(family)) {
    a.kind = AttentionKind::kMla;
    a.q_lora_rank = f.int_or({"q_lora_rank"}, 0);
    a.kv_lora_rank = positive(f, "kv_lora_rank", f.int_at({"kv_lora_rank"}));
    a.qk_nope_head_dim = positive(f, "qk_nope_head_dim", f.int_at({"qk_nope_head_dim"}));
    a.qk_rope_head_dim = positive(f, "qk_rope_head_dim", f.int_at({"qk_rope_head_dim"}));
    a.v_head_dim = positive(f, "v_head_dim", f.int_at({"v_head_dim"}));
    if (a.q_lora_rank < 0) f.fail("q_lora_rank", "must be positive or null");
    a.head_dim = a.qk_nope_head_dim + a.qk_rope_head_dim;
    // V2 always rotates interleaved pairs; V3 does unless rope_interleave is false.
    a.rope_interleave = family == Family::kDeepseekV2 || f.bool_or({"rope_interleave"}, true);
    a.qkv_bias = a.o_bias = f.bool_or({"attention_bias"}, false);
    return a;
  }
  if (!f.has({"head_dim"}) && hidden % a.num_heads != 0) {
    f.fail("num_attention_heads", std::to_string(a.num_heads) + " must divide hidden_size " +
                                      std::to_string(hidden) + " when head_dim is not given");
  }
  a.head_dim = positive(f, "head_dim", f.int_or({"head_dim"}, hidden / a.num_heads));
  switch (family) {
    case Family::kQwen2: a.qkv_bias = true; break;
    case Family::kQwen2Moe: a.qkv_bias = f.bool_or({"qkv_bias"}, true); break;
    case Family::kMixtral: break;
    default: a.qkv_bias = a.o_bias = f.bool_or({"attention_bias"}, false);
  }
  a.qk_norm_per_head = family == Family::kQwen3Moe || family == Family::kGemma3Text;
  a.qk_norm_full = family == Family::kOlmoe;
  if (f.has({"clip_qkv"})) a.clip_qkv = f.number_or({"clip_qkv"}, 0.0);
  if (family == Family::kGemma3Text) return a;  // its window applies per layer (parse_gemma3)
  const bool window_flag = f.bool_or({"use_sliding_window"}, true);
  auto window = f.optional_int({"sliding_window"});
  if (window && *window > 0 && window_flag) a.sliding_window = window;
  return a;
}

RoutingRule parse_routing(const JsonReader& f, Family family) {
  RoutingRule r;
  // transformers' DeepSeek-V2 router never renormalises (it ignores norm_topk_prob), and lathe
  // follows transformers, the parity reference; every released V2 checkpoint sets it false anyway.
  r.renormalize = family == Family::kMixtral ||
                  (family != Family::kDeepseekV2 && f.bool_or({"norm_topk_prob"}, false));
  r.shared_expert_gate = family == Family::kQwen2Moe;
  if (!is_deepseek(family)) return r;
  const std::string scoring = f.string_or({"scoring_func"}, "softmax");
  if (scoring == "sigmoid") {
    r.scoring = ScoringFunc::kSigmoid;
  } else if (scoring != "softmax") {
    f.fail("scoring_func", "expected \"softmax\" or \"sigmoid\", found \"" + scoring + "\"");
  }
  r.scaling_factor = f.number_or({"routed_scaling_factor"}, 1.0);
  const std::string method = f.string_or({"topk_method"}, "greedy");
  if (method == "noaux_tc") {
    r.selection_bias = true;
    r.group_score = GroupScore::kTop2Sum;
  } else if (method != "greedy" && method != "group_limited_greedy") {
    f.fail("topk_method",
           "expected greedy, group_limited_greedy or noaux_tc, found \"" + method + "\"");
  }
  if (method != "greedy") {
    r.num_groups = f.int_or({"n_group"}, 1);
    r.topk_groups = f.int_or({"topk_group"}, r.num_groups);
    if (r.num_groups < 1) f.fail("n_group", "must be at least 1");
    if (r.topk_groups < 1 || r.topk_groups > r.num_groups) {
      f.fail("topk_group", "must lie in [1, n_group=" + std::to_string(r.num_groups) + "], found " +
                               std::to_string(r.topk_groups));
    }
  }
  return r;
}

/// Whether layer i is MoE under the family's own rule (before any lathe per-layer override).
bool family_layer_is_moe(const JsonReader& f, Family family, int64_t i,
                         const std::vector<int64_t>& mlp_only) {
  switch (family) {
    case Family::kMixtral:
    case Family::kOlmoe: return true;
    case Family::kQwen2Moe:
    case Family::kQwen3Moe: {
      const int64_t step = positive(f, "decoder_sparse_step", f.int_or({"decoder_sparse_step"}, 1));
      const bool listed = std::find(mlp_only.begin(), mlp_only.end(), i) != mlp_only.end();
      return !listed && (i + 1) % step == 0;
    }
    case Family::kDeepseekV2:
    case Family::kDeepseekV3: {
      const int64_t freq = positive(f, "moe_layer_freq", f.int_or({"moe_layer_freq"}, 1));
      return i >= f.int_or({"first_k_dense_replace"}, 0) && i % freq == 0;
    }
    default: return false;
  }
}

/// Routed experts and width of one expert, per family field names.
void expert_fields(const JsonReader& f, Family family, int64_t* experts, int64_t* width) {
  const bool fused_width = family == Family::kMixtral || family == Family::kOlmoe;
  *width = fused_width ? f.int_at({"intermediate_size"}) : f.int_at({"moe_intermediate_size"});
  *experts = f.int_at({"num_local_experts", "num_experts", "n_routed_experts"});
  positive(f, fused_width ? "intermediate_size" : "moe_intermediate_size", *width);
}

LayerSpec moe_layer(const JsonReader& f, Family family, int64_t experts, int64_t width,
                    int64_t top_k) {
  LayerSpec layer;
  layer.is_moe = true;
  layer.num_experts = experts;
  layer.top_k = top_k;
  layer.expert_intermediate = width;
  if (family == Family::kQwen2Moe) {
    layer.shared_intermediate = f.int_or({"shared_expert_intermediate_size"}, 0);
    layer.num_shared_experts = layer.shared_intermediate > 0 ? 1 : 0;
  } else if (is_deepseek(family)) {
    layer.num_shared_experts = f.int_or({"n_shared_experts"}, 0);
    layer.shared_intermediate = layer.num_shared_experts * width;
  }
  return layer;
}

std::vector<LayerSpec> parse_layers(const JsonReader& f, Family family, int64_t num_layers) {
  const bool moe_family = family != Family::kLlama && family != Family::kMistral &&
                          family != Family::kQwen2 && family != Family::kGemma3Text;
  const std::vector<int64_t> mlp_only = f.int_list({"mlp_only_layers"});
  for (size_t i = 0; i < mlp_only.size(); ++i) {
    if (mlp_only[i] < 0 || mlp_only[i] >= num_layers) {
      f.fail("mlp_only_layers[" + std::to_string(i) + "]", "layer " + std::to_string(mlp_only[i]) +
                                                               " is outside [0, " +
                                                               std::to_string(num_layers) + ")");
    }
  }
  // lathe's own per-layer counts after non-uniform pruning (FORMATS.md §6).
  const std::vector<int64_t> per_layer = f.int_list({"num_experts_per_layer"});
  if (!per_layer.empty() && static_cast<int64_t>(per_layer.size()) != num_layers) {
    f.fail("num_experts_per_layer",
           "has " + std::to_string(per_layer.size()) +
               " entries, expected num_hidden_layers = " + std::to_string(num_layers));
  }
  int64_t experts = 0, width = 0, top_k = 0;
  if (moe_family) {
    expert_fields(f, family, &experts, &width);
    top_k = f.int_at({"num_experts_per_tok"});
  }
  std::vector<LayerSpec> layers;
  for (int64_t i = 0; i < num_layers; ++i) {
    const bool moe = moe_family && experts > 0 && family_layer_is_moe(f, family, i, mlp_only);
    int64_t count = experts;
    if (!per_layer.empty()) {
      count = per_layer[i];
      const std::string field = "num_experts_per_layer[" + std::to_string(i) + "]";
      if (!moe && count != 0) f.fail(field, "layer " + std::to_string(i) + " is dense: expected 0");
      if (moe && (count < top_k || count > experts)) {
        f.fail(field, std::to_string(count) + " experts: expected between num_experts_per_tok = " +
                          std::to_string(top_k) + " and " + std::to_string(experts));
      }
    }
    if (moe) {
      layers.push_back(moe_layer(f, family, count, width, top_k));
    } else {
      LayerSpec dense;
      dense.dense_intermediate = positive(f, "intermediate_size", f.int_at({"intermediate_size"}));
      layers.push_back(dense);
    }
  }
  return layers;
}

void validate_routing(const JsonReader& f, const ModelSpec& spec) {
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const LayerSpec& layer = spec.layers[i];
    if (!layer.is_moe) continue;
    if (layer.top_k < 1 || layer.top_k > layer.num_experts) {
      f.fail("num_experts_per_tok", std::to_string(layer.top_k) + " must lie in [1, " +
                                        std::to_string(layer.num_experts) + "] (experts of layer " +
                                        std::to_string(i) + ")");
    }
    const RoutingRule& r = spec.routing;
    if (r.num_groups > 1) {
      if (layer.num_experts % r.num_groups != 0) {
        f.fail("n_group", std::to_string(r.num_groups) + " groups must divide the " +
                              std::to_string(layer.num_experts) + " experts of layer " +
                              std::to_string(i));
      }
      if (layer.top_k > r.topk_groups * (layer.num_experts / r.num_groups)) {
        f.fail("topk_group", "the selected groups hold fewer experts than num_experts_per_tok");
      }
    }
  }
}

MlpActivation parse_activation(const JsonReader& f, const char* field, bool moe) {
  const std::string name = f.string_or({field}, "silu");
  // As transformers' ACT2FN: silu and swish are SiLU, gelu_pytorch_tanh gelu(approximate="tanh").
  MlpActivation act;
  if (name == "silu" || name == "swish") {
    act = MlpActivation::kSilu;
  } else if (name == "gelu_pytorch_tanh") {
    act = MlpActivation::kGeluTanh;
  } else if (name == "gelu") {
    act = MlpActivation::kGelu;
  } else {
    throw UnsupportedError(
        f.file(), field,
        "activation \"" + name + "\" is not supported (silu, gelu, gelu_pytorch_tanh are)");
  }
  // The routed-expert paths (statistics, golden vectors, kernels) compute SwiGLU only.
  if (moe && act != MlpActivation::kSilu) {
    throw UnsupportedError(
        f.file(), field, "MoE models with a \"" + name + "\" expert activation are not supported");
  }
  return act;
}

/// Gemma 3's layer pattern: true for "sliding_attention" layers. Without layer_types, transformers
/// makes every sliding_window_pattern-th layer (default 6) full and the others sliding.
std::vector<bool> gemma3_sliding_layers(const JsonReader& f, int64_t num_layers) {
  std::vector<bool> sliding;
  if (!f.has({"layer_types"})) {
    const int64_t pattern =
        positive(f, "sliding_window_pattern", f.int_or({"sliding_window_pattern"}, 6));
    for (int64_t i = 0; i < num_layers; ++i) sliding.push_back((i + 1) % pattern != 0);
    return sliding;
  }
  const std::vector<std::string> types = f.string_list({"layer_types"});
  if (static_cast<int64_t>(types.size()) != num_layers) {
    f.fail("layer_types",
           "has " + std::to_string(types.size()) +
               " entries, expected num_hidden_layers = " + std::to_string(num_layers));
  }
  for (size_t i = 0; i < types.size(); ++i) {
    if (types[i] != "sliding_attention" && types[i] != "full_attention") {
      f.fail("layer_types[" + std::to_string(i) + "]",
             "expected \"sliding_attention\" or \"full_attention\", found \"" + types[i] + "\"");
    }
    sliding.push_back(types[i] == "sliding_attention");
  }
  return sliding;
}

/// Gemma 3's RoPE per layer type (transformers' Gemma3TextConfig.convert_rope_params_to_dict):
/// rope_parameters.{full_attention, sliding_attention} (v5), else the older rope_theta (+
/// rope_scaling) for full layers and rope_local_base_freq for sliding ones; bases default to 1e6
/// and 1e4.
std::pair<RopeSpec, RopeSpec> gemma3_ropes(const JsonReader& f) {
  json full = json::object(), local = json::object();
  if (const auto p = f.object_at({"rope_parameters"})) {
    const auto full_params = p->object_at({"full_attention"});
    const auto local_params = p->object_at({"sliding_attention"});
    if (!full_params && !local_params) {
      f.fail("rope_parameters",
             "expected one entry per layer type (full_attention, sliding_attention)");
    }
    if (full_params) full = full_params->value();
    if (local_params) local = local_params->value();
  }
  if (const auto scaling = f.object_at({"rope_scaling"})) full.update(scaling->value());
  return {rope_from_object(full, f.file(), "rope_parameters.full_attention",
                           f.number_or({"rope_theta"}, 1e6)),
          rope_from_object(local, f.file(), "rope_parameters.sliding_attention",
                           f.number_or({"rope_local_base_freq"}, 1e4))};
}

/// Gemma 3 text (transformers' Gemma3TextModel): (1 + w) sandwich norms, scaled embedding,
/// query_pre_attn_scalar, and sliding layers with their window and local RoPE.
void parse_gemma3(const JsonReader& f, ModelSpec* spec) {
  for (const char* field : {"attn_logit_softcapping", "final_logit_softcapping"}) {
    if (f.has({field}))
      throw UnsupportedError(f.file(), field,
                             "logit soft-capping is not implemented (Gemma 3 sets it to null)");
  }
  if (f.bool_or({"use_bidirectional_attention"}, false)) {
    throw UnsupportedError(f.file(), "use_bidirectional_attention",
                           "only causal attention is supported");
  }
  spec->norm_plus_one = spec->sandwich_norms = true;
  spec->embedding_scale = std::sqrt(static_cast<double>(spec->hidden_size));
  const double scalar = f.number_or({"query_pre_attn_scalar"}, 256.0);
  if (!(scalar > 0)) f.fail("query_pre_attn_scalar", "must be positive");
  spec->attention.query_pre_attn_scalar = scalar;
  const std::vector<bool> sliding = gemma3_sliding_layers(f, spec->num_layers);
  RopeSpec local_rope;
  std::tie(spec->rope, local_rope) = gemma3_ropes(f);
  if (std::find(sliding.begin(), sliding.end(), true) == sliding.end()) return;
  const auto window = f.optional_int({"sliding_window"});
  if (!window) f.fail("sliding_window", "required: layer_types has sliding_attention layers");
  spec->local_attention = LocalAttention{positive(f, "sliding_window", *window), local_rope};
  for (size_t i = 0; i < sliding.size(); ++i) spec->layers[i].sliding_attention = sliding[i];
}

bool dense_family(Family family) {
  return family == Family::kLlama || family == Family::kMistral || family == Family::kQwen2 ||
         family == Family::kGemma3Text;
}

/// One entry of config["lathe_cmoe"]["layers"] into `spec`.
void parse_carved_layer(const JsonReader& e, ModelSpec* spec, std::set<int64_t>* seen) {
  e.check_keys({"layer", "num_experts", "num_shared_experts", "top_k", "expert_intermediate",
                "shared_intermediate"});
  const int64_t i = e.int_at("layer", 0);
  if (i >= spec->num_layers) {
    e.fail("layer", "layer " + std::to_string(i) + " is outside [0, num_hidden_layers = " +
                        std::to_string(spec->num_layers) + ")");
  }
  if (!seen->insert(i).second) e.fail("layer", "layer " + std::to_string(i) + " is listed twice");
  LayerSpec& l = spec->layers[static_cast<size_t>(i)];
  l.is_moe = true;
  l.dense_intermediate = 0;
  l.num_experts = e.int_at("num_experts", 1);
  l.top_k = e.int_at("top_k", 1);
  if (l.top_k > l.num_experts) {
    e.fail("top_k", std::to_string(l.top_k) + " is more than the layer's " +
                        std::to_string(l.num_experts) + " routed experts");
  }
  l.expert_intermediate = e.int_at("expert_intermediate", 1);
  l.num_shared_experts = e.int_at("num_shared_experts", 0);
  l.shared_intermediate = e.int_at("shared_intermediate", 0);
  if ((l.num_shared_experts == 0) != (l.shared_intermediate == 0)) {
    e.fail("shared_intermediate", "must be 0 exactly when num_shared_experts is 0");
  }
}

/// A model carved by the cmoe pass: its base family's config plus config["lathe_cmoe"].
ModelSpec parse_carved_spec(const json& config, const std::string& file_label) {
  JsonReader top(config, file_label, "", ErrorKind::kConfig);
  const auto carve = top.object_at({"lathe_cmoe"});
  if (!carve)
    top.fail("lathe_cmoe", "required object: a lathe_cmoe model describes its carve there");
  carve->check_keys({"version", "base_model_type", "layers"});
  if (carve->int_at("version") != 1) carve->fail("version", "expected 1");
  const std::string base = carve->string_at("base_model_type");
  const auto family = family_from_name(base);
  if (!family || !dense_family(*family)) {
    carve->fail(
        "base_model_type",
        "expected a dense family (llama, mistral, qwen2, gemma3_text), found \"" + base + "\"");
  }
  json base_config = config;
  base_config["model_type"] = base;
  base_config.erase("lathe_cmoe");
  ModelSpec spec = parse_model_spec(base_config, file_label);
  spec.model_type = kCmoeModelType;
  spec.carved = true;
  spec.routing = RoutingRule{};
  spec.routing.scoring = ScoringFunc::kCmoe;
  const JsonReader layers = carve->at("layers");
  if (layers.array_size() == 0) carve->fail("layers", "expected at least one carved layer");
  std::set<int64_t> seen;
  for (size_t k = 0; k < layers.array_size(); ++k)
    parse_carved_layer(layers.element(k), &spec, &seen);
  return spec;
}

}  // namespace

const char* scoring_name(ScoringFunc scoring) {
  switch (scoring) {
    case ScoringFunc::kSoftmax: return "softmax";
    case ScoringFunc::kSigmoid: return "sigmoid";
    case ScoringFunc::kCmoe: return "cmoe";
  }
  return "unknown";
}

const char* family_name(Family family) {
  return family_entry(family).name;
}

std::optional<Family> family_from_name(const std::string& model_type) {
  for (const auto& entry : kFamilies) {
    if (model_type == entry.name) return entry.family;
  }
  return std::nullopt;
}

bool ModelSpec::is_moe() const {
  return std::any_of(layers.begin(), layers.end(), [](const LayerSpec& l) { return l.is_moe; });
}

std::vector<std::optional<int64_t>> ModelSpec::experts_per_layer() const {
  std::vector<std::optional<int64_t>> out;
  for (const auto& layer : layers)
    out.push_back(layer.is_moe ? std::optional<int64_t>(layer.num_experts) : std::nullopt);
  return out;
}

std::optional<int64_t> ModelSpec::attention_window(int64_t layer) const {
  if (local_attention && layers.at(layer).sliding_attention) return local_attention->window;
  return attention.sliding_window;
}

ModelSpec parse_model_spec(const json& config, const std::string& file_label) {
  if (!config.is_object()) throw DataError(file_label, "", "expected a JSON object at top level");
  JsonReader top(config, file_label, "", ErrorKind::kConfig);
  const std::string model_type = top.string_or({"model_type"}, "");
  if (model_type.empty()) top.fail("model_type", "required string field is missing");
  if (model_type == kCmoeModelType) return parse_carved_spec(config, file_label);
  auto family = family_from_name(model_type);
  if (!family) {
    std::string known;
    for (const auto& entry : kFamilies)
      known += std::string(known.empty() ? "" : ", ") + entry.name;
    throw UnsupportedError(file_label, "model_type",
                           "unknown family \"" + model_type + "\"; supported: " + known);
  }
  const json merged = merged_with_defaults(config, family_entry(*family));
  JsonReader f(merged, file_label, "", ErrorKind::kConfig);

  ModelSpec spec;
  spec.family = *family;
  spec.model_type = model_type;
  spec.vocab_size = positive(f, "vocab_size", f.int_at({"vocab_size"}));
  spec.hidden_size = positive(f, "hidden_size", f.int_at({"hidden_size"}));
  spec.num_layers = positive(f, "num_hidden_layers", f.int_at({"num_hidden_layers"}));
  spec.max_position_embeddings = f.int_or({"max_position_embeddings"}, 0);
  spec.rms_norm_eps = f.number_or({"rms_norm_eps"}, 1e-6);
  if (!(spec.rms_norm_eps > 0)) f.fail("rms_norm_eps", "must be positive");
  spec.tie_word_embeddings = f.bool_or({"tie_word_embeddings"}, false);
  const char* act_field = spec.family == Family::kGemma3Text ? "hidden_activation" : "hidden_act";
  spec.hidden_act = f.string_or({act_field}, "silu");
  spec.torch_dtype = f.string_or({"torch_dtype", "dtype"}, "");
  spec.attention = parse_attention(f, spec.family, spec.hidden_size);
  spec.rope = parse_rope(f);
  spec.routing = parse_routing(f, spec.family);
  spec.layers = parse_layers(f, spec.family, spec.num_layers);
  validate_routing(f, spec);
  spec.mlp_activation = parse_activation(f, act_field, spec.is_moe());  // carves: any activation
  if (spec.family == Family::kGemma3Text) parse_gemma3(f, &spec);
  return spec;
}

ModelSpec load_model_spec(const std::filesystem::path& model_dir) {
  const auto path = model_dir / "config.json";
  const std::string text =
      read_file(path.string(), "cannot open: no config.json in the model directory");
  // Strict: a key given twice is an error, not a silent "last one wins".
  return parse_model_spec(parse_json_strict(text, path.string(), ""), path.string());
}

void write_cmoe_config(nlohmann::json& config, const ModelSpec& spec,
                       const std::vector<LayerSpec>& layers) {
  json list = json::array();
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerSpec& l = layers[i];
    if (!l.is_moe) continue;
    list.push_back({{"layer", i},
                    {"num_experts", l.num_experts},
                    {"num_shared_experts", l.num_shared_experts},
                    {"top_k", l.top_k},
                    {"expert_intermediate", l.expert_intermediate},
                    {"shared_intermediate", l.shared_intermediate}});
  }
  config["model_type"] = kCmoeModelType;
  config["architectures"] = json::array({"LatheCmoeForCausalLM"});
  config["lathe_cmoe"] = {
      {"version", 1}, {"base_model_type", family_name(spec.family)}, {"layers", list}};
}

bool write_expert_counts(nlohmann::json& config, const ModelSpec& spec,
                         const std::vector<int64_t>& per_layer) {
  if (spec.carved) {  // a carve lists every layer's own count
    std::vector<LayerSpec> layers = spec.layers;
    for (size_t i = 0; i < per_layer.size() && i < layers.size(); ++i) {
      if (layers[i].is_moe) layers[i].num_experts = per_layer[i];
    }
    write_cmoe_config(config, spec, layers);
    return true;
  }
  std::set<int64_t> counts;
  for (size_t i = 0; i < per_layer.size() && i < spec.layers.size(); ++i) {
    if (spec.layers[i].is_moe) counts.insert(per_layer[i]);
  }
  if (counts.size() <= 1) {
    if (counts.size() == 1) {
      for (const char* k : {"num_local_experts", "num_experts", "n_routed_experts"}) {
        if (config.contains(k) && config[k].is_number_integer()) config[k] = *counts.begin();
      }
    }
    config.erase("num_experts_per_layer");
    return true;
  }
  config["num_experts_per_layer"] = per_layer;
  return false;
}

}  // namespace lathe
