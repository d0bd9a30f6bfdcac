// One decoder layer's forward for every supported family (DESIGN.md "Core types": DecoderLayer).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "compressor/model/layer_weights.h"
#include "compressor/model/model_spec.h"
#include "compressor/model/rotary.h"
#include "compressor/model/taps.h"

namespace lathe {

/// What a layer needs besides its weights, shared by all layers of one forward.
/// Relaxed expert pruning (DiEP, NAEE; ALGORITHMS.md §3, §7; docs/diep.md) of one MoE layer:
/// `log_gate` [E] fp32 is added to the routing (softmax routers: to the logits, for selection and
/// combine; sigmoid routers: to the selection score), and g = exp(log_gate) multiplies each
/// selected expert's final combine weight; so −inf removes an expert exactly as surgery does and 0
/// changes nothing. `routed_scale` (a scalar, β) multiplies the routed experts' sum (shared experts
/// untouched). Undefined tensors: no change. Both may require grad.
struct ExpertGate {
  at::Tensor log_gate;
  at::Tensor routed_scale;
};

struct ForwardContext {
  at::Tensor valid;      ///< [B, T] bool: real tokens (false = padding)
  at::Tensor attn_mask;  ///< [B, 1, T, T] bool: causal ∧ valid keys (see make_attention_mask)
  RotaryTables rope;     ///< tables for the attention kind's rotary dims
  /// Gemma 3 sliding layers (LayerSpec::sliding_attention): their windowed mask and local-base
  /// RoPE tables; undefined when the model has no local attention.
  at::Tensor local_attn_mask;
  RotaryTables local_rope;
  TapObserver* observer = nullptr;
  int64_t sequence_begin = 0;  ///< first sequence of this batch in the whole run (TapEvent)
  /// Indexed by decoder layer (null, or shorter than the model: no gates). Not owned.
  const std::vector<ExpertGate>* expert_gates = nullptr;
};

/// Symmetric per-token (last dim) fake quantization of activations (ALGORITHMS.md §2.2): scale_t =
/// max|x_t| / (2^(bits−1) − 1), x̂ = scale_t · clamp(round(x / scale_t)); all-zero rows stay zero.
/// Computed in fp32, returned in x's dtype.
at::Tensor quantize_activations_per_token(const at::Tensor& x, int64_t bits);

/// Builds the attention mask: key j is visible to query i when j ≤ i, j is a real token and (with a
/// window) i − j < window. A query that would see nothing (leading padding) sees itself, so padded
/// rows stay finite; their outputs are never used.
at::Tensor make_attention_mask(const at::Tensor& valid, std::optional<int64_t> sliding_window);

/// Builds the context for a [B, T] batch of `spec` on `options`' device and dtype (with the local
/// mask and tables when spec.local_attention is set).
ForwardContext make_forward_context(const ModelSpec& spec, const at::Tensor& valid,
                                    const at::TensorOptions& options, TapObserver* observer);

/// Points a layer forward can start from (DecoderLayer::run): the layer input, the attention heads
/// (the input of o_proj), the MLP input, and (dense MLPs) the input of down_proj. The apply stage's
/// replays resume from them when nothing upstream of the point changed (compressor/pipeline/
/// layer_replay.h).
enum class LayerPoint { kInput = 0, kHeads, kMlpIn, kMlpAct };

/// The values of one layer forward at its resume points. DecoderLayer::run reads those the start
/// point needs and fills the later ones as it computes them.
struct LayerState {
  at::Tensor hidden;  ///< [B, T, d] the layer input
  at::Tensor
      heads;  ///< [B, T, H·D_v] attention heads concatenated, the input of o_proj (Tap::kAttnOutIn)
  at::Tensor h;       ///< [B, T, d] the residual stream after the attention block
  at::Tensor mlp_in;  ///< [B, T, d] the MLP block's input (Tap::kMlpIn)
  at::Tensor act;  ///< [B, T, I] dense MLPs: act(gate)·up, the input of down_proj (Tap::kMlpAct)
};

/// The weights of one layer plus the family rules to run them. Immutable after construction.
class DecoderLayer {
 public:
  DecoderLayer(const ModelSpec& spec, LayerWeights weights);

  /// hidden [B, T, d] → [B, T, d]. Reports taps to ctx.observer when it wants them.
  at::Tensor forward(const at::Tensor& hidden, const ForwardContext& ctx) const;

  /// The forward from `from`, with what `state` holds for it (kInput: hidden; kHeads: hidden and
  /// heads; kMlpIn: h and mlp_in; kMlpAct: h and act, dense MLP layers only), computing exactly
  /// what forward computes from there. Fills the later fields of `state` as they are computed (each
  /// before its tap is reported, so they are there when an observer stops the forward). The start
  /// point's own tap is reported (kHeads: kAttnOutIn, kMlpIn: kMlpIn, kMlpAct: kMlpAct), earlier
  /// ones are not. Returns the layer output.
  at::Tensor run(LayerPoint from, LayerState& state, const ForwardContext& ctx) const;

  /// The MLP block alone (dense SwiGLU or MoE: router, routed and shared experts) on its input
  /// (after post_attention_layernorm), [B, T, d] or [N, d]; the residual is not added. Reports the
  /// block's taps like forward.
  at::Tensor mlp(const at::Tensor& mlp_in, const ForwardContext& ctx) const;

  /// MoE layers: every routed expert's combine weight per token, [N, E] fp32 (0 where the router
  /// does not select it), exactly as the MoE block weights its experts (ctx.expert_gates applied;
  /// β not included). x: [N, d].
  at::Tensor routing_weights(const at::Tensor& x, const ForwardContext& ctx) const;
  /// MoE layers: routed expert e's FFN on every row of x [N, d], unweighted, in x's dtype.
  at::Tensor expert_forward(int64_t e, const at::Tensor& x) const;

  const LayerWeights& weights() const { return weights_; }

 private:
  /// The attention heads concatenated (the input of o_proj), before o_proj; reports nothing past
  /// kAttnIn.
  at::Tensor attention_heads(const at::Tensor& x, const ForwardContext& ctx) const;
  at::Tensor gqa_heads(const at::Tensor& x, const ForwardContext& ctx) const;
  /// A dense MLP's act(gate(x))·up(x), and its down_proj.
  at::Tensor dense_act(const at::Tensor& mlp_in) const;
  at::Tensor dense_down(const at::Tensor& act) const;
  /// The model's norm (model_rms_norm) with this layer's weight.
  at::Tensor norm(const at::Tensor& x, const at::Tensor& weight) const;
  at::Tensor mla_heads(const at::Tensor& x, const ForwardContext& ctx) const;
  at::Tensor moe(const at::Tensor& x, const ForwardContext& ctx) const;
  /// Router top-k: fills `weights` [N, k] (fp32) and `experts` [N, k] (int64) per the routing rule.
  void route(const at::Tensor& x, const ForwardContext& ctx, at::Tensor* weights,
             at::Tensor* experts) const;
  /// route for a cmoe carve (ScoringFunc::kCmoe).
  void route_carved(const at::Tensor& x, const ForwardContext& ctx, at::Tensor* weights,
                    at::Tensor* experts) const;
  /// The input of a quantized linear as the format computes it: per-token int8 when act_bits.
  at::Tensor aq(const at::Tensor& x) const {
    return weights_.act_bits ? quantize_activations_per_token(x, weights_.act_bits) : x;
  }
  void report(const ForwardContext& ctx, Tap tap, const at::Tensor& value, int64_t expert = -1,
              const at::Tensor* index = nullptr) const;

  const ModelSpec& spec_;
  LayerWeights weights_;
};

/// Decoder-layer forward calls made by this process so far (every DecoderLayer::forward, any
/// thread). Tests use it to prove that a stage did or did not run the model.
int64_t decoder_layer_forward_count();

/// RMSNorm as transformers computes it: x · rsqrt(mean(x²) + eps) · weight, in fp32.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

/// Gemma's RMSNorm (transformers' Gemma3RMSNorm): x·rsqrt(mean(x²) + eps)·(1 + w) all in fp32, then
/// cast to x's dtype (llama-style rms_norm casts before multiplying by w).
at::Tensor rms_norm_plus_one(const at::Tensor& x, const at::Tensor& weight, double eps);

/// The model's RMSNorm: rms_norm_plus_one when spec.norm_plus_one, else rms_norm; eps from spec.
at::Tensor model_rms_norm(const ModelSpec& spec, const at::Tensor& x, const at::Tensor& weight);

/// The gated MLP's activation of gate(x) (spec.mlp_activation), in x's dtype.
at::Tensor gate_activation(const ModelSpec& spec, const at::Tensor& x);

/// A cmoe carve's router scores s = |(Wc x) ⊙ act(Wg x)| on the raw MLP input x [n, d], fp32
/// [n, E] (ALGORITHMS.md §5.3); differentiable in Wg and Wc (router fine-tuning).
at::Tensor cmoe_router_scores(const ModelSpec& spec, const at::Tensor& x, const at::Tensor& wg,
                              const at::Tensor& wc);

}  // namespace lathe
