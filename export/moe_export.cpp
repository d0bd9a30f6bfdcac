// OUT/qwen2-moe: a model carved by the cmoe pass as a stock transformers Qwen2-MoE checkpoint
// (docs/cmoe.md "Export"; docs/export.md "qwen2-moe"). Attention, norms, embedding and head are the
// base model's (llama, mistral without a window, qwen2: the same computation under Qwen2-MoE's
// names); each carved layer becomes a Qwen2-MoE block: the router is the linear softmax router the
// pass fitted (mlp.router.stock.weight), top-k renormalised, every routed expert's down_proj × A so
// a selected expert weighs about 1 as in CMoE; the shared MLP is Qwen2-MoE's shared expert with a
// zero gate (σ(0) = ½) and down_proj × 2, which is exact. Layers left dense are mlp_only_layers.
#include <ATen/ATen.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <optional>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "export/export_source.h"

namespace fs = std::filesystem;

namespace lathe {
namespace {

/// The one size every carved layer shares (ConfigError naming `what` when they differ).
int64_t uniform(const ModelSpec& spec, const char* what, int64_t LayerSpec::*field) {
  std::optional<int64_t> value;
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const LayerSpec& l = spec.layers[i];
    if (!l.is_moe) continue;
    if (value && *value != l.*field) {
      throw ConfigError("", "export",
                        fmt::format("qwen2-moe holds one {} for every MoE layer, but layer {} has "
                                    "{} and an earlier one {}; prune experts with mode: uniform",
                                    what, i, l.*field, *value));
    }
    value = l.*field;
  }
  return value.value_or(0);
}

/// The Qwen2-MoE config.json of the carved model, after checking that Qwen2-MoE computes what it
/// computes. ConfigError / UnsupportedError naming why not.
nlohmann::json qwen2_moe_config(const ExportSource& src) {
  const ModelSpec& s = src.spec();
  if (!s.carved) {
    throw ConfigError("", "export",
                      fmt::format("qwen2-moe exports a model carved by the cmoe pass; {} is a {} "
                                  "model (use hf)",
                                  src.model_dir().string(), s.model_type));
  }
  if (s.family == Family::kGemma3Text) {
    throw UnsupportedError(
        "", "export",
        "no stock MoE family runs Gemma 3's attention ((1 + w) sandwich norms, scaled embedding, "
        "local layers with their own RoPE base, GeGLU): a carved Gemma 3 stays in lathe's format");
  }
  if (s.family == Family::kMistral && s.attention.sliding_window) {
    throw UnsupportedError(
        "", "export",
        "Qwen2-MoE's sliding window applies per layer group (max_window_layers), "
        "not as Mistral's on every layer: a windowed Mistral carve has no "
        "stock MoE equivalent");
  }
  if (s.attention.o_bias)
    throw UnsupportedError("", "export", "Qwen2-MoE's o_proj has no bias; this model's has one");
  const int64_t experts = uniform(s, "routed expert count", &LayerSpec::num_experts);
  const int64_t top_k = uniform(s, "top_k", &LayerSpec::top_k);
  const int64_t width = uniform(s, "expert width", &LayerSpec::expert_intermediate);
  const int64_t shared = uniform(s, "shared width", &LayerSpec::shared_intermediate);
  nlohmann::json c = src.config();
  std::vector<int64_t> dense;
  int64_t dense_width = c.value("intermediate_size", int64_t{0});
  for (size_t i = 0; i < s.layers.size(); ++i) {
    if (s.layers[i].is_moe) continue;
    dense.push_back(static_cast<int64_t>(i));
    dense_width = s.layers[i].dense_intermediate;
  }
  c.erase("lathe_cmoe");
  c["model_type"] = "qwen2_moe";
  c["architectures"] = nlohmann::json::array({"Qwen2MoeForCausalLM"});
  c["num_experts"] = experts;
  c["num_experts_per_tok"] = top_k;
  c["moe_intermediate_size"] = width;
  c["shared_expert_intermediate_size"] = std::max<int64_t>(shared, 1);  // 1: a zero expert
  c["intermediate_size"] = dense_width;
  c["norm_topk_prob"] = true;
  c["decoder_sparse_step"] = 1;
  c["mlp_only_layers"] = dense;
  c["qkv_bias"] = s.attention.qkv_bias;
  c["use_sliding_window"] = false;
  c["head_dim"] = s.attention.head_dim;
  return c;
}

at::Tensor scaled(const at::Tensor& w, double factor) {
  return (w.to(at::kFloat) * factor).to(w.scalar_type());
}

}  // namespace

void write_qwen2_moe_files(const ExportSource& src, const fs::path& dir, ExportResult* result) {
  const nlohmann::json config = qwen2_moe_config(src);  // refuses before anything is written
  const ModelSpec& spec = src.spec();
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"lathe.pipeline", src.pipeline()}, {"lathe.version", LATHE_VERSION}};
  result->bytes = write_export_shards(src, dir, metadata, [&](int64_t i, ShardTensors* shard) {
    const LayerSpec& l = spec.layers[i];
    std::map<std::string, TensorRole> roles;
    for (const auto& t : expected_layer_tensors(spec, ExpertLayout::kPerExpert, i))
      roles[t.name] = t.role;
    const ExportLayer layer = src.layer(i);
    const std::string mlp = fmt::format("model.layers.{}.mlp.", i);
    for (const auto& [name, value] : layer.others) {
      switch (roles.at(name)) {
        case TensorRole::kRouterStock: shard->add(mlp + "gate.weight", value); break;
        case TensorRole::kRouterUp:
        case TensorRole::kRouterScale:
        case TensorRole::kRouterBias: break;  // CMoE's own router: not in Qwen2-MoE
        default: shard->add(name, value);
      }
    }
    at::ScalarType dtype = src.model_dtype();
    for (const ExportLinear& lin : layer.linears) {
      if (lin.router) continue;  // Wg: CMoE's own router
      dtype = lin.weight.scalar_type();
      at::Tensor w = lin.weight;
      if (lin.role == TensorRole::kExpertDown) w = scaled(w, static_cast<double>(l.top_k));
      if (lin.role == TensorRole::kSharedDown) w = scaled(w, 2.0);
      shard->add(lin.module + ".weight", w);
      if (lin.quantized) result->unpacked_modules += 1;
    }
    if (!l.is_moe) return;
    const int64_t d = spec.hidden_size;
    shard->add(mlp + "shared_expert_gate.weight", at::zeros({1, d}, dtype));
    if (l.shared_intermediate == 0) {  // Qwen2-MoE always has a shared expert: a zero one
      shard->add(mlp + "shared_expert.gate_proj.weight", at::zeros({1, d}, dtype));
      shard->add(mlp + "shared_expert.up_proj.weight", at::zeros({1, d}, dtype));
      shard->add(mlp + "shared_expert.down_proj.weight", at::zeros({d, 1}, dtype));
    }
  });
  write_file_atomically((dir / "config.json").string(), config.dump(2) + "\n");
  copy_model_side_files(src.model_dir(), dir);
  result->log.push_back(
      "qwen2-moe: CMoE's router replaced by the fitted linear softmax router (measure the change "
      "with lathe eval DIR --reference OUT/model)");
}

}  // namespace lathe
