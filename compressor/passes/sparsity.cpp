// `magnitude`, `wanda` and `sparsegpt`: weight sparsity (ALGORITHMS.md §8.4, §9; docs/sparsity.md).
// Decide: every prunable linear (the quantizable ones) gets a SparsityPlan with the pass's pattern
// and its layer's ratio (uniform, or OWL / DLP from the calibration statistics' channel norms on
// the original model); sparsegpt with `bits` also gets a GPTQ TensorPlan, quantized in the same
// sweep. Apply, streaming one layer at a time: magnitude from the weights alone; wanda and
// sparsegpt from the layer's current calibration inputs (gptq's true-sequential sub-groups and MoE
// coverage rule, for_each_linear_input). Pruned weights are zeros in the dense tensor.
#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <optional>

#include "calibrate/stats_store.h"
#include "compressor/common/errors.h"
#include "compressor/model/model_spec.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_store.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/context.h"
#include "compressor/quant/gptq.h"
#include "compressor/quant/sparsity.h"

namespace lathe {
namespace {

enum class Method { kMagnitude, kWanda, kSparseGpt };

const char* method_name(Method m) {
  return m == Method::kMagnitude ? "magnitude" : m == Method::kWanda ? "wanda" : "sparsegpt";
}

/// The channel-norm statistic's tap of a linear's input (ALGORITHMS.md §0), "" when the store has
/// none (MLA's latent projections).
std::string norm_tap(TensorRole role, int64_t expert) {
  switch (role) {
    case TensorRole::kQ:
    case TensorRole::kK:
    case TensorRole::kV:
    case TensorRole::kQA:
    case TensorRole::kKVA: return "attn.in";
    case TensorRole::kO: return "attn.o.in";
    case TensorRole::kDenseGate:
    case TensorRole::kDenseUp:
    case TensorRole::kSharedGate:
    case TensorRole::kSharedUp: return "mlp.in";
    case TensorRole::kDenseDown: return "mlp.act";
    case TensorRole::kSharedDown: return "shared.act";
    case TensorRole::kExpertGate:
    case TensorRole::kExpertUp:
    case TensorRole::kExpertsGateUp: return fmt::format("expert[{}].in", expert);
    case TensorRole::kExpertDown:
    case TensorRole::kExpertsDown: return fmt::format("expert[{}].act", expert);
    default: return "";
  }
}

/// ‖X_j‖₂ of `tap` in `layer` from the statistics store (channel_norm, task "all"), checked against
/// the weights it was computed from.
at::Tensor channel_norm(const DecideContext& ctx, int64_t layer, const std::string& tap,
                        const std::string& pass) {
  const StatsKey key{"channel_norm", layer, tap, "all"};
  if (!ctx.stats->contains(key)) {
    throw DataError(ctx.stats->path(), to_string(key),
                    pass + ": the allocation needs channel norms of every layer's linear inputs");
  }
  StatsFingerprints want = ctx.stats->info(key).fingerprints;
  want.weights = ctx.upstream_weights.at(static_cast<size_t>(layer));
  return ctx.stats->get(key, want);
}

/// One layer's Wanda metric A = |W|·‖X‖ over every prunable linear it holds, flattened (fused
/// experts per expert, each on its own routed tokens' norms).
at::Tensor layer_metric(const DecideContext& ctx, int64_t layer,
                        const std::vector<ExpectedTensor>& tensors, const std::string& pass) {
  std::vector<at::Tensor> parts;
  for (const ExpectedTensor& t : tensors) {
    if (t.layer != layer) continue;
    const at::Tensor w = load_tensor(ctx.store, t.name, at::kFloat);
    if (w.dim() == 3) {
      for (int64_t e = 0; e < w.size(0); ++e) {
        const at::Tensor norm = channel_norm(ctx, layer, norm_tap(t.role, e), pass);
        parts.push_back(wanda_score(w[e], norm.square()).reshape({-1}));
      }
    } else if (const std::string tap = norm_tap(t.role, t.expert); !tap.empty()) {
      parts.push_back(wanda_score(w, channel_norm(ctx, layer, tap, pass).square()).reshape({-1}));
    }
    ctx.store.release(t.name);
  }
  return parts.empty() ? at::Tensor() : at::cat(parts);
}

std::string percent(double v) {
  return fmt::format("{:.1f} %", 100 * v);
}

class SparsityPass : public Pass {
 public:
  SparsityPass(const PassInstance& instance, Method method)
      : name_(instance.name), method_(method), options_(instance.options), overrides_(instance) {}

  bool needs_activations() const override { return method_ != Method::kMagnitude; }

  void check(const CheckContext& ctx, std::vector<CheckProblem>& problems) const override {
    for (const auto& [field, options] : overrides_.option_sets()) {
      if (options->has("sparsity")) {
        const double s = options->get_float("sparsity");
        if (!(s > 0 && s < 1))
          problems.push_back({field + ".sparsity",
                              fmt::format("{}: expected a fraction in (0, 1), exclusive", s)});
      }
      if (options->has("pattern") && !parse_sparsity_pattern(options->get_string("pattern"))) {
        problems.push_back(
            {field + ".pattern",
             fmt::format("\"{}\": expected unstructured or N:M with 0 < N < M (2:4, 4:8)",
                         options->get_string("pattern"))});
      }
      if (options->has("bits")) {
        const int64_t b = options->get_int("bits");
        if (b != 0 && b != 2 && b != 3 && b != 4 && b != 8)
          problems.push_back(
              {field + ".bits", fmt::format("{}: expected 0 (prune only) or 2, 3, 4, 8 (GPTQ "
                                            "packings) for the joint quantization",
                                            b)});
      }
    }
    const std::string allocation = options_.get_string("allocation");
    if (allocation != "uniform") {
      if (ctx.spec.num_layers < 2)
        problems.push_back({name_ + ".allocation",
                            fmt::format("{} distributes sparsity across layers: the model has "
                                        "only {} decoder layer",
                                        allocation, ctx.spec.num_layers)});
      const auto p = parse_sparsity_pattern(options_.get_string("pattern"));
      if (p && p->second > 0)
        problems.push_back(
            {name_ + ".allocation",
             allocation + " sets a sparsity per layer: it needs pattern unstructured"});
    }
    overrides_.check(ctx.tensors, problems);
    check_pattern_widths(ctx.tensors, problems);
  }

  void decide(const DecideContext& ctx, CompressionPlan& plan) const override {
    std::vector<CheckProblem> problems;
    check({ctx.spec, ctx.tensors}, problems);
    if (!problems.empty()) throw ConfigError("", problems[0].field, problems[0].message);
    const auto tensors = overrides_.resolve(ctx, plan);
    const std::vector<double> layer_ratio = allocate(ctx, tensors, plan);
    for (const auto& [t, opts] : tensors) {
      const auto nm = *parse_sparsity_pattern(opts.get_string("pattern"));
      SparsityPlan p;
      p.method = method_name(method_);
      p.n = nm.first;
      p.m = nm.second;
      p.ratio = p.m > 0 ? static_cast<double>(p.n) / static_cast<double>(p.m)
                        : layer_ratio.at(static_cast<size_t>(t.layer));
      if (method_ == Method::kSparseGpt) {
        p.damp = opts.get_float("damp");
        const int64_t bits = opts.get_int("bits");
        p.quantize = bits > 0;
        if (p.quantize) {
          TensorPlan q;
          q.method = "gptq";
          q.bits = bits;
          q.group_size = opts.get_int("group-size");
          q.sym = opts.get_bool("sym");
          q.act_order = "none";  // SparseGPT's natural column order (N:M groups are consecutive)
          q.damp = p.damp;
          plan.tensors[t.name] = q;
        }
      }
      plan.sparsity[t.name] = p;
    }
    plan.decided_by["sparsity"] = name_;
    ctx.log.push_back(fmt::format("{}: {} tensors, {} {}", name_, tensors.size(),
                                  options_.get_string("pattern"),
                                  options_.get_string("allocation")));
  }

  void apply(LayerApplyContext& ctx) const override { apply_sparsity(ctx, method_name(method_)); }

 private:
  /// N:M patterns whose M does not divide a tensor's input width, once per option set.
  void check_pattern_widths(const std::vector<ExpectedTensor>& tensors,
                            std::vector<CheckProblem>& problems) const {
    for (const auto& [field, options] : overrides_.option_sets()) {
      if (!options->has("pattern")) continue;
      const auto p = parse_sparsity_pattern(options->get_string("pattern"));
      if (!p || p->second == 0) continue;
      for (const ExpectedTensor& t : tensors) {
        if (!is_quantizable(t.role) || t.shape.back() % p->second == 0) continue;
        problems.push_back(
            {field + ".pattern",
             fmt::format("{}: M = {} does not divide the input width {} of {}",
                         options->get_string("pattern"), p->second, t.shape.back(), t.name)});
        break;
      }
    }
  }

  /// Per decoder layer, the sparsity of its tensors (§8.4); records the allocation for the report.
  std::vector<double> allocate(const DecideContext& ctx,
                               const std::vector<std::pair<ExpectedTensor, OptionValues>>& tensors,
                               CompressionPlan& plan) const {
    const double target = options_.get_float("sparsity");
    const std::string allocation = options_.get_string("allocation");
    std::vector<double> ratio(static_cast<size_t>(ctx.spec.num_layers), target);
    if (allocation == "uniform") return ratio;
    if (!ctx.stats)
      throw ConfigError("", name_ + ".allocation",
                        allocation + " reads channel norms: add a calibration section");
    std::vector<ExpectedTensor> pruned;
    for (const auto& [t, opts] : tensors) pruned.push_back(t);
    std::vector<int64_t> layers;
    std::vector<double> scores;  // OWL: outlier ratio; DLP: mean metric
    for (int64_t l = 0; l < ctx.spec.num_layers; ++l) {
      const at::Tensor a = layer_metric(ctx, l, pruned, name_);
      if (!a.defined()) continue;
      layers.push_back(l);
      scores.push_back(allocation == "owl" ? outlier_ratio(a, options_.get_float("owl-threshold"))
                                           : a.to(at::kDouble).mean().item<double>());
    }
    const std::vector<double> sparsity =
        allocation == "owl"
            ? allocate_sparsity(scores, target, options_.get_float("owl-lambda"))
            : allocate_sparsity(dlp_importance(scores), target, options_.get_float("dlp-alpha"));
    nlohmann::json per_layer = nlohmann::json::object();
    std::string shown;
    for (size_t i = 0; i < layers.size(); ++i) {
      ratio[static_cast<size_t>(layers[i])] = sparsity[i];
      per_layer[std::to_string(layers[i])] = {
          {"sparsity", sparsity[i]},
          {allocation == "owl" ? "outlier_ratio" : "mean_metric", scores[i]}};
      shown += fmt::format("{}{}:{:.3f}", i ? " " : "", layers[i], sparsity[i]);
    }
    plan.diagnostics[name_] = {
        {"allocation", allocation}, {"target", target}, {"layers", per_layer}};
    ctx.log.push_back(
        fmt::format("{}: {} allocation around {}: {}", name_, allocation, percent(target), shown));
    return ratio;
  }

  std::string name_;
  Method method_;
  OptionValues options_;
  TensorOverrides overrides_;
};

/// What a pruned tensor's manifest record says (TensorRecord::sparsity).
nlohmann::json sparsity_record(const SparsityPlan& p, const at::Tensor& before,
                               const at::Tensor& after, nlohmann::json extra) {
  const at::Tensor w = before.to(at::kDouble), d = after.to(at::kDouble) - w;
  const double denom = w.square().sum().item<double>();
  nlohmann::json r = {
      {"method", p.method},
      {"pattern", p.pattern()},
      {"ratio", p.ratio},
      {"zeros", (after == 0).sum().item<double>() / static_cast<double>(after.numel())},
      {"rel_err", denom > 0 ? d.square().sum().item<double>() / denom : 0.0}};
  r.update(extra);
  return r;
}

/// Replaces `t` by `pruned` (rounded to the stored dtype, so the next replays see what the shard
/// holds) and records it.
void record_pruned(LayerApplyContext& ctx, LayerTensor& t, const SparsityPlan& p,
                   const at::Tensor& pruned, nlohmann::json extra) {
  const at::Tensor stored = pruned.to(t.stored);
  TensorRecord r;
  r.name = t.name;
  r.source = t.source;
  // format and bits: the stored dtype's, filled in by the apply stage like an unchanged tensor's
  r.sparsity = sparsity_record(p, t.value, stored, std::move(extra));
  replace_record(ctx, std::move(r));
  t.value = stored;
}

/// One 2-d linear pruned by `score` as `p` says.
at::Tensor prune_by(const at::Tensor& w, const at::Tensor& score, const SparsityPlan& p) {
  return w.masked_fill(prune_mask(score, p.m > 0 ? 0 : p.ratio, p.n, p.m), 0.0);
}

/// SparseGPT of one 2-d linear; the joint quantization's record goes into `quant`.
at::Tensor sparsegpt_one(const at::Tensor& w, const SliceInput& in, const SparsityPlan& p,
                         const TensorPlan* q, at::ScalarType stored, QuantRecord* quant,
                         nlohmann::json* details) {
  GptqOptions o;
  o.act_order = GptqOptions::kNone;
  o.damp = p.damp;
  o.damp_max = std::max(1.0, p.damp);
  o.group_size = -1;
  if (q) {
    o.bits = q->bits;
    o.group_size = q->group_size;
    o.sym = q->sym;
    o.scale_dtype = scale_storage_dtype(stored);
  }
  SparseOptions s;
  s.ratio = p.m > 0 ? 0 : p.ratio;
  s.n = p.n;
  s.m = p.m;
  s.quantize = q != nullptr;
  const GptqResult r = in.input ? gptq_quantize(w, in.input->sum, in.input->tokens, o, &s)
                                : gptq_quantize(w, at::Tensor(), 0, o, &s);
  *details = in.details;
  (*details)["tokens"] = in.input ? in.input->tokens : 0;
  (*details)["damp"] = r.damp_used;
  (*details)["fallback"] = r.rtn_fallback;
  (*details)["loss_sum"] = r.loss_sum;
  if (!std::isnan(r.rel_err)) (*details)["h_rel_err"] = r.rel_err;
  if (!q) return r.values.to(at::kFloat);
  *quant = make_quant_record("", r.q, r.g_idx, q->act_bits);
  return gptq_dequantize(r.q, r.g_idx);
}

}  // namespace

void apply_sparsity(LayerApplyContext& ctx, const std::string& method) {
  const Method kind = method == "magnitude" ? Method::kMagnitude
                      : method == "wanda"   ? Method::kWanda
                                            : Method::kSparseGpt;
  auto select = [&](const LayerTensor& t) {
    auto it = ctx.plan.sparsity.find(t.source);
    return it != ctx.plan.sparsity.end() && it->second.method == method;
  };
  if (kind == Method::kMagnitude) {
    for (LayerTensor& t : ctx.tensors) {
      if (!select(t)) continue;
      const SparsityPlan& p = ctx.plan.sparsity.at(t.source);
      const at::Tensor w = t.value.to(at::kFloat);
      at::Tensor out = w.dim() == 3 ? at::empty_like(w) : at::Tensor();
      if (w.dim() == 3) {
        for (int64_t e = 0; e < w.size(0); ++e) out[e].copy_(prune_by(w[e], w[e].abs(), p));
      } else {
        out = prune_by(w, w.abs(), p);
      }
      record_pruned(ctx, t, p, out, nlohmann::json::object());
    }
    return;
  }
  bool any = false;
  for (const LayerTensor& t : ctx.tensors) any = any || select(t);
  if (any && !ctx.activations)
    ctx.warnings.push_back(
        fmt::format("{}: no calibration data: magnitude pruning{}", method,
                    kind == Method::kSparseGpt ? " and round-to-nearest (no error feedback)" : ""));
  for_each_linear_input(
      ctx, select, /*diagonal_only=*/kind == Method::kWanda, method,
      [&](LayerTensor& t, std::vector<SliceInput>& slices) {
        const SparsityPlan& p = ctx.plan.sparsity.at(t.source);
        const TensorPlan* q = p.quantize ? &ctx.plan.tensors.at(t.source) : nullptr;
        const at::Tensor w = t.value.to(at::kFloat);
        std::vector<at::Tensor> outs;
        std::vector<QuantRecord> parts;
        nlohmann::json per = nlohmann::json::array();
        for (size_t e = 0; e < slices.size(); ++e) {
          const at::Tensor we = w.dim() == 3 ? w[static_cast<int64_t>(e)] : w;
          nlohmann::json d;
          if (kind == Method::kWanda) {
            const SliceInput& in = slices[e];
            outs.push_back(prune_by(we, in.input ? wanda_score(we, in.input->sum) : we.abs(), p));
            d = in.details;
            d["tokens"] = in.input ? in.input->tokens : 0;
          } else {
            QuantRecord part;
            outs.push_back(sparsegpt_one(we, slices[e], p, q, t.stored, &part, &d));
            if (q) parts.push_back(std::move(part));
          }
          per.push_back(d);
        }
        const at::Tensor out = w.dim() == 3 ? at::stack(outs) : outs[0];
        const nlohmann::json details = w.dim() == 3 ? nlohmann::json{{"experts", per}} : per[0];
        if (!q) {
          record_pruned(ctx, t, p, out, details);
          return;
        }
        const nlohmann::json sparse = sparsity_record(p, t.value, out, nlohmann::json::object());
        QuantRecord quant = w.dim() == 3 ? stack_quant_records(t.name, parts) : std::move(parts[0]);
        record_quantized(ctx, t, *q, std::move(quant), details);
        ctx.records.back().sparsity = sparse;
      });
}

namespace {

std::vector<OptionSpec> sparsity_options(Method method) {
  OptionSpec allocation =
      make_option("allocation", OptionType::kEnum, "uniform",
                  "per-layer sparsity: uniform, owl (outlier-weighted) or dlp (mean metric); "
                  "owl and dlp read the calibration statistics' channel norms");
  allocation.choices = {"uniform", "owl", "dlp"};
  std::vector<OptionSpec> o = {
      make_option("sparsity", OptionType::kFloat, "0.5",
                  "fraction of each row's weights pruned (the mean over layers with owl / dlp)"),
      make_option(
          "pattern", OptionType::kString, "unstructured",
          "unstructured, or N:M (N zeros in every M consecutive inputs of a row: 2:4, 4:8)"),
      allocation,
      make_option("owl-lambda", OptionType::kFloat, "0.08", "OWL: spread of the layer ratios (λ)",
                  0, 0.5),
      make_option("owl-threshold", OptionType::kFloat, "5",
                  "OWL: an outlier exceeds this multiple of the layer's mean metric", 1, 1000),
      make_option("dlp-alpha", OptionType::kFloat, "0.15", "DLP: spread of the layer ratios (α)", 0,
                  0.5),
  };
  if (method == Method::kSparseGpt) {
    o.push_back(make_option("bits", OptionType::kInt, "0",
                            "quantize in the same sweep: 2, 3, 4 or 8 bits (GPTQ, natural column "
                            "order); 0 = prune only",
                            0, 8));
    o.push_back(make_option("group-size", OptionType::kInt, "128",
                            "columns sharing one scale when bits > 0; -1 = a whole row", -1,
                            1 << 20));
    o.push_back(make_option("sym", OptionType::kBool, "true", "symmetric quantization"));
    o.push_back(make_option("damp", OptionType::kFloat, "0.01",
                            "dampening, relative to mean(diag H)", 0, 1));
  }
  o.push_back(
      make_option("skip", OptionType::kBool, "false", "leave the tensor dense (overrides)"));
  return o;
}

/// Only OWL and DLP read statistics (the observe stage); uniform allocation needs none.
bool reads_channel_norms(const PassInstance& instance) {
  return instance.options.has("allocation") &&
         instance.options.get_string("allocation") != "uniform";
}

template <Method M>
std::unique_ptr<Pass> make_sparsity_pass(const PassInstance& instance) {
  return std::make_unique<SparsityPass>(instance, M);
}

}  // namespace

PassInfo magnitude_pass_info() {
  return {"magnitude",
          "prune the smallest |W| of each row (unstructured or N:M); no calibration data needed",
          sparsity_options(Method::kMagnitude),
          {"channel_norm"},
          true,
          make_sparsity_pass<Method::kMagnitude>,
          reads_channel_norms};
}

PassInfo wanda_pass_info() {
  return {"wanda",
          "Wanda pruning: |W|·‖X‖ per row from the current layer inputs (unstructured or N:M)",
          sparsity_options(Method::kWanda),
          {"channel_norm"},
          true,
          make_sparsity_pass<Method::kWanda>,
          reads_channel_norms};
}

PassInfo sparsegpt_pass_info() {
  return {"sparsegpt",
          "SparseGPT: prune with GPTQ's Hessian and error feedback, optionally quantizing in the "
          "same sweep",
          sparsity_options(Method::kSparseGpt),
          {"channel_norm"},
          true,
          make_sparsity_pass<Method::kSparseGpt>,
          reads_channel_norms};
}

}  // namespace lathe
