#include "compressor/model/decoder_layer.h"

#include <ATen/ATen.h>

#include <atomic>
#include <cmath>

#include "compressor/common/errors.h"

namespace lathe {
namespace {

std::atomic<int64_t> g_forward_calls{0};

at::Tensor linear(const at::Tensor& x, const Linear& l) {
  return l.bias.defined() ? at::linear(x, l.weight, l.bias) : at::linear(x, l.weight);
}

/// [B, T, H·D] → [B, H, T, D]
at::Tensor heads(const at::Tensor& x, int64_t n, int64_t d) {
  return x.view({x.size(0), x.size(1), n, d}).transpose(1, 2);
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& mask, double scale) {
  const int64_t rep = q.size(1) / k.size(1);
  const at::Tensor kk = rep == 1 ? k : k.repeat_interleave(rep, 1);
  const at::Tensor vv = rep == 1 ? v : v.repeat_interleave(rep, 1);
  const at::Tensor out = at::scaled_dot_product_attention(q, kk, vv, mask, 0.0, false, scale);
  return out.transpose(1, 2).reshape({q.size(0), q.size(2), -1});
}

/// The relaxation of layer `layer` in this forward (ForwardContext::expert_gates), or nullptr.
const ExpertGate* expert_gate(const ForwardContext& ctx, int64_t layer) {
  return ctx.expert_gates && layer < static_cast<int64_t>(ctx.expert_gates->size())
             ? &(*ctx.expert_gates)[layer]
             : nullptr;
}

}  // namespace

at::Tensor quantize_activations_per_token(const at::Tensor& x, int64_t bits) {
  const double qmax = static_cast<double>((int64_t{1} << (bits - 1)) - 1);
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor scale = xf.abs().amax(-1, /*keepdim=*/true) / qmax;
  const at::Tensor safe = at::where(scale > 0, scale, at::ones_like(scale));
  return (at::round(xf / safe).clamp(-qmax, qmax) * safe).to(x.scalar_type());
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return weight * normed.to(x.scalar_type());
}

at::Tensor rms_norm_plus_one(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return (normed * (1.0 + weight.to(at::kFloat))).to(x.scalar_type());
}

at::Tensor model_rms_norm(const ModelSpec& spec, const at::Tensor& x, const at::Tensor& weight) {
  return spec.norm_plus_one ? rms_norm_plus_one(x, weight, spec.rms_norm_eps)
                            : rms_norm(x, weight, spec.rms_norm_eps);
}

at::Tensor gate_activation(const ModelSpec& spec, const at::Tensor& x) {
  switch (spec.mlp_activation) {
    case MlpActivation::kGeluTanh: return at::gelu(x, "tanh");
    case MlpActivation::kGelu: return at::gelu(x);
    case MlpActivation::kSilu: break;
  }
  return at::silu(x);
}

at::Tensor make_attention_mask(const at::Tensor& valid, std::optional<int64_t> sliding_window) {
  const int64_t t = valid.size(1);
  const at::Tensor pos = at::arange(t, valid.options().dtype(at::kLong));
  at::Tensor allowed = pos.unsqueeze(1) >= pos.unsqueeze(0);  // [T, T]: key j ≤ query i
  if (sliding_window) allowed = allowed & (pos.unsqueeze(1) - pos.unsqueeze(0) < *sliding_window);
  at::Tensor mask = allowed.unsqueeze(0) & valid.unsqueeze(1);  // [B, T, T]
  const at::Tensor self = at::eye(t, valid.options()).unsqueeze(0);
  mask = at::where(mask.any(-1, true), mask, self);
  return mask.unsqueeze(1);
}

ForwardContext make_forward_context(const ModelSpec& spec, const at::Tensor& valid,
                                    const at::TensorOptions& options, TapObserver* observer) {
  ForwardContext ctx;
  ctx.valid = valid.to(options.device(), at::kBool);
  ctx.attn_mask = make_attention_mask(ctx.valid, spec.attention.sliding_window);
  const AttentionSpec& a = spec.attention;
  const int64_t rot = a.kind == AttentionKind::kMla ? a.qk_rope_head_dim : a.head_dim;
  ctx.rope = rotary_tables(spec.rope, rot, valid.size(1), spec.max_position_embeddings, options);
  if (spec.local_attention) {
    ctx.local_attn_mask = make_attention_mask(ctx.valid, spec.local_attention->window);
    ctx.local_rope = rotary_tables(spec.local_attention->rope, rot, valid.size(1),
                                   spec.max_position_embeddings, options);
  }
  ctx.observer = observer;
  return ctx;
}

DecoderLayer::DecoderLayer(const ModelSpec& spec, LayerWeights weights)
    : spec_(spec), weights_(std::move(weights)) {}

void DecoderLayer::report(const ForwardContext& ctx, Tap tap, const at::Tensor& value,
                          int64_t expert, const at::Tensor* index) const {
  if (!ctx.observer || !ctx.observer->wants(tap, weights_.layer)) return;
  const at::Tensor valid = ctx.valid.reshape({-1});
  const at::Tensor flat = value.dim() == 3 ? value.reshape({-1, value.size(-1)}) : value;
  ctx.observer->observe({tap, weights_.layer, expert, &flat, index, &valid, ctx.sequence_begin,
                         ctx.valid.size(1), &weights_});
}

at::Tensor DecoderLayer::norm(const at::Tensor& x, const at::Tensor& weight) const {
  return model_rms_norm(spec_, x, weight);
}

int64_t decoder_layer_forward_count() {
  return g_forward_calls.load();
}

at::Tensor DecoderLayer::forward(const at::Tensor& hidden, const ForwardContext& ctx) const {
  LayerState state;
  state.hidden = hidden;
  return run(LayerPoint::kInput, state, ctx);
}

at::Tensor DecoderLayer::run(LayerPoint from, LayerState& s, const ForwardContext& ctx) const {
  g_forward_calls.fetch_add(1, std::memory_order_relaxed);
  const bool dense = !spec_.layers[weights_.layer].is_moe;
  if (from == LayerPoint::kMlpAct && !dense)
    throw InternalError("", "", "DecoderLayer::run: kMlpAct on an MoE layer");
  if (from == LayerPoint::kInput) {
    const at::Tensor attn_in = norm(s.hidden, weights_.attn_norm);
    report(ctx, Tap::kAttnIn, attn_in);
    s.heads = attention_heads(attn_in, ctx);
  }
  if (from <= LayerPoint::kHeads) {
    report(ctx, Tap::kAttnOutIn, s.heads);
    at::Tensor attn_out = linear(aq(s.heads), weights_.o);
    if (spec_.sandwich_norms) attn_out = norm(attn_out, weights_.post_attn_norm);
    s.h = s.hidden + attn_out;
    s.mlp_in = norm(s.h, weights_.mlp_norm);
  }
  at::Tensor mlp_out;
  if (from <= LayerPoint::kMlpIn) {
    report(ctx, Tap::kMlpIn, s.mlp_in);
    if (dense) {
      s.act = dense_act(s.mlp_in);
    } else {
      mlp_out = moe(s.mlp_in, ctx);
    }
  }
  if (dense) {
    report(ctx, Tap::kMlpAct, s.act);
    mlp_out = dense_down(s.act);
  }
  if (spec_.sandwich_norms) mlp_out = norm(mlp_out, weights_.post_mlp_norm);
  at::Tensor out = s.h + mlp_out;
  report(ctx, Tap::kLayerOut, out);
  return out;
}

at::Tensor DecoderLayer::dense_act(const at::Tensor& mlp_in) const {
  const at::Tensor in = aq(mlp_in);
  return gate_activation(spec_, at::linear(in, weights_.dense_gate.weight)) *
         at::linear(in, weights_.dense_up.weight);
}

at::Tensor DecoderLayer::dense_down(const at::Tensor& act) const {
  return at::linear(aq(act), weights_.dense_down.weight);
}

at::Tensor DecoderLayer::mlp(const at::Tensor& mlp_in, const ForwardContext& ctx) const {
  if (spec_.layers[weights_.layer].is_moe) return moe(mlp_in, ctx);
  const at::Tensor act = dense_act(mlp_in);
  report(ctx, Tap::kMlpAct, act);
  return dense_down(act);
}

at::Tensor DecoderLayer::attention_heads(const at::Tensor& x, const ForwardContext& ctx) const {
  return spec_.attention.kind == AttentionKind::kMla ? mla_heads(x, ctx) : gqa_heads(x, ctx);
}

at::Tensor DecoderLayer::gqa_heads(const at::Tensor& x, const ForwardContext& ctx) const {
  const AttentionSpec& a = spec_.attention;
  const LayerWeights& w = weights_;
  const at::Tensor xq = aq(x);
  at::Tensor q = linear(xq, w.q), k = linear(xq, w.k), v = linear(xq, w.v);
  if (a.qk_norm_full) {  // OLMoE: one norm over all heads, before the head split
    q = norm(q, w.q_norm);
    k = norm(k, w.k_norm);
  }
  if (a.clip_qkv) {
    q = q.clamp(-*a.clip_qkv, *a.clip_qkv);
    k = k.clamp(-*a.clip_qkv, *a.clip_qkv);
    v = v.clamp(-*a.clip_qkv, *a.clip_qkv);
  }
  q = heads(q, a.num_heads, a.head_dim);
  k = heads(k, a.num_kv_heads, a.head_dim);
  v = heads(v, a.num_kv_heads, a.head_dim);
  if (a.qk_norm_per_head) {  // Qwen3, Gemma 3: a norm over each head
    q = norm(q, w.q_norm);
    k = norm(k, w.k_norm);
  }
  const bool local =
      spec_.layers[w.layer].sliding_attention;  // Gemma 3: window and local RoPE base
  const RotaryTables& rope = local ? ctx.local_rope : ctx.rope;
  q = apply_rotary(q, rope, false);
  k = apply_rotary(k, rope, false);
  // Gemma: query_pre_attn_scalar ** -0.5 as transformers computes it; the others 1/sqrt(head_dim).
  const double scale = a.query_pre_attn_scalar ? std::pow(*a.query_pre_attn_scalar, -0.5)
                                               : 1.0 / std::sqrt(static_cast<double>(a.head_dim));
  return attend(q, k, v, local ? ctx.local_attn_mask : ctx.attn_mask, scale);
}

at::Tensor DecoderLayer::mla_heads(const at::Tensor& x, const ForwardContext& ctx) const {
  const AttentionSpec& a = spec_.attention;
  const LayerWeights& w = weights_;
  const int64_t b = x.size(0), t = x.size(1), nope = a.qk_nope_head_dim, rope = a.qk_rope_head_dim;
  const at::Tensor xq = aq(x);
  const at::Tensor q_in =
      a.q_lora_rank > 0 ? aq(rms_norm(linear(xq, w.q_a), w.q_a_norm, spec_.rms_norm_eps)) : xq;
  const at::Tensor q = heads(linear(q_in, w.q_b), a.num_heads, nope + rope);
  const at::Tensor kv = linear(xq, w.kv_a);
  const at::Tensor latent =
      rms_norm(kv.slice(-1, 0, a.kv_lora_rank), w.kv_a_norm, spec_.rms_norm_eps);
  const at::Tensor k_rot = kv.slice(-1, a.kv_lora_rank).view({b, 1, t, rope});
  const at::Tensor kv_heads = heads(linear(aq(latent), w.kv_b), a.num_heads, nope + a.v_head_dim);
  const at::Tensor query = at::cat(
      {q.slice(-1, 0, nope), apply_rotary(q.slice(-1, nope), ctx.rope, a.rope_interleave)}, -1);
  const at::Tensor k_rot_all =
      apply_rotary(k_rot, ctx.rope, a.rope_interleave).expand({b, a.num_heads, t, rope});
  const at::Tensor key = at::cat({kv_heads.slice(-1, 0, nope), k_rot_all}, -1);
  const at::Tensor value = kv_heads.slice(-1, nope);
  const double scale =
      softmax_scale_factor(spec_.rope) / std::sqrt(static_cast<double>(nope + rope));
  return attend(query, key, value, ctx.attn_mask, scale);
}

void DecoderLayer::route(const at::Tensor& x, const ForwardContext& ctx, at::Tensor* weights,
                         at::Tensor* experts) const {
  const RoutingRule& r = spec_.routing;
  if (r.scoring == ScoringFunc::kCmoe) return route_carved(x, ctx, weights, experts);
  const int64_t k = spec_.layers[weights_.layer].top_k;
  const at::Tensor logits = at::linear(x.to(at::kFloat), weights_.router.to(at::kFloat));
  report(ctx, Tap::kRouterLogits, logits);
  const ExpertGate* gate = expert_gate(ctx, weights_.layer);
  const at::Tensor log_gate =
      gate && gate->log_gate.defined() ? gate->log_gate.to(at::kFloat) : at::Tensor();
  if (r.scoring == ScoringFunc::kSoftmax) {
    at::Tensor probs = (log_gate.defined() ? logits + log_gate : logits).softmax(-1);
    if (r.num_groups > 1) {  // DeepSeek-V2 group_limited_greedy: groups scored by their best expert
      const int64_t n = probs.size(0), e = probs.size(1);
      const at::Tensor group_best =
          std::get<0>(probs.view({n, r.num_groups, e / r.num_groups}).max(-1));
      const at::Tensor keep = at::zeros_like(group_best)
                                  .scatter_(1, std::get<1>(group_best.topk(r.topk_groups, -1)), 1);
      probs = probs.masked_fill(~keep.unsqueeze(-1)
                                     .expand({n, r.num_groups, e / r.num_groups})
                                     .reshape({n, e})
                                     .to(at::kBool),
                                0.0);
    }
    std::tie(*weights, *experts) = probs.topk(k, -1);
    report(ctx, Tap::kRouterTopK, *experts);
    if (r.renormalize) *weights = *weights / weights->sum(-1, true);
    *weights = *weights * r.scaling_factor;
    if (log_gate.defined()) *weights = *weights * log_gate.exp().index({*experts});
    return;
  }
  // Sigmoid (DeepSeek-V3): select on score + bias within the best groups, weight by the raw score.
  // Gated (DiEP/NAEE): log g joins the selection score; g multiplies the final combine weight.
  const at::Tensor scores = logits.sigmoid();
  at::Tensor choice =
      weights_.router_bias.defined() ? scores + weights_.router_bias.to(at::kFloat) : scores;
  if (log_gate.defined()) choice = choice + log_gate;
  if (r.num_groups > 1) {
    const int64_t n = choice.size(0), e = choice.size(1);
    const at::Tensor group_score =
        std::get<0>(choice.view({n, r.num_groups, e / r.num_groups}).topk(2, -1)).sum(-1);
    const at::Tensor keep = at::zeros_like(group_score)
                                .scatter_(1, std::get<1>(group_score.topk(r.topk_groups, -1)), 1);
    const at::Tensor mask = keep.unsqueeze(-1)
                                .expand({n, r.num_groups, e / r.num_groups})
                                .reshape({n, e})
                                .to(at::kBool);
    choice = choice.masked_fill(~mask, -std::numeric_limits<float>::infinity());
  }
  *experts = std::get<1>(choice.topk(k, -1));
  report(ctx, Tap::kRouterTopK, *experts);
  *weights = scores.gather(1, *experts);
  if (r.renormalize) *weights = *weights / (weights->sum(-1, true) + 1e-20);
  *weights = *weights * r.scaling_factor;
  if (log_gate.defined()) *weights = *weights * log_gate.exp().index({*experts});
}

void DecoderLayer::route_carved(const at::Tensor& x, const ForwardContext& ctx, at::Tensor* weights,
                                at::Tensor* experts) const {
  const LayerWeights& w = weights_;
  const int64_t k = spec_.layers[w.layer].top_k;
  // p = softmax(s); selection on p + b (ALGORITHMS.md §5.3); a gate (DiEP, NAEE) joins the scores
  // like logits and removes an expert at −inf.
  const at::Tensor scores = cmoe_router_scores(spec_, x, w.router, w.router_up);
  report(ctx, Tap::kRouterLogits, scores);
  const ExpertGate* gate = expert_gate(ctx, w.layer);
  const at::Tensor log_gate =
      gate && gate->log_gate.defined() ? gate->log_gate.to(at::kFloat) : at::Tensor();
  const at::Tensor probs = (log_gate.defined() ? scores + log_gate : scores).softmax(-1);
  // p + b in fp64: p of the experts behind the top one can be ~1e-17, which fp32 would lose next
  // to a bias step, leaving the later slots tied on the bias alone.
  at::Tensor choice = probs.to(at::kDouble) + w.router_bias.to(at::kDouble);
  if (log_gate.defined())
    choice = choice.masked_fill(log_gate == -std::numeric_limits<float>::infinity(),
                                -std::numeric_limits<double>::infinity());
  *experts = std::get<1>(choice.topk(k, -1));
  report(ctx, Tap::kRouterTopK, *experts);
  *weights = 1 + probs.gather(1, *experts) * w.router_scale.to(at::kFloat).index({*experts});
  if (log_gate.defined()) *weights = *weights * log_gate.exp().index({*experts});
}

at::Tensor cmoe_router_scores(const ModelSpec& spec, const at::Tensor& x, const at::Tensor& wg,
                              const at::Tensor& wc) {
  const at::Tensor xf = x.to(at::kFloat);
  return (at::linear(xf, wc.to(at::kFloat)) *
          gate_activation(spec, at::linear(xf, wg.to(at::kFloat))))
      .abs();
}

at::Tensor DecoderLayer::routing_weights(const at::Tensor& x, const ForwardContext& ctx) const {
  at::Tensor w, ids;
  route(x, ctx, &w, &ids);
  const int64_t e = static_cast<int64_t>(weights_.experts.size());
  return at::zeros({x.size(0), e}, w.options()).scatter(1, ids, w);
}

at::Tensor DecoderLayer::expert_forward(int64_t e, const at::Tensor& x) const {
  const auto& ex = weights_.experts.at(static_cast<size_t>(e));
  const at::Tensor xq = aq(x);
  const at::Tensor act = gate_activation(spec_, at::linear(xq, ex.gate.to(x.scalar_type()))) *
                         at::linear(xq, ex.up.to(x.scalar_type()));
  return at::linear(aq(act), ex.down.to(x.scalar_type()));
}

at::Tensor DecoderLayer::moe(const at::Tensor& x3, const ForwardContext& ctx) const {
  const at::Tensor x = x3.reshape({-1, x3.size(-1)});
  at::Tensor topk_weights, topk_experts;
  route(x, ctx, &topk_weights, &topk_experts);
  at::Tensor out = at::zeros_like(x);
  const auto& experts = weights_.experts;
  for (int64_t e = 0; e < static_cast<int64_t>(experts.size()); ++e) {
    const at::Tensor hit = (topk_experts == e).nonzero();  // [n_e, 2]: (token, slot)
    if (hit.size(0) == 0) continue;
    const at::Tensor tokens = hit.select(1, 0), slots = hit.select(1, 1);
    const at::Tensor xe = x.index_select(0, tokens);
    report(ctx, Tap::kExpertIn, xe, e, &tokens);
    // On the CPU experts are stored-dtype views of the mapping (LayerWeights): convert this one
    // now.
    const at::Tensor xeq = aq(xe);
    const at::Tensor act =
        gate_activation(spec_, at::linear(xeq, experts[e].gate.to(x.scalar_type()))) *
        at::linear(xeq, experts[e].up.to(x.scalar_type()));
    report(ctx, Tap::kExpertAct, act, e, &tokens);
    const at::Tensor w = topk_weights.index({tokens, slots}).unsqueeze(1).to(x.scalar_type());
    out.index_add_(0, tokens, at::linear(aq(act), experts[e].down.to(x.scalar_type())) * w);
  }
  const ExpertGate* gate = expert_gate(ctx, weights_.layer);
  if (gate && gate->routed_scale.defined()) out = out * gate->routed_scale.to(out.scalar_type());
  const LayerWeights& w = weights_;
  if (w.shared_gate.weight.defined()) {
    const at::Tensor xq = aq(x);
    const at::Tensor act = gate_activation(spec_, at::linear(xq, w.shared_gate.weight)) *
                           at::linear(xq, w.shared_up.weight);
    report(ctx, Tap::kSharedAct, act);
    at::Tensor shared = at::linear(aq(act), w.shared_down.weight);
    if (w.shared_expert_gate.defined())
      shared = at::sigmoid(at::linear(x, w.shared_expert_gate)) * shared;
    out = out + shared;
  }
  return out.view(x3.sizes());
}

}  // namespace lathe
