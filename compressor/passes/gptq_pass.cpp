// `gptq`: Hessian-based weight quantization (ALGORITHMS.md §1) in the apply stage, streaming one
// layer at a time. Decide: every quantizable linear gets a TensorPlan (per-tensor overrides, first
// match wins). Apply: the layer's quantized tensors are processed in the true-sequential sub-groups
// of §1.6; before each sub-group the layer as it is now (earlier sub-groups already quantized) is
// replayed over the calibration inputs and the Hessians Σ x xᵀ of that sub-group's inputs are
// gathered; routed experts follow the coverage rule of §1.7 (routed-token Hessian H_r when the
// expert saw enough tokens, else the all-token Hessian H_a).
#include <ATen/ATen.h>

#include <fmt/format.h>

#include <cmath>
#include <map>
#include <set>

#include "compressor/common/errors.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/model/layer_weights.h"
#include "compressor/model/taps.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/context.h"
#include "compressor/quant/gptq.h"

namespace lathe {

namespace {

/// Sub-groups of §1.6, in order. kLatent: MLA's q_b / kv_b, whose inputs are normed outputs of
/// q_a / kv_a (computed here from the attention input).
enum Stage { kAttn = 0, kLatent, kOut, kUp, kDown, kStages };

int stage_of(TensorRole r) {
  switch (r) {
    case TensorRole::kQ:
    case TensorRole::kK:
    case TensorRole::kV:
    case TensorRole::kQA:
    case TensorRole::kKVA: return kAttn;
    case TensorRole::kQB:
    case TensorRole::kKVB: return kLatent;
    case TensorRole::kO: return kOut;
    case TensorRole::kDenseGate:
    case TensorRole::kDenseUp:
    case TensorRole::kExpertGate:
    case TensorRole::kExpertUp:
    case TensorRole::kExpertsGateUp:
    case TensorRole::kSharedGate:
    case TensorRole::kSharedUp: return kUp;
    case TensorRole::kDenseDown:
    case TensorRole::kExpertDown:
    case TensorRole::kExpertsDown:
    case TensorRole::kSharedDown: return kDown;
    default: return -1;
  }
}

}  // namespace

void LinearInput::add(const at::Tensor& x, bool diagonal_only) {  // x [n, in], real tokens only
  if (x.size(0) == 0) return;
  if (diagonal_only) {
    const at::Tensor sq = x.to(at::kDouble).square().sum(0);
    sum = sum.defined() ? sum.add_(sq) : sq;
  } else {
    const at::Tensor xf = x.to(at::kFloat);
    if (!sum.defined()) sum = at::zeros({xf.size(1), xf.size(1)}, xf.options());
    accumulate_hessian(sum, xf);
  }
  tokens += x.size(0);
}

namespace {

using Hessian = LinearInput;

/// Keys of the Hessians one replay gathers.
enum Input { kInAttn, kInQLatent, kInKvLatent, kInAttnOut, kInMlp, kInMlpAct, kInSharedAct };

/// Gathers the Hessians of one stage from the layer's taps.
class HessianObserver : public TapObserver {
 public:
  HessianObserver(int stage, int64_t layer, const ModelSpec& spec,
                  const std::set<int64_t>* all_token_experts, bool diagonal_only)
      : stage_(stage),
        layer_(layer),
        spec_(spec),
        all_token_experts_(all_token_experts),
        diag_(diagonal_only) {}

  bool wants(Tap tap, int64_t layer) const override {
    if (layer != layer_) return false;
    switch (stage_) {
      case kAttn:
      case kLatent: return tap == Tap::kAttnIn;
      case kOut: return tap == Tap::kAttnOutIn;
      case kUp: return tap == Tap::kMlpIn || tap == Tap::kExpertIn;
      case kDown:  // kMlpIn only for the all-token Hessians of rarely routed experts' down_proj
        return tap == Tap::kMlpAct || tap == Tap::kSharedAct || tap == Tap::kExpertAct ||
               (tap == Tap::kMlpIn && all_token_experts_ && !all_token_experts_->empty());
      default: return false;
    }
  }

  void observe(const TapEvent& e) override {
    gather(e);
    // Nothing after this tap feeds this stage: skip the rest of the layer (dense MLPs; MoE stages
    // need every expert's tap, so they run to the end).
    const bool dense = !spec_.layers.at(layer_).is_moe;
    if ((e.tap == Tap::kAttnIn && (stage_ == kAttn || stage_ == kLatent)) ||
        (e.tap == Tap::kAttnOutIn && stage_ == kOut) ||
        (dense && e.tap == Tap::kMlpIn && stage_ == kUp) ||
        (dense && e.tap == Tap::kMlpAct && stage_ == kDown)) {
      throw StopForward{};
    }
  }

  void gather(const TapEvent& e) {
    const at::Tensor& v = *e.value;
    const at::Tensor x = v.reshape({-1, v.size(-1)});
    const at::Tensor valid = e.valid->reshape({-1});
    if (e.tap == Tap::kExpertIn || e.tap == Tap::kExpertAct) {
      const at::Tensor rows = valid.index_select(0, *e.token_index);
      const at::Tensor real = x.index({rows});
      experts_[e.expert].add(real, diag_);
      routed_[e.expert] += real.size(0);
      return;
    }
    const at::Tensor real = x.index({valid});
    switch (e.tap) {
      case Tap::kAttnIn:
        if (stage_ == kAttn) {
          inputs_[kInAttn].add(real, diag_);
        } else {  // MLA latent inputs from the current (already quantized) q_a / kv_a
          const LayerWeights& w = *e.weights;
          const AttentionSpec& a = spec_.attention;
          if (a.q_lora_rank > 0) {
            inputs_[kInQLatent].add(
                rms_norm(at::linear(real, w.q_a.weight), w.q_a_norm, spec_.rms_norm_eps), diag_);
          }
          const at::Tensor kv = at::linear(real, w.kv_a.weight).slice(-1, 0, a.kv_lora_rank);
          inputs_[kInKvLatent].add(rms_norm(kv, w.kv_a_norm, spec_.rms_norm_eps), diag_);
        }
        break;
      case Tap::kAttnOutIn: inputs_[kInAttnOut].add(real, diag_); break;
      case Tap::kMlpAct: inputs_[kInMlpAct].add(real, diag_); break;
      case Tap::kSharedAct: inputs_[kInSharedAct].add(real, diag_); break;
      case Tap::kMlpIn:
        if (stage_ == kUp) {
          inputs_[kInMlp].add(real, diag_);  // dense and shared gate/up, and every expert's H_a
        } else if (all_token_experts_) {     // kDown: H_a of down for experts below the threshold
          const LayerWeights& w = *e.weights;
          for (int64_t id : *all_token_experts_) {
            const ExpertWeights& ex = w.experts.at(id);
            const at::Tensor act =
                gate_activation(spec_, at::linear(real, ex.gate.to(real.scalar_type()))) *
                at::linear(real, ex.up.to(real.scalar_type()));
            all_token_[id].add(act, diag_);
          }
        }
        break;
      default: break;
    }
  }

  std::map<int, Hessian> inputs_;
  std::map<int64_t, Hessian> experts_;    ///< routed tokens per expert
  std::map<int64_t, int64_t> routed_;     ///< n_e
  std::map<int64_t, Hessian> all_token_;  ///< H_a of down per expert

 private:
  int stage_;
  int64_t layer_;
  const ModelSpec& spec_;
  const std::set<int64_t>* all_token_experts_;
  bool diag_;  ///< Σ x_j² only (Wanda), not Σ x xᵀ
};

/// The Hessian of a non-expert linear of `role` from a stage's observer (null when it has none).
const Hessian* shared_hessian(const HessianObserver& obs, TensorRole role) {
  int key = -1;
  switch (role) {
    case TensorRole::kQ:
    case TensorRole::kK:
    case TensorRole::kV:
    case TensorRole::kQA:
    case TensorRole::kKVA: key = kInAttn; break;
    case TensorRole::kQB: key = kInQLatent; break;
    case TensorRole::kKVB: key = kInKvLatent; break;
    case TensorRole::kO: key = kInAttnOut; break;
    case TensorRole::kDenseGate:
    case TensorRole::kDenseUp:
    case TensorRole::kSharedGate:
    case TensorRole::kSharedUp: key = kInMlp; break;
    case TensorRole::kDenseDown: key = kInMlpAct; break;
    case TensorRole::kSharedDown: key = kInSharedAct; break;
    default: return nullptr;
  }
  auto it = obs.inputs_.find(key);
  return it == obs.inputs_.end() ? nullptr : &it->second;
}

GptqOptions gptq_options(const TensorPlan& p, at::ScalarType stored) {
  GptqOptions o;
  o.bits = p.bits;
  o.group_size = p.group_size;
  o.sym = p.sym;
  o.act_order = p.act_order == "none"      ? GptqOptions::kNone
                : p.act_order == "dynamic" ? GptqOptions::kDynamic
                                           : GptqOptions::kStatic;
  o.damp = p.damp;
  o.damp_max = std::max(1.0, p.damp);
  o.mse = p.mse;
  o.scale_dtype = scale_storage_dtype(stored);
  return o;
}

/// GPTQ of one [out, in] linear; fills the details the manifest and report show.
QuantRecord quantize_one(const at::Tensor& w, const Hessian* h, const TensorPlan& p,
                         at::ScalarType stored, bool keep_zeros, nlohmann::json* details) {
  SparseOptions keep;
  if (keep_zeros) keep.keep_zero = w == 0;
  const SparseOptions* sparse = keep_zeros ? &keep : nullptr;
  const GptqResult r = h && h->tokens > 0
                           ? gptq_quantize(w, h->sum, h->tokens, gptq_options(p, stored), sparse)
                           : gptq_quantize(w, at::Tensor(), 0, gptq_options(p, stored), sparse);
  nlohmann::json d = {
      {"tokens", h ? h->tokens : 0},
      {"h_source", r.h_source},
      {"damp", r.damp_used},
      {"retries", r.retries},
      {"fallback", r.rtn_fallback},
      {"loss_sum", r.loss_sum},
      {"loss_per_token", h && h->tokens > 0 ? r.loss_sum / static_cast<double>(h->tokens) : 0.0}};
  if (!std::isnan(r.rel_err)) d["h_rel_err"] = r.rel_err;
  *details = d;
  return make_quant_record("", r.q, r.g_idx, p.act_bits);
}

}  // namespace

void for_each_linear_input(LayerApplyContext& ctx,
                           const std::function<bool(const LayerTensor&)>& select,
                           bool diagonal_only, const std::string& pass,
                           const LinearInputVisitor& visit) {
  // The tensors this layer processes, by stage.
  std::vector<std::vector<LayerTensor*>> by_stage(kStages);
  for (LayerTensor& t : ctx.tensors) {
    if (!select(t)) continue;
    const int s = stage_of(t.role);
    if (s < 0) throw InternalError("", t.source, pass + ": not a quantizable linear");
    by_stage[s].push_back(&t);
  }
  const LayerActivations* acts = ctx.activations;
  const ModelSpec& spec = ctx.out_spec ? *ctx.out_spec : ctx.spec;
  const int64_t n_tok = acts ? acts->tokens : 0;
  const int64_t threshold =
      std::max<int64_t>(256, static_cast<int64_t>(std::ceil(0.005 * static_cast<double>(n_tok))));
  const std::string rule = fmt::format("n_e >= max(256, ceil(0.005 * {})) = {}", n_tok, threshold);
  std::map<int64_t, int64_t> routed;  // n_e from the kUp replay
  bool routed_known = false;

  for (int stage = 0; stage < kStages; ++stage) {
    if (by_stage[stage].empty()) continue;
    std::set<int64_t> all_token;
    std::unique_ptr<HessianObserver> obs;
    if (acts) {
      if (stage == kDown) {
        const int64_t experts =
            spec.layers.at(ctx.layer).is_moe ? spec.layers.at(ctx.layer).num_experts : 0;
        for (int64_t e = 0; e < experts; ++e) {
          if (!routed_known || routed[e] < threshold) all_token.insert(e);
        }
      }
      obs = std::make_unique<HessianObserver>(stage, ctx.layer, spec, &all_token, diagonal_only);
      acts->run(*obs);
      if (stage == kUp) {
        routed = obs->routed_;
        routed_known = true;
      }
    }
    for (LayerTensor* t : by_stage[stage]) {
      // The input of expert e's linear at this stage by the coverage rule (§1.7).
      auto expert_input = [&](int64_t e, nlohmann::json* d) -> const LinearInput* {
        if (!obs) return nullptr;
        const int64_t n_e =
            stage == kUp ? obs->routed_[e] : (routed_known ? routed[e] : obs->routed_[e]);
        (*d)["routed_tokens"] = n_e;
        (*d)["rule"] = rule;
        if (n_e >= threshold) {
          (*d)["h_source"] = "routed";
          return &obs->experts_[e];
        }
        (*d)["h_source"] = "all";
        if (n_e == 0) {
          ctx.warnings.push_back(
              fmt::format("{}: {} (expert {}) received no calibration tokens: all-token {}", pass,
                          t->name, e, diagonal_only ? "statistics" : "Hessian"));
        }
        if (stage == kUp) {
          auto it = obs->inputs_.find(kInMlp);
          return it == obs->inputs_.end() ? nullptr : &it->second;
        }
        return &obs->all_token_[e];
      };
      std::vector<SliceInput> slices;
      auto add = [&](const LinearInput* in, nlohmann::json d) {
        const bool has = in && in->tokens > 0;
        if (!has) d["h_source"] = "none";
        slices.push_back({has ? in : nullptr, std::move(d)});
      };
      if (t->value.dim() == 3) {  // fused experts [E, out, in]
        for (int64_t e = 0; e < t->value.size(0); ++e) {
          nlohmann::json d = nlohmann::json::object();
          const LinearInput* in = expert_input(e, &d);
          add(in, std::move(d));
        }
      } else if (t->expert >= 0) {
        nlohmann::json d = nlohmann::json::object();
        const LinearInput* in = expert_input(t->expert, &d);
        add(in, std::move(d));
      } else {
        const LinearInput* in = obs ? shared_hessian(*obs, t->role) : nullptr;
        add(in, nlohmann::json{{"h_source", "all"}});
      }
      visit(*t, slices);
    }
  }
}

void apply_gptq(LayerApplyContext& ctx) {
  // A tensor an earlier sparsity pass pruned keeps its zeros; one that sparsegpt quantizes in its
  // own sweep is left to it.
  auto select = [&](const LayerTensor& t) {
    auto it = ctx.plan.tensors.find(t.source);
    if (it == ctx.plan.tensors.end() || it->second.method != "gptq") return false;
    auto sp = ctx.plan.sparsity.find(t.source);
    return sp == ctx.plan.sparsity.end() || !sp->second.quantize;
  };
  bool any = false;
  for (const LayerTensor& t : ctx.tensors) any = any || select(t);
  if (!ctx.activations && any)
    ctx.warnings.push_back(
        "gptq: no calibration data: data-free RTN with MSE clipping (ALGORITHMS.md §1.7)");
  for_each_linear_input(
      ctx, select, /*diagonal_only=*/false, "gptq",
      [&](LayerTensor& t, std::vector<SliceInput>& slices) {
        const TensorPlan& p = ctx.plan.tensors.at(t.source);
        const bool sparse = ctx.plan.sparsity.count(t.source) > 0;
        const at::Tensor w = t.value.to(at::kFloat);
        std::vector<QuantRecord> parts;
        nlohmann::json per_expert = nlohmann::json::array(), details;
        for (size_t e = 0; e < slices.size(); ++e) {
          const at::Tensor we = w.dim() == 3 ? w[static_cast<int64_t>(e)] : w;
          nlohmann::json q_details;
          parts.push_back(quantize_one(we, slices[e].input, p, t.stored, sparse, &q_details));
          q_details.update(slices[e].details);  // h_source routed / all / none, n_e, rule
          per_expert.push_back(q_details);
        }
        QuantRecord quant;
        if (w.dim() == 3) {
          quant = stack_quant_records(t.name, parts);
          details = {{"experts", per_expert}};
        } else {
          quant = std::move(parts[0]);
          details = per_expert[0];
        }
        if (details.value("fallback", false)) {
          ctx.warnings.push_back(fmt::format(
              "gptq: {}: the Hessian did not factorise with damping up to {}: RTN with MSE "
              "clipping instead",
              t.name, details.value("damp", 0.0)));
        }
        record_quantized(ctx, t, p, std::move(quant), details);
      });
}

namespace {

constexpr const char* kPackableBits =
    "GPTQ checkpoints pack 2, 3, 4 or 8 bits (use rtn for other widths inside lathe only)";

bool packable_bits(int64_t bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 8;
}

class GptqPass : public Pass {
 public:
  explicit GptqPass(const PassInstance& instance) : overrides_(instance) {}

  void check(const CheckContext& ctx, std::vector<CheckProblem>& problems) const override {
    for (const auto& [field, options] : overrides_.option_sets()) {
      if (!options->has("bits")) continue;
      const int64_t bits = options->get_int("bits");
      if (!packable_bits(bits))
        problems.push_back({field + ".bits", fmt::format("{} bits: {}", bits, kPackableBits)});
    }
    overrides_.check(ctx.tensors, problems);
  }

  void decide(const DecideContext& ctx, CompressionPlan& plan) const override {
    for (const auto& [t, opts] : overrides_.resolve(ctx, plan)) {
      TensorPlan p;
      p.method = "gptq";
      p.bits = opts.get_int("bits");
      if (!packable_bits(p.bits))
        throw ConfigError("", "gptq.bits",
                          fmt::format("{} bits for {}: {}", p.bits, t.name, kPackableBits));
      p.group_size = opts.get_int("group-size");
      p.sym = opts.get_bool("sym");
      p.act_order = opts.get_string("act-order");
      p.mse = opts.get_bool("mse");
      p.damp = opts.get_float("damp");
      plan.tensors[t.name] = p;
      // A sparsegpt that quantized in its own sweep leaves it to this pass, which keeps the zeros.
      if (auto sp = plan.sparsity.find(t.name); sp != plan.sparsity.end())
        sp->second.quantize = false;
    }
  }

  void apply(LayerApplyContext& ctx) const override { apply_gptq(ctx); }
  bool needs_activations() const override { return true; }

 private:
  TensorOverrides overrides_;
};

}  // namespace

std::unique_ptr<Pass> make_gptq_pass(const PassInstance& instance) {
  return std::make_unique<GptqPass>(instance);
}

PassInfo gptq_pass_info() {
  OptionSpec act_order =
      make_option("act-order", OptionType::kEnum, "static",
                  "column order: none, static (diag H descending, static groups; g_idx trivial) or "
                  "dynamic (groups formed in that order; g_idx scattered)");
  act_order.choices = {"none", "static", "dynamic"};
  return {
      "gptq",
      "GPTQ weight quantization with Hessians of the current layer inputs (needs calibration data)",
      weight_grid_options("bits per weight: 2, 3, 4 or 8 (the GPTQ packings)",
                          {act_order,
                           make_option("mse", OptionType::kBool, "false",
                                       "search a clipping ratio per group (MSE grid)"),
                           make_option("damp", OptionType::kFloat, "0.01",
                                       "dampening, relative to mean(diag H)", 0, 1)}),
      {},
      true,
      make_gptq_pass};
}

}  // namespace lathe
