#include "compressor/model/layer_weights.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "compressor/common/errors.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_source.h"
#include "compressor/model/weight_store.h"

namespace lathe {
namespace {

bool is_routed_expert(TensorRole role) {
  return role == TensorRole::kExpertGate || role == TensorRole::kExpertUp ||
         role == TensorRole::kExpertDown || role == TensorRole::kExpertsGateUp ||
         role == TensorRole::kExpertsDown;
}

at::Tensor load_checked(const WeightStore& store, const ExpectedTensor& t,
                        const at::TensorOptions& options, const DequantizedWeights* source) {
  if (source && source->has(t.name)) {
    at::Tensor v = source->load(t.name);
    if (v.sizes().vec() != t.shape) {
      throw DataError(source->describe(), t.name,
                      "dequantized shape does not match what config.json implies");
    }
    return v.to(options, /*non_blocking=*/false, /*copy=*/false);
  }
  require_tensor(store, t.name, t.shape);
  // Routed experts on the CPU: the zero-copy view in the stored dtype; DecoderLayer::moe converts
  // one expert at a time (see LayerWeights).
  if (options.device().is_cpu() && is_routed_expert(t.role)) return load_tensor(store, t.name);
  return load_tensor(store, t.name).to(options, /*non_blocking=*/false, /*copy=*/true);
}

/// Sets the field of `w` that `role` names; experts go to `w->experts[expert]`.
void assign(LayerWeights* w, TensorRole role, int64_t expert, at::Tensor tensor, int64_t width) {
  switch (role) {
    case TensorRole::kAttnNorm: w->attn_norm = tensor; break;
    case TensorRole::kMlpNorm: w->mlp_norm = tensor; break;
    case TensorRole::kPostAttnNorm: w->post_attn_norm = tensor; break;
    case TensorRole::kPostMlpNorm: w->post_mlp_norm = tensor; break;
    case TensorRole::kQ: w->q.weight = tensor; break;
    case TensorRole::kK: w->k.weight = tensor; break;
    case TensorRole::kV: w->v.weight = tensor; break;
    case TensorRole::kO: w->o.weight = tensor; break;
    case TensorRole::kQBias: w->q.bias = tensor; break;
    case TensorRole::kKBias: w->k.bias = tensor; break;
    case TensorRole::kVBias: w->v.bias = tensor; break;
    case TensorRole::kOBias: w->o.bias = tensor; break;
    case TensorRole::kQNorm: w->q_norm = tensor; break;
    case TensorRole::kKNorm: w->k_norm = tensor; break;
    case TensorRole::kQA: w->q_a.weight = tensor; break;
    case TensorRole::kQABias: w->q_a.bias = tensor; break;
    case TensorRole::kQANorm: w->q_a_norm = tensor; break;
    case TensorRole::kQB: w->q_b.weight = tensor; break;
    case TensorRole::kKVA: w->kv_a.weight = tensor; break;
    case TensorRole::kKVABias: w->kv_a.bias = tensor; break;
    case TensorRole::kKVANorm: w->kv_a_norm = tensor; break;
    case TensorRole::kKVB: w->kv_b.weight = tensor; break;
    case TensorRole::kDenseGate: w->dense_gate.weight = tensor; break;
    case TensorRole::kDenseUp: w->dense_up.weight = tensor; break;
    case TensorRole::kDenseDown: w->dense_down.weight = tensor; break;
    case TensorRole::kRouter: w->router = tensor; break;
    case TensorRole::kRouterBias: w->router_bias = tensor; break;
    case TensorRole::kRouterUp: w->router_up = tensor; break;
    case TensorRole::kRouterScale: w->router_scale = tensor; break;
    case TensorRole::kRouterStock: break;  // read by the qwen2-moe export only
    case TensorRole::kExpertGate: w->experts[expert].gate = tensor; break;
    case TensorRole::kExpertUp: w->experts[expert].up = tensor; break;
    case TensorRole::kExpertDown: w->experts[expert].down = tensor; break;
    case TensorRole::kExpertsGateUp:  // [E, 2I, d]: gate rows first, then up rows (FORMATS.md §2)
      for (size_t e = 0; e < w->experts.size(); ++e) {
        w->experts[e].gate = tensor[e].slice(0, 0, width);
        w->experts[e].up = tensor[e].slice(0, width, 2 * width);
      }
      break;
    case TensorRole::kExpertsDown:
      for (size_t e = 0; e < w->experts.size(); ++e) w->experts[e].down = tensor[e];
      break;
    case TensorRole::kSharedGate: w->shared_gate.weight = tensor; break;
    case TensorRole::kSharedUp: w->shared_up.weight = tensor; break;
    case TensorRole::kSharedDown: w->shared_down.weight = tensor; break;
    case TensorRole::kSharedExpertGate: w->shared_expert_gate = tensor; break;
    default: throw InternalError("", "role", "not a decoder-layer tensor");
  }
}

}  // namespace

LayerWeights load_layer_weights(const ModelSpec& spec, const WeightStore& store,
                                ExpertLayout layout, int64_t layer,
                                const at::TensorOptions& options,
                                const DequantizedWeights* source) {
  LayerWeights w;
  w.layer = layer;
  const LayerSpec& l = spec.layers.at(layer);
  w.experts.resize(l.is_moe ? l.num_experts : 0);
  for (const auto& t : expected_layer_tensors(spec, layout, layer)) {
    assign(&w, t.role, t.expert, load_checked(store, t, options, source), l.expert_intermediate);
    if (source && source->has(t.name))
      w.act_bits = std::max(w.act_bits, source->activation_bits(t.name));
  }
  if (spec.attention.kind == AttentionKind::kMla && spec.attention.q_lora_rank == 0) w.q_b = w.q;
  return w;
}

LayerWeights make_layer_weights(const ModelSpec& spec, ExpertLayout layout, int64_t layer,
                                const std::function<at::Tensor(const std::string&)>& get,
                                const at::TensorOptions& options, int64_t act_bits) {
  LayerWeights w;
  w.layer = layer;
  w.act_bits = act_bits;
  const LayerSpec& l = spec.layers.at(layer);
  w.experts.resize(l.is_moe ? l.num_experts : 0);
  for (const auto& t : expected_layer_tensors(spec, layout, layer)) {
    at::Tensor v = get(t.name);
    if (!v.defined() || v.sizes().vec() != t.shape) {
      throw InternalError("", t.name, "make_layer_weights: missing or misshapen tensor");
    }
    assign(&w, t.role, t.expert, v.to(options), l.expert_intermediate);
  }
  if (spec.attention.kind == AttentionKind::kMla && spec.attention.q_lora_rank == 0) w.q_b = w.q;
  return w;
}

}  // namespace lathe
