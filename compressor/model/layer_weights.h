// The materialised weights of one decoder layer, loaded through the architecture registry.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"

namespace lathe {

class WeightStore;
class DequantizedWeights;

/// A linear map y = x Wᵀ + b; `bias` is undefined when the layer has none.
struct Linear {
  at::Tensor weight;  ///< [out, in]
  at::Tensor bias;    ///< [out] or undefined
};

/// One routed expert (SwiGLU): down(act(gate(x)) * up(x)). On the CPU these are zero-copy views
/// of the checkpoint in its stored dtype (often bf16), not working precision; see LayerWeights.
/// Convert at the point of use: `.to(x.scalar_type())` (a no-op when already equal).
struct ExpertWeights {
  at::Tensor gate;  ///< [I, d]
  at::Tensor up;    ///< [I, d]
  at::Tensor down;  ///< [d, I]
};

/// Every tensor of one decoder layer on the working device. Fields that the layer's family or kind
/// does not use stay undefined.
///
/// Precision: every tensor except the routed experts is a copy in working precision. The routed
/// experts (`experts[e].gate/up/down`, including the slices of a fused gate_up_proj/down_proj) are
/// converted lazily on the CPU: they stay zero-copy views into the memory-mapped checkpoint in the
/// stored dtype, and DecoderLayer converts one expert at a time right before using it, so a layer
/// of many experts never exists in fp32 at once (DESIGN.md "Memory model"). Code reading an expert
/// must not assume the working dtype, and must not write to it (the bytes belong to the mapping).
/// On any other device the experts are converted and copied eagerly, like the rest.
struct LayerWeights {
  int64_t layer = -1;
  at::Tensor attn_norm, mlp_norm;
  at::Tensor post_attn_norm, post_mlp_norm;  ///< Gemma's sandwich norms (ModelSpec::sandwich_norms)
  Linear q, k, v, o;
  at::Tensor q_norm, k_norm;
  Linear q_a, q_b, kv_a, kv_b;  ///< MLA (q_b is q_proj when q_lora_rank is 0, then q_a is unused)
  at::Tensor q_a_norm, kv_a_norm;
  Linear dense_gate, dense_up, dense_down;
  at::Tensor router;       ///< [E, d]
  at::Tensor router_bias;  ///< [E] selection bias (e_score_correction_bias; cmoe carves: b)
  /// cmoe carves (ALGORITHMS.md §5.3): `router` is Wg, `router_up` Wc [E, d], `router_scale`
  /// extra_scale λ [E].
  at::Tensor router_up, router_scale;
  std::vector<ExpertWeights> experts;
  Linear shared_gate, shared_up, shared_down;
  at::Tensor shared_expert_gate;  ///< [1, d]
  /// Activation bits of the quantized linears' inputs (W8A8: 8 = int8 symmetric per token,
  /// dynamic, applied to the input of every q/k/v/o, MLP, expert and shared-expert linear;
  /// routers excepted). 0 = full precision.
  int64_t act_bits = 0;
};

/// Loads layer `layer` from `store` (either expert layout) into `options` (dtype, device), checking
/// every tensor's presence and shape against the spec. Throws DataError naming the tensor. Routed
/// experts stay in their stored dtype on the CPU (see LayerWeights). The experts' pages become
/// resident as they are read; WeightStore::release (CausalLM::release_layer) drops them.
/// Tensors that `source` holds (quantized checkpoints) come from it instead, dequantized (fp32,
/// then `options`), and set act_bits when the format quantizes their inputs.
LayerWeights load_layer_weights(const ModelSpec& spec, const WeightStore& store,
                                ExpertLayout layout, int64_t layer,
                                const at::TensorOptions& options,
                                const DequantizedWeights* source = nullptr);

/// The same from tensors already in memory: `get(name)` returns each tensor expected_layer_tensors
/// names (any float dtype, CPU); shapes are checked (InternalError: the caller built them). Every
/// tensor is converted to `options` (experts included). `act_bits` as the quantized format says.
LayerWeights make_layer_weights(const ModelSpec& spec, ExpertLayout layout, int64_t layer,
                                const std::function<at::Tensor(const std::string&)>& get,
                                const at::TensorOptions& options, int64_t act_bits = 0);

}  // namespace lathe
