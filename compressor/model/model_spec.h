// ModelSpec: the typed view of a Hugging Face config.json (DESIGN.md "Core types").
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace lathe {

/// Model families lathe understands. Adding one means one entry in model_spec.cpp's family table
/// and one in architecture.cpp's name table; passes do not change.
enum class Family {
  kLlama,
  kMistral,
  kQwen2,
  kMixtral,
  kQwen2Moe,
  kQwen3Moe,
  kOlmoe,
  kDeepseekV2,
  kDeepseekV3,
  kGemma3Text
};

/// The HF `model_type` string of a family ("llama", "qwen2_moe", ...).
const char* family_name(Family family);

enum class AttentionKind {
  kGqa,  ///< multi-head / grouped-query attention with q, k, v, o projections
  kMla,  ///< DeepSeek multi-head latent attention (low-rank q and kv projections)
};

/// How the router turns logits into expert weights (FORMATS.md §2 "Routing"). kCmoe: the router of
/// a dense FFN carved by lathe's cmoe pass (ALGORITHMS.md §5.3; docs/cmoe.md): scores
/// s = |(Wc x) ⊙ act(Wg x)|, p = softmax(s), selection TopA(p + b), combine weight 1 + p·λ.
enum class ScoringFunc { kSoftmax, kSigmoid, kCmoe };
/// "softmax", "sigmoid", "cmoe".
const char* scoring_name(ScoringFunc scoring);
/// How group-limited routing scores a group of experts: its best expert (DeepSeek-V2) or the sum of
/// its two best (DeepSeek-V3).
enum class GroupScore { kMax, kTop2Sum };

/// The gate activation of a gated MLP, down(act(gate(x)) * up(x)): config.json's hidden_act
/// (Gemma: hidden_activation) as transformers' ACT2FN maps it.
enum class MlpActivation {
  kSilu,      ///< "silu" (SwiGLU)
  kGeluTanh,  ///< "gelu_pytorch_tanh": torch's gelu(approximate="tanh") (GeGLU, Gemma)
  kGelu,      ///< "gelu": exact (erf) GELU
};

/// Attention geometry. For GQA, q/k/v have `num_heads`/`num_kv_heads` heads of `head_dim`.
/// For MLA, `head_dim` is unused and the *_rank / *_head_dim fields apply.
struct AttentionSpec {
  AttentionKind kind = AttentionKind::kGqa;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  bool qkv_bias = false;  ///< q/k/v projections carry a bias (Qwen2 always; llama `attention_bias`)
  bool o_bias = false;    ///< o_proj carries a bias (llama `attention_bias`)
  bool qk_norm_per_head = false;  ///< RMSNorm over each head (Qwen3): weight [head_dim]
  bool qk_norm_full = false;      ///< RMSNorm over all heads (OLMoE): weight [heads*head_dim]
  std::optional<int64_t> sliding_window;  ///< tokens, when the config enables a window
  std::optional<double> clip_qkv;         ///< OLMoE: clamp q, k, v to ±clip_qkv
  /// Gemma: attention scores scale by query_pre_attn_scalar^-0.5 instead of head_dim^-0.5.
  std::optional<double> query_pre_attn_scalar;
  // MLA only.
  int64_t q_lora_rank = 0;  ///< 0: q is a full projection (q_proj), else q_a_proj/q_b_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  bool rope_interleave = false;  ///< RoPE rotates pairs (x0,x1),(x2,x3)... instead of halves
};

/// Rotary position embedding parameters. `scaling_type` is "default" when unscaled.
struct RopeSpec {
  double theta = 10000.0;
  std::string scaling_type = "default";
  double factor = 1.0;
  /// The whole scaling object from the config (v4 `rope_scaling` or v5 `rope_parameters`) as JSON
  /// text, so family-specific fields (yarn's beta_fast, llama3's low_freq_factor...) survive.
  std::string parameters_json = "{}";
};

/// Gemma 3's local attention: the layers of type "sliding_attention" see `window` tokens (key j is
/// visible to query i when 0 ≤ i − j < window) and rotate with their own RoPE (the local base).
struct LocalAttention {
  int64_t window = 0;
  RopeSpec rope;
};

/// The routing rule shared by all MoE layers of a model.
struct RoutingRule {
  ScoringFunc scoring = ScoringFunc::kSoftmax;
  bool renormalize = false;     ///< top-k weights renormalised to sum to 1
  double scaling_factor = 1.0;  ///< routed_scaling_factor applied to routed weights
  bool selection_bias = false;  ///< e_score_correction_bias added for selection only (V3)
  int64_t num_groups = 1;       ///< n_group; 1 = no group-limited routing
  int64_t topk_groups = 1;      ///< topk_group
  GroupScore group_score = GroupScore::kMax;
  bool shared_expert_gate =
      false;  ///< Qwen2-MoE: sigmoid(shared_expert_gate(x)) scales the shared expert
};

/// One decoder layer's feed-forward layout. Expert counts are per layer because pruning makes them
/// differ.
struct LayerSpec {
  bool is_moe = false;
  int64_t dense_intermediate = 0;   ///< FFN width of a dense layer (0 for MoE layers)
  int64_t num_experts = 0;          ///< routed experts (0 for dense layers)
  int64_t top_k = 0;                ///< experts selected per token
  int64_t expert_intermediate = 0;  ///< width of one routed expert
  int64_t num_shared_experts = 0;   ///< shared experts fused into one MLP on disk
  int64_t shared_intermediate = 0;  ///< total width of the shared MLP (0 when none)
  /// Gemma 3 "sliding_attention" layer: ModelSpec::local_attention's window and RoPE apply.
  bool sliding_attention = false;
};

/// Typed, validated view of config.json. Every field is filled; family defaults apply where the
/// config omits a field the way transformers does.
struct ModelSpec {
  Family family = Family::kLlama;
  std::string model_type;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  std::string hidden_act = "silu";  ///< as declared (Gemma: hidden_activation)
  MlpActivation mlp_activation = MlpActivation::kSilu;
  /// Gemma: every RMSNorm multiplies by (1 + w) in fp32, then casts (weights are 0-centred).
  bool norm_plus_one = false;
  /// Gemma 2/3: post_attention_layernorm and post_feedforward_layernorm normalise each block's
  /// output before the residual add; pre_feedforward_layernorm is then the MLP's input norm.
  bool sandwich_norms = false;
  /// Gemma: token embeddings are multiplied by sqrt(hidden_size), rounded to the working dtype;
  /// 1 for the other families. The tied LM head uses the unscaled table.
  double embedding_scale = 1.0;
  std::string torch_dtype;  ///< as declared ("bfloat16", ...); empty when absent
  AttentionSpec attention;
  RopeSpec rope;  ///< every layer's RoPE, except the sliding layers when local_attention is set
  std::optional<LocalAttention> local_attention;  ///< Gemma 3 sliding layers; nullopt otherwise
  RoutingRule routing;
  std::vector<LayerSpec> layers;
  /// A model carved by lathe's cmoe pass (config.json model_type "lathe_cmoe"): its carved layers
  /// are MoE layers with routing.scoring kCmoe; `family` is the base family (llama, qwen2, …).
  bool carved = false;

  /// True when any layer is MoE.
  bool is_moe() const;
  /// Routed experts per layer; nullopt for dense layers.
  std::vector<std::optional<int64_t>> experts_per_layer() const;
  /// The window of layer `layer`'s attention (query i sees key j when 0 ≤ i − j < window): the
  /// local window on Gemma 3 sliding layers, else attention.sliding_window; nullopt: unlimited.
  std::optional<int64_t> attention_window(int64_t layer) const;
};

/// Parses a config.json object. `file_label` names the file in errors.
/// Throws ConfigError naming the field when a required field is missing, has the wrong type or is
/// inconsistent (e.g. heads not dividing hidden size); UnsupportedError for an unknown model_type.
ModelSpec parse_model_spec(const nlohmann::json& config, const std::string& file_label);

/// Writes routed-expert counts into a config.json (`per_layer`: one entry per decoder layer, 0 for
/// dense ones). One count for every MoE layer goes into whichever of num_local_experts /
/// num_experts / n_routed_experts the config has, and num_experts_per_layer is dropped; different
/// counts go into lathe's own num_experts_per_layer (FORMATS.md §6). Returns whether the counts
/// were uniform. The one place that rewrites expert counts (apply's output, the padded exports).
bool write_expert_counts(nlohmann::json& config, const ModelSpec& spec,
                         const std::vector<int64_t>& per_layer);

/// The model_type of a carved model's config.json, and its object holding the carve.
inline constexpr const char* kCmoeModelType = "lathe_cmoe";

/// Turns a dense model's config.json into its carved model's (docs/cmoe.md "Checkpoint"):
/// model_type becomes "lathe_cmoe", the base model_type and every carved layer's sizes go into
/// config["lathe_cmoe"] (`carved[i]` = the LayerSpec of decoder layer i; dense entries are left
/// out), and architectures names lathe's class so transformers refuses it clearly. A config that is
/// already carved keeps its base and gets the new layer list.
void write_cmoe_config(nlohmann::json& config, const ModelSpec& spec,
                       const std::vector<LayerSpec>& layers);

/// Reads and parses `<model_dir>/config.json`. Throws ResourceError when the file is missing,
/// DataError when it is not JSON, then as parse_model_spec.
ModelSpec load_model_spec(const std::filesystem::path& model_dir);

/// Parses a family name as used in config.json's model_type; nullopt when unknown.
std::optional<Family> family_from_name(const std::string& model_type);

}  // namespace lathe
