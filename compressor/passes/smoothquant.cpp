// `smoothquant`: W8A8 (ALGORITHMS.md §2). Decide: every quantizable linear becomes int8 symmetric
// per output channel by GPTQ with int8 per-token inputs (act_bits 8), and plan.smoothing records
// the smoothing settings so that `lathe apply --plan` alone redoes it. Apply, per layer: one replay
// of the layer over the calibration set gathers per-channel activation extremes (and a token
// sample for the adaptive α), the scales are folded exactly into the weights (§2.1; MoE rules
// §2.4), then apply_gptq quantizes the smoothed weights on the smoothed layer's inputs.
#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <set>

#include "compressor/common/errors.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/model/layer_weights.h"
#include "compressor/model/taps.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/context.h"
#include "compressor/quant/smooth.h"

namespace lathe {
namespace {

// ---- Statistics: one replay of the layer. ----

/// The real (unpadded) rows of an event: all valid tokens, or for expert taps the valid ones among
/// the tokens routed to the expert.
at::Tensor valid_rows(const TapEvent& e) {
  const at::Tensor valid = e.token_index ? e.valid->index_select(0, *e.token_index) : *e.valid;
  return e.value->index_select(0, valid.nonzero().squeeze(1));
}

/// Per-channel summaries of every smoothing group's input in one layer (§0 table: norm outputs,
/// o_proj inputs, down_proj inputs).
class SmoothingObserver : public TapObserver {
 public:
  SmoothingObserver(int64_t layer, bool moe, bool v_to_o, int64_t cap)
      : layer_(layer),
        moe_(moe),
        v_to_o_(v_to_o),
        cap_(cap),
        attn_in(cap, 1),
        attn_out_in(v_to_o ? cap : 0, 2),
        mlp_in(moe ? 0 : cap, 3),
        mlp_act(moe ? 0 : cap, 4),
        shared_act(cap, 5) {}

  bool wants(Tap tap, int64_t layer) const override {
    if (layer != layer_) return false;
    switch (tap) {
      case Tap::kAttnIn:
      case Tap::kSharedAct: return true;
      case Tap::kAttnOutIn: return v_to_o_;
      case Tap::kMlpIn:
      case Tap::kMlpAct: return !moe_;
      case Tap::kExpertAct: return moe_;
      default: return false;
    }
  }

  void observe(const TapEvent& e) override {
    const at::Tensor rows = valid_rows(e);
    switch (e.tap) {
      case Tap::kAttnIn: attn_in.add(rows); break;
      case Tap::kAttnOutIn: attn_out_in.add(rows); break;
      case Tap::kMlpIn: mlp_in.add(rows); break;
      case Tap::kMlpAct: mlp_act.add(rows); break;
      case Tap::kSharedAct: shared_act.add(rows); break;
      case Tap::kExpertAct:
        experts.try_emplace(e.expert, cap_, 100 + static_cast<uint64_t>(e.expert))
            .first->second.add(rows);
        break;
      default: break;
    }
  }

 private:
  int64_t layer_;
  bool moe_, v_to_o_;
  int64_t cap_;

 public:
  ActivationSummary attn_in, attn_out_in, mlp_in, mlp_act, shared_act;
  std::map<int64_t, ActivationSummary> experts;  ///< routed tokens, OUTPUT expert ids
};

/// §1.7 / §2.4: experts with too few routed tokens are measured on every token instead. The
/// layer's own weights compute act(gate x) ⊙ up x from the MoE block input.
class AllTokenExpertObserver : public TapObserver {
 public:
  AllTokenExpertObserver(const ModelSpec& spec, int64_t layer, const std::set<int64_t>& experts,
                         int64_t cap)
      : spec_(spec), layer_(layer) {
    for (int64_t e : experts) summaries.try_emplace(e, cap, 200 + static_cast<uint64_t>(e));
  }
  bool wants(Tap tap, int64_t layer) const override {
    return layer == layer_ && tap == Tap::kMlpIn;
  }
  void observe(const TapEvent& e) override {
    const at::Tensor x = valid_rows(e).to(at::kFloat);
    for (auto& [id, summary] : summaries) {
      const ExpertWeights& w = e.weights->experts.at(id);
      summary.add(gate_activation(spec_, at::linear(x, w.gate.to(x.device(), at::kFloat))) *
                  at::linear(x, w.up.to(x.device(), at::kFloat)));
    }
  }
  std::map<int64_t, ActivationSummary> summaries;

 private:
  const ModelSpec& spec_;
  int64_t layer_;
};

// ---- Folding into ctx.tensors. ----

/// What one smoothing group did, for the records' details.
struct GroupLog {
  std::string group;  ///< "input_layernorm → q,k,v", "experts.3 up → down", …
  double alpha = 0;
  int64_t tokens = 0;
  std::string statistics = "all";    ///< "routed" (expert over its own tokens) or "all"
  std::vector<double> errors;        ///< e(α) over the grid (adaptive only)
  std::vector<std::string> tensors;  ///< source names of the tensors changed
};

class LayerSmoother {
 public:
  LayerSmoother(LayerApplyContext& ctx, const SmoothingPlan& plan)
      : ctx_(ctx), plan_(plan), statistic_(*parse_smooth_statistic(plan.statistic)) {}

  LayerTensor* find(TensorRole role, int64_t expert = -1) {
    for (LayerTensor& t : ctx_.tensors) {
      if (t.role == role && t.expert == expert) return &t;
    }
    return nullptr;
  }

  /// The tensor's value as an fp32 tensor this layer owns (never a view of the file mapping).
  at::Tensor& working(LayerTensor& t) {
    if (converted_.insert(t.source).second)
      t.value = t.value.to(at::kFloat, false, /*copy=*/true).contiguous();
    return t.value;
  }

  /// Scales for one group from its input summary and the weights its scale balances.
  /// `to_columns` maps per-scale-channel values to the balanced weights' input columns (GQA v→o).
  at::Tensor scales(const ActivationSummary& x, const at::Tensor& act, const at::Tensor& wstat,
                    const std::vector<at::Tensor>& balanced, GroupLog& log,
                    const std::function<at::Tensor(const at::Tensor&)>& to_columns = {}) {
    log.tokens = x.tokens();
    if (!plan_.adaptive) {
      log.alpha = plan_.alpha;
      return smoothing_scales(act, wstat, plan_.alpha);
    }
    const AlphaSearch r =
        search_alpha(x.sample(), act, wstat, balanced, adaptive_alpha_grid(), to_columns);
    log.alpha = r.alpha;
    log.errors = r.errors;
    return r.scales;
  }

  /// norm → readers (§2.1: input_layernorm → q,k,v; post_attention_layernorm → gate,up).
  void norm_group(const std::string& name, LayerTensor* norm, std::vector<LayerTensor*> readers,
                  const ActivationSummary& x) {
    readers.erase(std::remove(readers.begin(), readers.end(), nullptr), readers.end());
    if (!norm || readers.empty() || x.tokens() == 0) return;
    GroupLog log;
    log.group = name;
    std::vector<at::Tensor> balanced;
    std::vector<at::Tensor*> refs;
    for (LayerTensor* r : readers) {
      balanced.push_back(working(*r));
      refs.push_back(&working(*r));
      log.tensors.push_back(r->source);
    }
    const at::Tensor act = x.statistic(statistic_);
    const at::Tensor s = scales(x, act, weight_statistic(balanced, statistic_), balanced, log);
    fold_into_norm(working(*norm), nullptr, refs, s, ctx_.spec.norm_plus_one);
    log.tensors.push_back(norm->source);
    logs_.push_back(std::move(log));
  }

  /// producer rows → consumer columns over the same channels (up → down, per expert or dense).
  void row_group(const std::string& name, LayerTensor* producer_t, at::Tensor producer,
                 LayerTensor* consumer_t, at::Tensor consumer, const ActivationSummary& x,
                 const std::string& statistics) {
    if (x.tokens() == 0) return;
    GroupLog log;
    log.group = name;
    log.statistics = statistics;
    const at::Tensor act = x.statistic(statistic_);
    const at::Tensor s = scales(x, act, weight_statistic({consumer}, statistic_), {consumer}, log);
    fold_rows_into_columns(producer, nullptr, consumer, s);
    log.tensors = {producer_t->source, consumer_t->source};
    logs_.push_back(std::move(log));
  }

  void attention(const SmoothingObserver& stats);
  void dense_mlp(const SmoothingObserver& stats);
  void experts(const SmoothingObserver& stats, const AllTokenExpertObserver& all);
  void shared_expert(const SmoothingObserver& stats);
  /// Tensors smoothed but not quantized by GPTQ go back to their stored dtype now, so later
  /// replays see exactly what the output checkpoint holds.
  void round_unquantized();
  const std::vector<GroupLog>& logs() const { return logs_; }
  const std::set<std::string>& converted() const { return converted_; }

 private:
  LayerApplyContext& ctx_;
  const SmoothingPlan& plan_;
  SmoothStatistic statistic_;
  std::set<std::string> converted_;
  std::vector<GroupLog> logs_;
};

void LayerSmoother::attention(const SmoothingObserver& stats) {
  const AttentionSpec& a = ctx_.spec.attention;
  if (a.kind == AttentionKind::kMla) {
    norm_group("input_layernorm → q_a,kv_a", find(TensorRole::kAttnNorm),
               {find(a.q_lora_rank > 0 ? TensorRole::kQA : TensorRole::kQ), find(TensorRole::kKVA)},
               stats.attn_in);
    if (plan_.v_to_o)
      ctx_.warnings.push_back("smoothquant: v-to-o does not apply to MLA attention; skipped");
    return;
  }
  norm_group("input_layernorm → q,k,v", find(TensorRole::kAttnNorm),
             {find(TensorRole::kQ), find(TensorRole::kK), find(TensorRole::kV)}, stats.attn_in);
  if (!plan_.v_to_o) return;
  if (a.clip_qkv) {  // clamping v is not linear: the fold would change the output
    ctx_.warnings.push_back("smoothquant: v-to-o skipped: the model clamps v (clip_qkv)");
    return;
  }
  LayerTensor *v = find(TensorRole::kV), *o = find(TensorRole::kO), *vb = find(TensorRole::kVBias);
  if (!v || !o || stats.attn_out_in.tokens() == 0) return;
  const int64_t h = a.num_heads, kv = a.num_kv_heads, d = a.head_dim;
  GroupLog log;
  log.group = "v_proj → o_proj";
  const at::Tensor act = reduce_to_kv_channels(stats.attn_out_in.statistic(statistic_), h, kv, d);
  const at::Tensor wstat =
      reduce_to_kv_channels(weight_statistic({working(*o)}, statistic_), h, kv, d);
  auto to_columns = [&](const at::Tensor& s) { return expand_kv_channels(s, h, kv, d); };
  const at::Tensor s = scales(stats.attn_out_in, act, wstat, {working(*o)}, log, to_columns);
  fold_rows_into_columns(working(*v), vb ? &working(*vb) : nullptr, working(*o), s, to_columns(s));
  log.tensors = {v->source, o->source};
  if (vb) log.tensors.push_back(vb->source);
  logs_.push_back(std::move(log));
}

void LayerSmoother::dense_mlp(const SmoothingObserver& stats) {
  // Gemma's MLP input norm is pre_feedforward_layernorm; its post-norms read no linear, so stay.
  norm_group(ctx_.spec.sandwich_norms ? "pre_feedforward_layernorm → gate,up"
                                      : "post_attention_layernorm → gate,up",
             find(TensorRole::kMlpNorm), {find(TensorRole::kDenseGate), find(TensorRole::kDenseUp)},
             stats.mlp_in);
  LayerTensor *up = find(TensorRole::kDenseUp), *down = find(TensorRole::kDenseDown);
  if (up && down)
    row_group("up_proj → down_proj", up, working(*up), down, working(*down), stats.mlp_act, "all");
}

void LayerSmoother::shared_expert(const SmoothingObserver& stats) {
  LayerTensor *up = find(TensorRole::kSharedUp), *down = find(TensorRole::kSharedDown);
  if (up && down) {
    row_group("shared_expert up → down", up, working(*up), down, working(*down), stats.shared_act,
              "all");
  }
}

/// §1.7 threshold: experts with fewer routed tokens take statistics over every token.
int64_t expert_token_threshold(int64_t tokens) {
  return std::max<int64_t>(256,
                           static_cast<int64_t>(std::ceil(0.005 * static_cast<double>(tokens))));
}

int64_t expert_count(const LayerApplyContext& ctx) {
  return (ctx.out_spec ? *ctx.out_spec : ctx.spec).layers[ctx.layer].num_experts;
}

/// The experts below the threshold, measured on all tokens by one more replay (before any fold).
std::unique_ptr<AllTokenExpertObserver> all_token_statistics(const LayerApplyContext& ctx,
                                                             const SmoothingObserver& stats,
                                                             int64_t cap) {
  const int64_t threshold = expert_token_threshold(stats.attn_in.tokens());
  std::set<int64_t> sparse;
  for (int64_t e = 0; e < expert_count(ctx); ++e) {
    auto it = stats.experts.find(e);
    if (it == stats.experts.end() || it->second.tokens() < threshold) sparse.insert(e);
  }
  auto all = std::make_unique<AllTokenExpertObserver>(ctx.out_spec ? *ctx.out_spec : ctx.spec,
                                                      ctx.layer, sparse, cap);
  if (!sparse.empty()) ctx.activations->run(*all);
  return all;
}

void LayerSmoother::experts(const SmoothingObserver& stats, const AllTokenExpertObserver& all) {
  LayerTensor* fused_up = find(TensorRole::kExpertsGateUp);
  LayerTensor* fused_down = find(TensorRole::kExpertsDown);
  for (int64_t e = 0; e < expert_count(ctx_); ++e) {
    const bool routed = !all.summaries.count(e);
    const ActivationSummary& x = routed ? stats.experts.at(e) : all.summaries.at(e);
    const std::string name = fmt::format("experts.{} up → down", e);
    const std::string source = routed ? "routed" : "all";
    if (fused_up && fused_down) {
      const int64_t width = working(*fused_up).size(1) / 2;  // [E, 2I, d]: gate rows, then up rows
      row_group(name, fused_up, working(*fused_up)[e].slice(0, width, 2 * width), fused_down,
                working(*fused_down)[e], x, source);
      continue;
    }
    LayerTensor *up = find(TensorRole::kExpertUp, e), *down = find(TensorRole::kExpertDown, e);
    if (up && down) row_group(name, up, working(*up), down, working(*down), x, source);
  }
}

void LayerSmoother::round_unquantized() {
  for (LayerTensor& t : ctx_.tensors) {
    if (!converted_.count(t.source)) continue;
    auto it = ctx_.plan.tensors.find(t.source);
    if (it == ctx_.plan.tensors.end() || it->second.method != "gptq")
      t.value = t.value.to(t.stored);
  }
}

const char* stored_format(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return "BF16";
    case at::kHalf: return "F16";
    case at::kFloat: return "F32";
    default: return "F64";
  }
}

/// details.smoothing of every changed tensor: the groups it took part in. Tensors without a record
/// (norms, or weights left unquantized) get one in their stored dtype.
void record_smoothing(LayerApplyContext& ctx, const SmoothingPlan& plan,
                      const std::vector<GroupLog>& logs) {
  std::map<std::string, nlohmann::json> by_source;
  for (const GroupLog& g : logs) {
    nlohmann::json j = {
        {"group", g.group}, {"alpha", g.alpha}, {"tokens", g.tokens}, {"statistics", g.statistics}};
    if (plan.adaptive) j["errors"] = g.errors;
    for (const std::string& t : g.tensors) by_source[t].push_back(j);
  }
  for (const auto& [source, groups] : by_source) {
    auto rec = std::find_if(ctx.records.begin(), ctx.records.end(),
                            [&](const TensorRecord& r) { return r.source == source; });
    if (rec == ctx.records.end()) {
      auto t = std::find_if(ctx.tensors.begin(), ctx.tensors.end(),
                            [&](const LayerTensor& x) { return x.source == source; });
      if (t == ctx.tensors.end()) continue;
      TensorRecord r;
      r.name = t->name;
      r.source = source;
      r.format = stored_format(t->value.scalar_type());
      r.bits = static_cast<int64_t>(t->value.element_size() * 8);
      ctx.records.push_back(r);
      rec = ctx.records.end() - 1;
    }
    if (rec->details.is_null()) rec->details = nlohmann::json::object();
    rec->details["smoothing"] = groups;
  }
}

}  // namespace

void apply_smoothquant(LayerApplyContext& ctx) {
  if (ctx.plan.smoothing) {
    if (!ctx.activations) {
      throw ConfigError(
          "", "smoothquant",
          "smoothquant needs calibration data (it smooths with each layer's activations): add a "
          "calibration section to the recipe");
    }
    const SmoothingPlan& plan = *ctx.plan.smoothing;
    if (!parse_smooth_statistic(plan.statistic)) {
      throw ConfigError("", "smoothing.statistic",
                        "expected absmax or range, found \"" + plan.statistic + "\"");
    }
    const bool moe = ctx.spec.layers[ctx.layer].is_moe;
    SmoothingObserver stats(ctx.layer, moe, plan.v_to_o, plan.adaptive ? kAdaptiveSampleTokens : 0);
    ctx.activations->run(stats);
    std::unique_ptr<AllTokenExpertObserver> all;
    if (moe) all = all_token_statistics(ctx, stats, plan.adaptive ? kAdaptiveSampleTokens : 0);
    LayerSmoother smoother(ctx, plan);
    smoother.attention(stats);  // input_layernorm first: its group sees v and o as loaded (§2.1)
    if (moe) {
      smoother.experts(stats,
                       *all);  // §2.4: no shared scale from post_attention_layernorm into experts
      smoother.shared_expert(stats);
    } else {
      smoother.dense_mlp(stats);
    }
    smoother.round_unquantized();
    const std::vector<GroupLog> logs = smoother.logs();
    apply_gptq(ctx);
    record_smoothing(ctx, plan, logs);
    return;
  }
  apply_gptq(ctx);
}

namespace {

class SmoothquantPass : public Pass {
 public:
  explicit SmoothquantPass(const PassInstance& instance) : options_(instance.options) {}

  void decide(const DecideContext& ctx, CompressionPlan& plan) const override {
    SmoothingPlan s;
    s.alpha = options_.get_float("alpha");
    s.adaptive = options_.get_bool("adaptive");
    s.statistic = options_.get_string("statistic");
    s.v_to_o = options_.get_bool("v-to-o");
    if (options_.get_bool("smooth")) {
      plan.smoothing = s;
      plan.decided_by["smoothing"] = "smoothquant";
    }
    if (!options_.get_bool("quantize")) return;
    for (const ExpectedTensor& t : ctx.tensors) {
      if (!is_quantizable(t.role)) continue;
      if (t.expert >= 0) {  // tensors of removed experts are not written
        auto kept = plan.experts.find(t.layer);
        if (kept != plan.experts.end() &&
            !std::binary_search(kept->second.begin(), kept->second.end(), t.expert)) {
          continue;
        }
      }
      TensorPlan p;
      p.method = "gptq";
      p.bits = 8;
      p.group_size = -1;
      p.sym = true;
      p.act_order = options_.get_string("act-order");
      p.damp = options_.get_float("damp");
      p.act_bits = 8;
      plan.tensors[t.name] = p;
    }
  }

  void apply(LayerApplyContext& ctx) const override { apply_smoothquant(ctx); }
  bool needs_activations() const override { return true; }

 private:
  OptionValues options_;
};

}  // namespace

std::unique_ptr<Pass> make_smoothquant_pass(const PassInstance& instance) {
  return std::make_unique<SmoothquantPass>(instance);
}

PassInfo smoothquant_pass_info() {
  OptionSpec statistic = make_option(
      "statistic", OptionType::kEnum, "absmax",
      "per-channel statistics: absmax (max|X| vs max|W|) or range (max X - min X vs 2 max|W|)");
  statistic.choices = {"absmax", "range"};
  OptionSpec act_order = make_option("act-order", OptionType::kEnum, "static",
                                     "GPTQ column order: none, static or dynamic");
  act_order.choices = {"none", "static", "dynamic"};
  return {
      "smoothquant",
      "W8A8: SmoothQuant scales folded into the weights, then int8 per-channel GPTQ weights with "
      "int8 "
      "per-token inputs (needs calibration data)",
      {
          make_option("alpha", OptionType::kFloat, "0.5",
                      "migration strength (0.75-0.85 for outlier-heavy models)", 0, 1),
          make_option("adaptive", OptionType::kBool, "false",
                      "choose alpha per smoothing group from 0.3..0.9 by the W8A8 output error"),
          statistic,
          make_option("v-to-o", OptionType::kBool, "false",
                      "also fold v_proj rows into o_proj columns (GQA)"),
          act_order,
          make_option("damp", OptionType::kFloat, "0.01",
                      "GPTQ dampening, relative to mean(diag H)", 0, 1),
          make_option("smooth", OptionType::kBool, "true",
                      "false: W8A8 without smoothing (a baseline)"),
          make_option("quantize", OptionType::kBool, "true",
                      "false: smooth only, everything stays in full precision (checks that "
                      "smoothing is exact)"),
      },
      {},
      false,
      make_smoothquant_pass};
}

}  // namespace lathe
