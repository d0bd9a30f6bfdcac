// Architecture registry: maps logical tensors (layer i, expert e, role) to checkpoint names, one
// small table per family (DESIGN.md "Core types"; FORMATS.md §2 "Tensor names").
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "compressor/model/model_spec.h"

namespace lathe {

/// What a checkpoint tensor is, independent of the family's naming.
enum class TensorRole {
  kEmbed,
  kFinalNorm,
  kLmHead,
  kAttnNorm,
  kMlpNorm,  // the attention and MLP input norms (Gemma: pre_feedforward_layernorm)
  kPostAttnNorm,
  kPostMlpNorm,  // Gemma's norms of the attention and MLP outputs
  kQ,
  kK,
  kV,
  kO,
  kQBias,
  kKBias,
  kVBias,
  kOBias,
  kQNorm,
  kKNorm,
  // DeepSeek multi-head latent attention.
  kQA,
  kQABias,
  kQANorm,
  kQB,
  kKVA,
  kKVABias,
  kKVANorm,
  kKVB,
  kDenseGate,
  kDenseUp,
  kDenseDown,
  kRouter,
  kRouterBias,
  kRouterUp,     // cmoe carves (ALGORITHMS.md §5.3): Wc [E, d] (kRouter holds Wg)
  kRouterScale,  // cmoe carves: extra_scale λ [E]
  kRouterStock,  // cmoe carves: the linear softmax router fitted for stock runtimes [E, d]
  kExpertGate,
  kExpertUp,
  kExpertDown,  // per-expert layout
  kExpertsGateUp,
  kExpertsDown,  // fused 3-D layout: [E, 2I, d] and [E, d, I]
  kSharedGate,
  kSharedUp,
  kSharedDown,
  kSharedExpertGate,
};

/// Parameter categories reported by `lathe inspect`. The Qwen2-MoE shared-expert gate counts as
/// router; q/k norms and MLA's latent norms count as norm.
enum class Category {
  kEmbedding,
  kAttention,
  kDenseMlp,
  kRoutedExperts,
  kSharedExperts,
  kRouter,
  kNorm,
  kLmHead
};

/// Stable JSON key of a category ("embedding", "routed_experts", ...).
const char* category_key(Category category);
/// All categories, in report order.
const std::vector<Category>& all_categories();
/// The category a role belongs to.
Category category_of(TensorRole role);

/// Linears a weight-quantization pass may touch and an export packs: attention, MLP, expert and
/// shared-expert projections. Routers, norms, biases, embeddings and the LM head never are
/// (ALGORITHMS.md §1.6).
bool is_quantizable(TensorRole role);

/// How routed experts are stored on disk (FORMATS.md §2): one tensor per expert and projection,
/// or transformers v5's fused 3-D tensors per layer.
enum class ExpertLayout { kPerExpert, kFused };

/// One tensor a checkpoint of this spec must contain, with its expected shape ([out, in] order).
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role;
  int64_t layer = -1;   ///< decoder layer, -1 for embeddings, final norm and LM head
  int64_t expert = -1;  ///< routed expert id, -1 otherwise
};

/// Every tensor a checkpoint of `spec` holds in `layout`, in model order (embedding, layers, norm,
/// head). A tied LM head is not listed. Experts are numbered 0..num_experts-1 per layer.
std::vector<ExpectedTensor> expected_tensors(const ModelSpec& spec, ExpertLayout layout);

/// The expected tensors of one decoder layer only.
std::vector<ExpectedTensor> expected_layer_tensors(const ModelSpec& spec, ExpertLayout layout,
                                                   int64_t layer);

/// Decides the expert layout from which names exist (`has_tensor`). Dense models and checkpoints
/// with per-expert keys give kPerExpert; a fused `experts.gate_up_proj` in the first MoE layer
/// gives kFused.
ExpertLayout detect_expert_layout(const ModelSpec& spec,
                                  const std::function<bool(const std::string&)>& has_tensor);

/// Stable name of a layout: "per-expert" or "fused".
const char* layout_name(ExpertLayout layout);

}  // namespace lathe
