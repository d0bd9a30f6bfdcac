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

bool is_integer(ValueType t) {
  return t == ValueType::kU8 || t == ValueType::kI8 || t == ValueType::kU16 || t == ValueType::kI16 ||
         t == ValueType::kU32 || t == ValueType::kI32 || t == ValueType::kU64 || t == ValueType::kI64;
}

/// Typed reads of metadata, each naming the key when it is missing or of another type.
class Metadata {
 public:
  Metadata(const Header& h, std::string label) : h_(h), label_(std::move(label)) {}

  const Value& need(const std::string& key) const {
    const Value* v = h_.get(key);
    if (!v) throw DataError(label_, key, "missing: the architecture needs it");
    return *v;
  }
  int64_t count(const std::string& key) const {
    const Value& v = need(key);
    if (!is_integer(v.type) || v.value.is_number_integer() == false || v.value.get<int64_t>() < 0) {
      throw DataError(label_, key, std::string("expected a non-negative integer, found ") + value_type_name(v.type));
    }
    return v.value.get<int64_t>();
  }
  double real(const std::string& key) const {
    const Value& v = need(key);
    if (v.type != ValueType::kF32 && v.type != ValueType::kF64) {
      throw DataError(label_, key, std::string("expected f32 or f64, found ") + value_type_name(v.type));
    }
    return v.value.get<double>();
  }
  std::string text(const std::string& key) const {
    const Value& v = need(key);
    if (v.type != ValueType::kString) throw DataError(label_, key, std::string("expected a string, found ") + value_type_name(v.type));
    return v.value.get<std::string>();
  }
  bool has(const std::string& key) const { return h_.get(key) != nullptr; }

 private:
  const Header& h_;
  std::string label_;
};

/// Gemma 3 text (transformers' Gemma3TextConfig, as its GGUF loader fills it): what the file states,
/// and the config class's defaults for what it does not (sliding pattern 6, local RoPE base 1e4,
/// query_pre_attn_scalar 256, GeLU-tanh).
nlohmann::json gemma3_config(const Metadata& m, const Header& h, const std::string& label) {
  const int64_t layers = m.count("gemma3.block_count");
  nlohmann::json layer_types = nlohmann::json::array();
  for (int64_t i = 0; i < layers; ++i) layer_types.push_back((i + 1) % 6 == 0 ? "full_attention" : "sliding_attention");
  const TensorInfo* embed = h.find("token_embd.weight");
  if (!embed || embed->dims.size() != 2) throw DataError(label, "token_embd.weight", "missing, or not a matrix");
  const Metadata& md = m;
  auto token_id = [&](const char* key, int64_t fallback) { return md.has(key) ? md.count(key) : fallback; };
  return {
      {"architectures", {"Gemma3ForCausalLM"}},
      {"model_type", "gemma3_text"},
      {"vocab_size", static_cast<int64_t>(embed->dims[1])},
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
       {{"full_attention", {{"rope_theta", m.real("gemma3.rope.freq_base")}, {"rope_type", "default"}}},
        {"sliding_attention", {{"rope_theta", 10000.0}, {"rope_type", "default"}}}}},
      {"query_pre_attn_scalar", 256},
      {"hidden_activation", "gelu_pytorch_tanh"},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"attn_logit_softcapping", nullptr},
      {"final_logit_softcapping", nullptr},
      {"use_bidirectional_attention", false},
      {"tie_word_embeddings", h.find("output.weight") == nullptr},
      {"bos_token_id", token_id("tokenizer.ggml.bos_token_id", 2)},
      {"eos_token_id", token_id("tokenizer.ggml.eos_token_id", 1)},
      {"pad_token_id", token_id("tokenizer.ggml.padding_token_id", 0)},
  };
}

/// llama.cpp's name of the tensor of `role` in layer `layer` ("" when the role has none here).
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
    default: return "";
  }
}

bool is_norm(TensorRole role) {
  return role == TensorRole::kAttnNorm || role == TensorRole::kMlpNorm || role == TensorRole::kPostAttnNorm ||
         role == TensorRole::kPostMlpNorm || role == TensorRole::kFinalNorm || role == TensorRole::kQNorm ||
         role == TensorRole::kKNorm;
}

/// The plan of one HF tensor, checked against the GGUF tensor that holds it.
HfTensor plan_tensor(const ExpectedTensor& e, const std::string& architecture, const Header& h, const std::string& label) {
  HfTensor t;
  t.name = e.name;
  t.shape = e.shape;
  t.layer = e.layer;
  t.source = gguf_name(e.role, e.layer);
  if (t.source.empty()) {
    throw UnsupportedError(label, e.name, "lathe does not map this tensor of a " + architecture + " model from GGUF");
  }
  const TensorInfo* info = h.find(t.source);
  if (!info) throw DataError(label, t.source, "missing: the metadata's " + architecture + " model needs it for " + e.name);
  if (info->shape() != e.shape) {
    throw DataError(label, t.source,
                    "shape " + nlohmann::json(info->shape()).dump() + " disagrees with the metadata, which implies " +
                        nlohmann::json(e.shape).dump() + " (" + e.name + ")");
  }
  if (architecture == "gemma3" && is_norm(e.role)) t.fix = Fix::kMinusOne;
  return t;
}

}  // namespace

const std::vector<std::string>& importable_architectures() {
  static const std::vector<std::string> names = {"gemma3"};
  return names;
}

HfModel hf_model(const Header& h, const std::string& label) {
  const Metadata m(h, label);
  HfModel out;
  out.architecture = m.text("general.architecture");
  const auto& known = importable_architectures();
  if (std::find(known.begin(), known.end(), out.architecture) == known.end()) {
    std::string list;
    for (const auto& a : known) list += (list.empty() ? "" : ", ") + a;
    throw UnsupportedError(label, "general.architecture",
                           "lathe does not import \"" + out.architecture + "\" models from GGUF yet (it imports: " + list + ")");
  }
  out.config = gemma3_config(m, h, label);
  // The tensors the config implies, by lathe's own architecture table: the same list every reader of
  // the imported directory checks against.
  const ModelSpec spec = parse_model_spec(out.config, label + " (config from its metadata)");
  std::map<std::string, bool> used;
  for (const auto& e : expected_tensors(spec, ExpertLayout::kPerExpert)) {
    out.tensors.push_back(plan_tensor(e, out.architecture, h, label));
    used[out.tensors.back().source] = true;
  }
  for (const auto& t : h.tensors) {
    if (!used.count(t.name)) {
      throw DataError(label, t.name, "a tensor the metadata's " + out.architecture + " model has no place for");
    }
  }
  return out;
}

std::vector<float> hf_values(const File& file, const HfTensor& t) {
  std::vector<float> v = file.dequantize(file.tensor(t.source));
  if (t.fix == Fix::kMinusOne) {
    for (float& x : v) x = x - 1.0f;
  }
  return v;
}

}  // namespace lathe::gguf
