#include "export/gguf_model.h"

#include <algorithm>
#include <map>

#include "compressor/common/errors.h"
#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"
#include "export/gguf_file.h"
#include "export/gguf_quants.h"

namespace lathe::gguf {
namespace {

using nlohmann::json;

bool is_integer(ValueType t) {
  return t == ValueType::kU8 || t == ValueType::kI8 || t == ValueType::kU16 ||
         t == ValueType::kI16 || t == ValueType::kU32 || t == ValueType::kI32 ||
         t == ValueType::kU64 || t == ValueType::kI64;
}

/// Typed reads of metadata, each naming the key when it is missing or of another type. The arch_*
/// forms read "<general.architecture>.<name>".
class Metadata {
 public:
  Metadata(const Header& h, std::string label) : h_(h), label_(std::move(label)) {}

  const Header& header() const { return h_; }
  const std::string& label() const { return label_; }
  void set_architecture(std::string arch) { arch_ = std::move(arch); }

  const Value& need(const std::string& key) const {
    const Value* v = h_.get(key);
    if (!v) throw DataError(label_, key, "missing: the architecture needs it");
    return *v;
  }
  int64_t count(const std::string& key) const {
    const Value& v = need(key);
    if (!is_integer(v.type) || v.value.is_number_integer() == false || v.value.get<int64_t>() < 0) {
      throw DataError(
          label_, key,
          std::string("expected a non-negative integer, found ") + value_type_name(v.type));
    }
    return v.value.get<int64_t>();
  }
  double real(const std::string& key) const {
    const Value& v = need(key);
    if (v.type != ValueType::kF32 && v.type != ValueType::kF64) {
      throw DataError(label_, key,
                      std::string("expected f32 or f64, found ") + value_type_name(v.type));
    }
    return v.value.get<double>();
  }
  std::string text(const std::string& key) const {
    const Value& v = need(key);
    if (v.type != ValueType::kString)
      throw DataError(label_, key,
                      std::string("expected a string, found ") + value_type_name(v.type));
    return v.value.get<std::string>();
  }
  bool has(const std::string& key) const { return h_.get(key) != nullptr; }

  std::string arch_key(const std::string& name) const { return arch_ + "." + name; }
  int64_t arch_count(const std::string& name) const { return count(arch_key(name)); }
  double arch_real(const std::string& name) const { return real(arch_key(name)); }
  bool arch_has(const std::string& name) const { return has(arch_key(name)); }

 private:
  const Header& h_;
  std::string label_;
  std::string arch_;
};

/// Rows of the token embedding: the vocabulary the model has.
int64_t vocab_rows(const Metadata& m) {
  const TensorInfo* embed = m.header().find("token_embd.weight");
  if (!embed || embed->dims.size() != 2)
    throw DataError(m.label(), "token_embd.weight", "missing, or not a matrix");
  return static_cast<int64_t>(embed->dims[1]);
}

/// Gemma 3 text (transformers' Gemma3TextConfig, as its GGUF loader fills it): what the file
/// states, and the config class's defaults for what it does not (sliding pattern 6, local RoPE base
/// 1e4, query_pre_attn_scalar 256, GeLU-tanh).
json gemma3_config(const Metadata& m) {
  const int64_t layers = m.count("gemma3.block_count");
  nlohmann::json layer_types = nlohmann::json::array();
  for (int64_t i = 0; i < layers; ++i)
    layer_types.push_back((i + 1) % 6 == 0 ? "full_attention" : "sliding_attention");
  const Metadata& md = m;
  auto token_id = [&](const char* key, int64_t fallback) {
    return md.has(key) ? md.count(key) : fallback;
  };
  return {
      {"architectures", {"Gemma3ForCausalLM"}},
      {"model_type", "gemma3_text"},
      {"vocab_size", vocab_rows(m)},
      {"hidden_size", m.count("gemma3.embedding_length")},
      {"intermediate_size", m.count("gemma3.feed_forward_length")},
      {"num_hidden_layers", layers},
      {"num_attention_heads", m.count("gemma3.attention.head_count")},
      {"num_key_value_heads", m.count("gemma3.attention.head_count_kv")},
      {"head_dim", m.count("gemma3.attention.key_length")},
      {"max_position_embeddings", m.count("gemma3.context_length")},
      {"rms_norm_eps", m.real("gemma3.attention.layer_norm_rms_epsilon")},
      {"sliding_window", m.count("gemma3.attention.sliding_window")},
      {"layer_types", layer_types},
      {"rope_parameters",
       {{"full_attention",
         {{"rope_theta", m.real("gemma3.rope.freq_base")}, {"rope_type", "default"}}},
        {"sliding_attention", {{"rope_theta", 10000.0}, {"rope_type", "default"}}}}},
      {"query_pre_attn_scalar", 256},
      {"hidden_activation", "gelu_pytorch_tanh"},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"attn_logit_softcapping", nullptr},
      {"final_logit_softcapping", nullptr},
      {"use_bidirectional_attention", false},
      {"tie_word_embeddings", m.header().find("output.weight") == nullptr},
      {"bos_token_id", token_id("tokenizer.ggml.bos_token_id", 2)},
      {"eos_token_id", token_id("tokenizer.ggml.eos_token_id", 1)},
      {"pad_token_id", token_id("tokenizer.ggml.padding_token_id", 0)},
  };
}

/// What transformers' GGUF loader reads for every llama-like architecture (GGUF_CONFIG_MAPPING):
/// sizes, heads, context, epsilon, RoPE base, the token ids the file states, and tied embeddings
/// when the file has no output.weight.
json common_config(const Metadata& m, const char* model_type, const char* hf_class) {
  if (m.arch_has("rope.scaling.type") && m.text(m.arch_key("rope.scaling.type")) != "none") {
    throw UnsupportedError(
        m.label(), m.arch_key("rope.scaling.type"),
        "RoPE scaling \"" + m.text(m.arch_key("rope.scaling.type")) + "\" is not imported");
  }
  const int64_t heads = m.arch_count("attention.head_count");
  json c = {
      {"architectures", {hf_class}},
      {"model_type", model_type},
      {"vocab_size", vocab_rows(m)},
      {"hidden_size", m.arch_count("embedding_length")},
      {"intermediate_size", m.arch_count("feed_forward_length")},
      {"num_hidden_layers", m.arch_count("block_count")},
      {"num_attention_heads", heads},
      {"num_key_value_heads",
       m.arch_has("attention.head_count_kv") ? m.arch_count("attention.head_count_kv") : heads},
      {"max_position_embeddings", m.arch_count("context_length")},
      {"rms_norm_eps", m.arch_real("attention.layer_norm_rms_epsilon")},
      // llama.cpp's default base where the file states none.
      {"rope_parameters",
       {{"rope_theta", m.arch_has("rope.freq_base") ? m.arch_real("rope.freq_base") : 10000.0},
        {"rope_type", "default"}}},
      {"tie_word_embeddings", m.header().find("output.weight") == nullptr},
  };
  const std::pair<const char*, const char*> ids[] = {{"bos_token_id", "bos_token_id"},
                                                     {"eos_token_id", "eos_token_id"},
                                                     {"unk_token_id", "unknown_token_id"},
                                                     {"pad_token_id", "padding_token_id"}};
  for (const auto& [field, key] : ids) {
    if (m.has(std::string("tokenizer.ggml.") + key))
      c[field] = m.count(std::string("tokenizer.ggml.") + key);
  }
  return c;
}

/// Routed experts every MoE layer has and how many a token uses.
void add_experts(const Metadata& m, const char* count_field, json* c) {
  (*c)[count_field] = m.arch_count("expert_count");
  (*c)["num_experts_per_tok"] = m.arch_count("expert_used_count");
}

/// llama.cpp writes Llama, Mistral and Mixtral as "llama". As transformers: Mistral when
/// general.name is exactly "mistral" (its loader tests membership in a one-element list); Mixtral
/// when the file has experts (transformers' loader does not read those). head_dim is
/// rope.dimension_count.
json llama_config(const Metadata& m) {
  const bool experts = m.arch_has("expert_count") && m.arch_count("expert_count") > 0;
  const bool mistral = m.has("general.name") && m.text("general.name") == "mistral";
  json c = experts   ? common_config(m, "mixtral", "MixtralForCausalLM")
           : mistral ? common_config(m, "mistral", "MistralForCausalLM")
                     : common_config(m, "llama", "LlamaForCausalLM");
  if (m.arch_has("rope.dimension_count")) c["head_dim"] = m.arch_count("rope.dimension_count");
  if (experts) add_experts(m, "num_local_experts", &c);
  return c;
}

json qwen2_config(const Metadata& m) {
  return common_config(m, "qwen2", "Qwen2ForCausalLM");
}

/// Qwen2-MoE. transformers' loader leaves moe_intermediate_size and shared_expert_intermediate_size
/// at Qwen1.5-MoE-A2.7B's class defaults; lathe takes the widths the file states.
json qwen2moe_config(const Metadata& m) {
  json c = common_config(m, "qwen2_moe", "Qwen2MoeForCausalLM");
  add_experts(m, "num_experts", &c);
  c["moe_intermediate_size"] = m.arch_count("expert_feed_forward_length");
  c["shared_expert_intermediate_size"] = m.arch_count("expert_shared_feed_forward_length");
  return c;
}

/// Qwen3-MoE: head_dim is attention.key_length; top-k weights renormalised (transformers'
/// GGUF default, as llama.cpp computes); the expert width as for Qwen2-MoE.
json qwen3moe_config(const Metadata& m) {
  json c = common_config(m, "qwen3_moe", "Qwen3MoeForCausalLM");
  if (m.arch_has("attention.key_length")) c["head_dim"] = m.arch_count("attention.key_length");
  add_experts(m, "num_experts", &c);
  c["moe_intermediate_size"] = m.arch_count("expert_feed_forward_length");
  c["norm_topk_prob"] = true;
  return c;
}

/// OLMoE (transformers' GGUF loader does not read it): feed_forward_length is the expert width,
/// which OlmoeConfig calls intermediate_size.
json olmoe_config(const Metadata& m) {
  json c = common_config(m, "olmoe", "OlmoeForCausalLM");
  add_experts(m, "num_experts", &c);
  return c;
}

struct Importable {
  const char* architecture;  ///< general.architecture
  json (*config)(const Metadata&);
};

const Importable kImportable[] = {
    {"gemma3", gemma3_config},     {"llama", llama_config},       {"qwen2", qwen2_config},
    {"qwen2moe", qwen2moe_config}, {"qwen3moe", qwen3moe_config}, {"olmoe", olmoe_config},
};

/// llama.cpp's name of the tensor of `role` in layer `layer` ("" when the role has none here).
/// Routed experts of a layer share one stacked tensor per projection.
std::string gguf_name(TensorRole role, int64_t layer) {
  const std::string blk = "blk." + std::to_string(layer) + ".";
  switch (role) {
    case TensorRole::kEmbed: return "token_embd.weight";
    case TensorRole::kFinalNorm: return "output_norm.weight";
    case TensorRole::kLmHead: return "output.weight";
    case TensorRole::kAttnNorm: return blk + "attn_norm.weight";
    case TensorRole::kMlpNorm: return blk + "ffn_norm.weight";
    case TensorRole::kPostAttnNorm: return blk + "post_attention_norm.weight";
    case TensorRole::kPostMlpNorm: return blk + "post_ffw_norm.weight";
    case TensorRole::kQ: return blk + "attn_q.weight";
    case TensorRole::kK: return blk + "attn_k.weight";
    case TensorRole::kV: return blk + "attn_v.weight";
    case TensorRole::kO: return blk + "attn_output.weight";
    case TensorRole::kQBias: return blk + "attn_q.bias";
    case TensorRole::kKBias: return blk + "attn_k.bias";
    case TensorRole::kVBias: return blk + "attn_v.bias";
    case TensorRole::kOBias: return blk + "attn_output.bias";
    case TensorRole::kQNorm: return blk + "attn_q_norm.weight";
    case TensorRole::kKNorm: return blk + "attn_k_norm.weight";
    case TensorRole::kDenseGate: return blk + "ffn_gate.weight";
    case TensorRole::kDenseUp: return blk + "ffn_up.weight";
    case TensorRole::kDenseDown: return blk + "ffn_down.weight";
    case TensorRole::kRouter: return blk + "ffn_gate_inp.weight";
    case TensorRole::kExpertGate: return blk + "ffn_gate_exps.weight";
    case TensorRole::kExpertUp: return blk + "ffn_up_exps.weight";
    case TensorRole::kExpertDown: return blk + "ffn_down_exps.weight";
    case TensorRole::kSharedGate: return blk + "ffn_gate_shexp.weight";
    case TensorRole::kSharedUp: return blk + "ffn_up_shexp.weight";
    case TensorRole::kSharedDown: return blk + "ffn_down_shexp.weight";
    case TensorRole::kSharedExpertGate: return blk + "ffn_gate_inp_shexp.weight";
    default: return "";
  }
}

bool is_norm(TensorRole role) {
  return role == TensorRole::kAttnNorm || role == TensorRole::kMlpNorm ||
         role == TensorRole::kPostAttnNorm || role == TensorRole::kPostMlpNorm ||
         role == TensorRole::kFinalNorm || role == TensorRole::kQNorm || role == TensorRole::kKNorm;
}

bool is_expert(TensorRole role) {
  return role == TensorRole::kExpertGate || role == TensorRole::kExpertUp ||
         role == TensorRole::kExpertDown;
}

std::vector<int64_t> without_leading_ones(std::vector<int64_t> shape) {
  while (shape.size() > 1 && shape.front() == 1) shape.erase(shape.begin());
  return shape;
}

/// Checks that GGUF tensor `info` can hold HF tensor `e` (with `experts` stacked experts when `e`
/// is one expert's projection). A [1, d] HF tensor may be stored as [d] (Qwen2-MoE's shared gate).
void check_shape(const ExpectedTensor& e, const TensorInfo& info, int64_t experts,
                 const std::string& architecture, const std::string& label) {
  std::vector<int64_t> want = e.shape;
  const std::vector<int64_t> have = info.shape();
  if (is_expert(e.role)) {
    want.insert(want.begin(), experts);
    if (have.size() == 3 && have[0] != experts &&
        std::equal(have.begin() + 1, have.end(), e.shape.begin())) {
      throw DataError(label, info.name,
                      "stacks " + std::to_string(have[0]) + " experts, but " + architecture +
                          ".expert_count says " + std::to_string(experts));
    }
  }
  if (have != want && without_leading_ones(have) != without_leading_ones(want)) {
    throw DataError(label, info.name,
                    "shape " + json(have).dump() + " disagrees with the metadata, which implies " +
                        json(want).dump() + " (" + e.name + ")");
  }
}

/// The plan of one HF tensor, checked against the GGUF tensor that holds it.
HfTensor plan_tensor(const ExpectedTensor& e, const ModelSpec& spec,
                     const std::string& architecture, const Header& h, const std::string& label) {
  HfTensor t;
  t.name = e.name;
  t.shape = e.shape;
  t.layer = e.layer;
  t.source = gguf_name(e.role, e.layer);
  if (t.source.empty()) {
    throw UnsupportedError(
        label, e.name, "lathe does not map this tensor of a " + architecture + " model from GGUF");
  }
  const TensorInfo* info = h.find(t.source);
  if (!info)
    throw DataError(label, t.source,
                    "missing: the metadata's " + architecture + " model needs it for " + e.name);
  const int64_t experts = e.layer >= 0 ? spec.layers[e.layer].num_experts : 0;
  check_shape(e, *info, experts, architecture, label);
  if (is_expert(e.role)) t.expert = e.expert;
  if (architecture == "gemma3" && is_norm(e.role)) t.fix = Fix::kMinusOne;
  // convert_hf_to_gguf.py permutes q and k (weights and biases) of the llama architecture only.
  if (architecture == "llama" && (e.role == TensorRole::kQ || e.role == TensorRole::kQBias)) {
    t.interleaved_heads = spec.attention.num_heads;
  } else if (architecture == "llama" &&
             (e.role == TensorRole::kK || e.role == TensorRole::kKBias)) {
    t.interleaved_heads = spec.attention.num_kv_heads;
  }
  const uint64_t per_head =
      t.interleaved_heads
          ? (t.shape.size() == 1 ? hf_row_length(t) : hf_rows(t)) / t.interleaved_heads
          : 0;
  if (t.interleaved_heads && per_head % 2 != 0) {
    throw DataError(label, t.source,
                    "llama.cpp's q/k row order needs an even head dimension, found " +
                        std::to_string(per_head));
  }
  return t;
}

const Importable* find_importable(const std::string& architecture) {
  for (const auto& entry : kImportable) {
    if (architecture == entry.architecture) return &entry;
  }
  return nullptr;
}

/// The spec of the config built from the metadata; a config lathe refuses names the file, since
/// the metadata is where it came from.
ModelSpec spec_of(const json& config, const std::string& label) {
  try {
    return parse_model_spec(config, label + " (config from its metadata)");
  } catch (const ConfigError& e) {
    throw DataError(label, e.field(), e.message() + " (in the config.json the metadata implies)");
  }
}

/// Row `r` of a q/k tensor stored by llama.cpp: each head's rows are in the order (i, half)
/// instead of HF's (half, i) (the inverse of convert_hf_to_gguf.py's permute).
uint64_t interleaved_row(uint64_t r, uint64_t rows, uint64_t heads) {
  const uint64_t dim = rows / heads, half = dim / 2;
  const uint64_t head = r / dim, k = r % dim;
  return head * dim + 2 * (k % half) + k / half;
}

}  // namespace

const std::vector<std::string>& importable_architectures() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& entry : kImportable) out.push_back(entry.architecture);
    return out;
  }();
  return names;
}

HfModel hf_model(const Header& h, const std::string& label) {
  Metadata m(h, label);
  HfModel out;
  out.architecture = m.text("general.architecture");
  const Importable* entry = find_importable(out.architecture);
  if (!entry) {
    std::string list;
    for (const auto& a : importable_architectures()) list += (list.empty() ? "" : ", ") + a;
    throw UnsupportedError(label, "general.architecture",
                           "lathe does not import \"" + out.architecture +
                               "\" models from GGUF (it imports: " + list + ")");
  }
  m.set_architecture(out.architecture);
  out.config = entry->config(m);
  // The tensors the config implies, by lathe's own architecture table: the same list every reader
  // of the imported directory checks against.
  const ModelSpec spec = spec_of(out.config, label);
  std::map<std::string, bool> used;
  for (const auto& e : expected_tensors(spec, ExpertLayout::kPerExpert)) {
    out.tensors.push_back(plan_tensor(e, spec, out.architecture, h, label));
    used[out.tensors.back().source] = true;
  }
  for (const auto& t : h.tensors) {
    if (!used.count(t.name)) {
      throw DataError(label, t.name,
                      "a tensor the metadata's " + out.architecture + " model has no place for");
    }
  }
  return out;
}

uint64_t hf_rows(const HfTensor& t) {
  return t.shape.size() < 2 ? 1 : static_cast<uint64_t>(t.shape[0]);
}

uint64_t hf_row_length(const HfTensor& t) {
  uint64_t n = 1;
  for (size_t i = t.shape.size() < 2 ? 0 : 1; i < t.shape.size(); ++i)
    n *= static_cast<uint64_t>(t.shape[i]);
  return n;
}

void read_hf_rows(const File& file, const HfTensor& t, uint64_t first, uint64_t count, float* out) {
  const TensorInfo& info = file.tensor(t.source);
  const uint64_t length = hf_row_length(t), rows = hf_rows(t);
  const TypeTraits traits = *type_traits(info.type);
  const uint64_t row_bytes = length / traits.block_size * traits.type_size;
  const uint64_t base =
      t.expert >= 0 ? static_cast<uint64_t>(t.expert) * rows : 0;  // first row of the slice
  auto read = [&](uint64_t row, uint64_t n, float* to) {
    dequantize(info.type, file.bytes(info) + row * row_bytes, n * length, to, file.path(),
               info.name);
    file.release_range(info, row * row_bytes, (row + n) * row_bytes);
  };
  if (t.interleaved_heads == 0) {
    read(base + first, count, out);
  } else if (t.shape.size() == 1) {  // a bias: its elements are interleaved
    std::vector<float> stored(length);
    read(base, 1, stored.data());
    for (uint64_t i = 0; i < length; ++i)
      out[i] = stored[interleaved_row(i, length, t.interleaved_heads)];
  } else {
    for (uint64_t r = first; r < first + count; ++r) {
      read(base + interleaved_row(r, rows, t.interleaved_heads), 1, out + (r - first) * length);
    }
  }
  if (t.fix == Fix::kMinusOne) {
    for (uint64_t i = 0; i < count * length; ++i) out[i] = out[i] - 1.0f;
  }
}

}  // namespace lathe::gguf
