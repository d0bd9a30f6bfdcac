#include "compressor/model/architecture.h"

#include "compressor/common/errors.h"

namespace lathe {
namespace {

/// Per-family module names: the only family-specific part of the registry.
struct NameTable {
  Family family;
  const char* moe_block;        ///< module holding router and experts, per-expert layout
  const char* fused_moe_block;  ///< the same module under transformers v5's fused layout
  const char* expert_gate;      ///< projection names inside one expert
  const char* expert_up;
  const char* expert_down;
  const char* shared;  ///< shared-expert module under mlp, or nullptr
};

const NameTable kNameTables[] = {
    {Family::kLlama, "mlp", "mlp", "gate_proj", "up_proj", "down_proj", nullptr},
    {Family::kMistral, "mlp", "mlp", "gate_proj", "up_proj", "down_proj", nullptr},
    {Family::kQwen2, "mlp", "mlp", "gate_proj", "up_proj", "down_proj", nullptr},
    {Family::kMixtral, "block_sparse_moe", "mlp", "w1", "w3", "w2", nullptr},
    {Family::kQwen2Moe, "mlp", "mlp", "gate_proj", "up_proj", "down_proj", "shared_expert"},
    {Family::kQwen3Moe, "mlp", "mlp", "gate_proj", "up_proj", "down_proj", nullptr},
    {Family::kOlmoe, "mlp", "mlp", "gate_proj", "up_proj", "down_proj", nullptr},
    {Family::kDeepseekV2, "mlp", "mlp", "gate_proj", "up_proj", "down_proj", "shared_experts"},
    {Family::kDeepseekV3, "mlp", "mlp", "gate_proj", "up_proj", "down_proj", "shared_experts"},
    {Family::kGemma3Text, "mlp", "mlp", "gate_proj", "up_proj", "down_proj", nullptr},
};

const NameTable& names_of(Family family) {
  for (const auto& table : kNameTables) {
    if (table.family == family) return table;
  }
  throw InternalError("", family_name(family), "family missing from the architecture name table");
}

/// Collects the tensors of one layer; keeps the per-role helpers short.
class LayerBuilder {
 public:
  LayerBuilder(const ModelSpec& spec, int64_t layer, std::vector<ExpectedTensor>* out)
      : spec_(spec),
        layer_(layer),
        out_(out),
        prefix_("model.layers." + std::to_string(layer) + ".") {}

  void add(const std::string& suffix, std::vector<int64_t> shape, TensorRole role,
           int64_t expert = -1) {
    out_->push_back({prefix_ + suffix, std::move(shape), role, layer_, expert});
  }

  void attention() {
    const AttentionSpec& a = spec_.attention;
    const int64_t d = spec_.hidden_size;
    add("input_layernorm.weight", {d}, TensorRole::kAttnNorm);
    if (a.kind == AttentionKind::kMla) return mla();
    const int64_t q = a.num_heads * a.head_dim, kv = a.num_kv_heads * a.head_dim;
    add("self_attn.q_proj.weight", {q, d}, TensorRole::kQ);
    add("self_attn.k_proj.weight", {kv, d}, TensorRole::kK);
    add("self_attn.v_proj.weight", {kv, d}, TensorRole::kV);
    add("self_attn.o_proj.weight", {d, q}, TensorRole::kO);
    if (a.qkv_bias) {
      add("self_attn.q_proj.bias", {q}, TensorRole::kQBias);
      add("self_attn.k_proj.bias", {kv}, TensorRole::kKBias);
      add("self_attn.v_proj.bias", {kv}, TensorRole::kVBias);
    }
    if (a.o_bias) add("self_attn.o_proj.bias", {d}, TensorRole::kOBias);
    if (spec_.sandwich_norms)
      add("post_attention_layernorm.weight", {d}, TensorRole::kPostAttnNorm);
    if (a.qk_norm_per_head) {
      add("self_attn.q_norm.weight", {a.head_dim}, TensorRole::kQNorm);
      add("self_attn.k_norm.weight", {a.head_dim}, TensorRole::kKNorm);
    } else if (a.qk_norm_full) {
      add("self_attn.q_norm.weight", {q}, TensorRole::kQNorm);
      add("self_attn.k_norm.weight", {kv}, TensorRole::kKNorm);
    }
  }

  void mla() {
    const AttentionSpec& a = spec_.attention;
    const int64_t d = spec_.hidden_size;
    const int64_t q_out = a.num_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim);
    if (a.q_lora_rank > 0) {
      add("self_attn.q_a_proj.weight", {a.q_lora_rank, d}, TensorRole::kQA);
      if (a.qkv_bias) add("self_attn.q_a_proj.bias", {a.q_lora_rank}, TensorRole::kQABias);
      add("self_attn.q_a_layernorm.weight", {a.q_lora_rank}, TensorRole::kQANorm);
      add("self_attn.q_b_proj.weight", {q_out, a.q_lora_rank}, TensorRole::kQB);
    } else {
      add("self_attn.q_proj.weight", {q_out, d}, TensorRole::kQ);
    }
    add("self_attn.kv_a_proj_with_mqa.weight", {a.kv_lora_rank + a.qk_rope_head_dim, d},
        TensorRole::kKVA);
    if (a.qkv_bias)
      add("self_attn.kv_a_proj_with_mqa.bias", {a.kv_lora_rank + a.qk_rope_head_dim},
          TensorRole::kKVABias);
    add("self_attn.kv_a_layernorm.weight", {a.kv_lora_rank}, TensorRole::kKVANorm);
    add("self_attn.kv_b_proj.weight",
        {a.num_heads * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank}, TensorRole::kKVB);
    add("self_attn.o_proj.weight", {d, a.num_heads * a.v_head_dim}, TensorRole::kO);
    if (a.o_bias) add("self_attn.o_proj.bias", {d}, TensorRole::kOBias);
  }

  void feed_forward(ExpertLayout layout) {
    const int64_t d = spec_.hidden_size;
    const LayerSpec& l = spec_.layers[layer_];
    // With sandwich norms post_attention_layernorm belongs to the attention block (attention()).
    add(spec_.sandwich_norms ? "pre_feedforward_layernorm.weight"
                             : "post_attention_layernorm.weight",
        {d}, TensorRole::kMlpNorm);
    if (!l.is_moe) {
      add("mlp.gate_proj.weight", {l.dense_intermediate, d}, TensorRole::kDenseGate);
      add("mlp.up_proj.weight", {l.dense_intermediate, d}, TensorRole::kDenseUp);
      add("mlp.down_proj.weight", {d, l.dense_intermediate}, TensorRole::kDenseDown);
    } else {
      moe_block(layout);
    }
    if (spec_.sandwich_norms)
      add("post_feedforward_layernorm.weight", {d}, TensorRole::kPostMlpNorm);
  }

 private:
  void moe_block(ExpertLayout layout) {
    const int64_t d = spec_.hidden_size;
    const LayerSpec& l = spec_.layers[layer_];
    if (spec_.carved) return carved_block();
    const NameTable& n = names_of(spec_.family);
    const std::string block =
        std::string(layout == ExpertLayout::kFused ? n.fused_moe_block : n.moe_block) + ".";
    add(block + "gate.weight", {l.num_experts, d}, TensorRole::kRouter);
    if (spec_.routing.selection_bias)
      add(block + "gate.e_score_correction_bias", {l.num_experts}, TensorRole::kRouterBias);
    experts(layout, block);
    shared();
  }

  /// A layer carved by the cmoe pass (docs/cmoe.md "Checkpoint"): its router, routed experts
  /// (per-expert layout) and shared MLP under mlp., with the base family's projection names.
  void carved_block() {
    const int64_t d = spec_.hidden_size;
    const LayerSpec& l = spec_.layers[layer_];
    add("mlp.router.gate_proj.weight", {l.num_experts, d}, TensorRole::kRouter);
    add("mlp.router.up_proj.weight", {l.num_experts, d}, TensorRole::kRouterUp);
    add("mlp.router.extra_scale", {l.num_experts}, TensorRole::kRouterScale);
    add("mlp.router.bias", {l.num_experts}, TensorRole::kRouterBias);
    add("mlp.router.stock.weight", {l.num_experts, d}, TensorRole::kRouterStock);
    experts(ExpertLayout::kPerExpert, "mlp.");
    if (l.shared_intermediate == 0) return;
    const int64_t w = l.shared_intermediate;
    add("mlp.shared_expert.gate_proj.weight", {w, d}, TensorRole::kSharedGate);
    add("mlp.shared_expert.up_proj.weight", {w, d}, TensorRole::kSharedUp);
    add("mlp.shared_expert.down_proj.weight", {d, w}, TensorRole::kSharedDown);
  }

  void experts(ExpertLayout layout, const std::string& block) {
    const int64_t d = spec_.hidden_size;
    const LayerSpec& l = spec_.layers[layer_];
    const int64_t w = l.expert_intermediate;
    if (layout == ExpertLayout::kFused) {
      add(block + "experts.gate_up_proj", {l.num_experts, 2 * w, d}, TensorRole::kExpertsGateUp);
      add(block + "experts.down_proj", {l.num_experts, d, w}, TensorRole::kExpertsDown);
      return;
    }
    const NameTable& n = names_of(spec_.family);
    for (int64_t e = 0; e < l.num_experts; ++e) {
      const std::string p = block + "experts." + std::to_string(e) + ".";
      add(p + n.expert_gate + ".weight", {w, d}, TensorRole::kExpertGate, e);
      add(p + n.expert_up + ".weight", {w, d}, TensorRole::kExpertUp, e);
      add(p + n.expert_down + ".weight", {d, w}, TensorRole::kExpertDown, e);
    }
  }

  void shared() {
    const NameTable& n = names_of(spec_.family);
    const LayerSpec& l = spec_.layers[layer_];
    if (!n.shared || l.shared_intermediate == 0) return;
    const int64_t d = spec_.hidden_size, w = l.shared_intermediate;
    const std::string p = std::string("mlp.") + n.shared + ".";
    add(p + "gate_proj.weight", {w, d}, TensorRole::kSharedGate);
    add(p + "up_proj.weight", {w, d}, TensorRole::kSharedUp);
    add(p + "down_proj.weight", {d, w}, TensorRole::kSharedDown);
    if (spec_.routing.shared_expert_gate)
      add("mlp.shared_expert_gate.weight", {1, d}, TensorRole::kSharedExpertGate);
  }

  const ModelSpec& spec_;
  int64_t layer_;
  std::vector<ExpectedTensor>* out_;
  std::string prefix_;
};

}  // namespace

const char* category_key(Category category) {
  switch (category) {
    case Category::kEmbedding: return "embedding";
    case Category::kAttention: return "attention";
    case Category::kDenseMlp: return "dense_mlp";
    case Category::kRoutedExperts: return "routed_experts";
    case Category::kSharedExperts: return "shared_experts";
    case Category::kRouter: return "router";
    case Category::kNorm: return "norm";
    case Category::kLmHead: return "lm_head";
  }
  return "unknown";
}

const std::vector<Category>& all_categories() {
  static const std::vector<Category> kAll = {
      Category::kEmbedding,     Category::kAttention, Category::kDenseMlp, Category::kRoutedExperts,
      Category::kSharedExperts, Category::kRouter,    Category::kNorm,     Category::kLmHead};
  return kAll;
}

Category category_of(TensorRole role) {
  switch (role) {
    case TensorRole::kEmbed: return Category::kEmbedding;
    case TensorRole::kLmHead: return Category::kLmHead;
    case TensorRole::kFinalNorm:
    case TensorRole::kAttnNorm:
    case TensorRole::kMlpNorm:
    case TensorRole::kPostAttnNorm:
    case TensorRole::kPostMlpNorm:
    case TensorRole::kQNorm:
    case TensorRole::kKNorm:
    case TensorRole::kQANorm:
    case TensorRole::kKVANorm: return Category::kNorm;
    case TensorRole::kDenseGate:
    case TensorRole::kDenseUp:
    case TensorRole::kDenseDown: return Category::kDenseMlp;
    case TensorRole::kRouter:
    case TensorRole::kRouterBias:
    case TensorRole::kRouterUp:
    case TensorRole::kRouterScale:
    case TensorRole::kRouterStock:
    case TensorRole::kSharedExpertGate: return Category::kRouter;
    case TensorRole::kExpertGate:
    case TensorRole::kExpertUp:
    case TensorRole::kExpertDown:
    case TensorRole::kExpertsGateUp:
    case TensorRole::kExpertsDown: return Category::kRoutedExperts;
    case TensorRole::kSharedGate:
    case TensorRole::kSharedUp:
    case TensorRole::kSharedDown: return Category::kSharedExperts;
    default: return Category::kAttention;
  }
}

std::vector<ExpectedTensor> expected_layer_tensors(const ModelSpec& spec, ExpertLayout layout,
                                                   int64_t layer) {
  if (layer < 0 || layer >= spec.num_layers) {
    throw InternalError(
        "", "layer",
        std::to_string(layer) + " outside [0, " + std::to_string(spec.num_layers) + ")");
  }
  std::vector<ExpectedTensor> out;
  LayerBuilder builder(spec, layer, &out);
  builder.attention();
  builder.feed_forward(layout);
  return out;
}

std::vector<ExpectedTensor> expected_tensors(const ModelSpec& spec, ExpertLayout layout) {
  const int64_t d = spec.hidden_size;
  std::vector<ExpectedTensor> out = {
      {"model.embed_tokens.weight", {spec.vocab_size, d}, TensorRole::kEmbed}};
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    auto layer = expected_layer_tensors(spec, layout, i);
    out.insert(out.end(), std::make_move_iterator(layer.begin()),
               std::make_move_iterator(layer.end()));
  }
  out.push_back({"model.norm.weight", {d}, TensorRole::kFinalNorm});
  if (!spec.tie_word_embeddings)
    out.push_back({"lm_head.weight", {spec.vocab_size, d}, TensorRole::kLmHead});
  return out;
}

ExpertLayout detect_expert_layout(const ModelSpec& spec,
                                  const std::function<bool(const std::string&)>& has_tensor) {
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    if (!spec.layers[i].is_moe) continue;
    for (const auto& t : expected_layer_tensors(spec, ExpertLayout::kFused, i)) {
      if (t.role == TensorRole::kExpertsGateUp)
        return has_tensor(t.name) ? ExpertLayout::kFused : ExpertLayout::kPerExpert;
    }
  }
  return ExpertLayout::kPerExpert;
}

const char* layout_name(ExpertLayout layout) {
  return layout == ExpertLayout::kFused ? "fused" : "per-expert";
}

bool is_quantizable(TensorRole role) {
  switch (role) {
    case TensorRole::kQ:
    case TensorRole::kK:
    case TensorRole::kV:
    case TensorRole::kO:
    case TensorRole::kQA:
    case TensorRole::kQB:
    case TensorRole::kKVA:
    case TensorRole::kKVB:
    case TensorRole::kDenseGate:
    case TensorRole::kDenseUp:
    case TensorRole::kDenseDown:
    case TensorRole::kExpertGate:
    case TensorRole::kExpertUp:
    case TensorRole::kExpertDown:
    case TensorRole::kExpertsGateUp:
    case TensorRole::kExpertsDown:
    case TensorRole::kSharedGate:
    case TensorRole::kSharedUp:
    case TensorRole::kSharedDown: return true;
    default:
      return false;  // norms, routers, biases, embeddings and the LM head stay as they are (§1.6)
  }
}

}  // namespace lathe
