// The cmoe pass: carve dense FFNs into mixtures of experts (ALGORITHMS.md §5; docs/cmoe.md).
// decide records which layers are carved and how (plan.carve); apply carves each one from its
// sequential calibration inputs (layer l sees the carved layers before it) and replaces the dense
// gate/up/down by the router, the routed experts and the shared MLP.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "compressor/common/errors.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/model/model_spec.h"
#include "compressor/model/taps.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/context.h"
#include "compressor/quant/carve.h"

namespace lathe {
namespace {

/// The MLP inputs (after the norm) of the first `sequences` calibration sequences of one layer,
/// real tokens only, fp32. Stops each forward at the MLP input.
class CarveInputs : public TapObserver {
 public:
  CarveInputs(int64_t layer, int64_t sequences) : layer_(layer), sequences_(sequences) {}
  bool wants(Tap tap, int64_t layer) const override {
    return layer == layer_ && tap == Tap::kMlpIn;
  }
  void observe(const TapEvent& e) override {
    const at::Tensor x = e.value->reshape({-1, e.value->size(-1)});
    const int64_t in_batch = x.size(0) / e.seq_len;
    const int64_t keep = std::clamp<int64_t>(sequences_ - e.sequence_begin, 0, in_batch);
    read_ = std::max(read_, e.sequence_begin + keep);
    if (keep > 0) {
      const at::Tensor valid = e.valid->reshape({-1}).slice(0, 0, keep * e.seq_len);
      parts_.push_back(x.slice(0, 0, keep * e.seq_len).index({valid}).to(at::kFloat).cpu());
    }
    throw StopForward{};
  }
  /// Sequences read (fewer than asked when the calibration set is smaller).
  int64_t read() const { return read_; }
  at::Tensor rows() const {
    if (parts_.empty()) return at::empty({0, 0}, at::kFloat);
    return at::cat(parts_, 0);
  }

 private:
  int64_t layer_, sequences_, read_ = 0;
  std::vector<at::Tensor> parts_;
};

nlohmann::json carve_details(const CarvePlan& p, const Carve& c, double seconds) {
  double shared_rate = 0, routed_rate = 0;
  for (int64_t j : c.shared) shared_rate += c.rates[j];
  for (const auto& e : c.experts)
    for (int64_t j : e) routed_rate += c.rates[j];
  const size_t routed = c.rates.size() - c.shared.size();
  return {{"experts", p.experts},
          {"shared", p.shared},
          {"active", p.active},
          {"atopk", p.atopk},
          {"tokens", c.tokens},
          {"shared_neurons", c.shared},
          {"routed_neurons", c.experts},
          {"representatives", c.representatives},
          {"mean_rate_shared", c.shared.empty() ? 0.0 : shared_rate / c.shared.size()},
          {"mean_rate_routed", routed == 0 ? 0.0 : routed_rate / routed},
          {"assignment_cost", c.assignment_cost},
          {"finetune", p.finetune},
          {"seconds", seconds}};
}

class CmoePass : public Pass {
 public:
  explicit CmoePass(const PassInstance& instance) : options_(instance.options) {
    plan_.experts = options_.get_int("experts");
    plan_.shared = options_.get_int("shared");
    plan_.active = options_.get_int("active");
    plan_.carve_samples = options_.get_int("carve-samples");
    plan_.atopk = options_.get_int("atopk");
    plan_.finetune = options_.get_string("finetune");
    plan_.balance_gamma = options_.get_float("balance-gamma");
    plan_.finetune_steps = options_.get_int("finetune-steps");
    plan_.finetune_lr = options_.get_float("finetune-lr");
  }

  void check(const CheckContext& ctx, std::vector<CheckProblem>& problems) const override {
    const CarvePlan& p = plan_;
    if (p.shared >= p.experts)
      problems.push_back({"cmoe.shared", fmt::format("{} shared experts: expected fewer than the "
                                                     "{} experts",
                                                     p.shared, p.experts)});
    if (p.active + p.shared > p.experts)
      problems.push_back(
          {"cmoe.active", fmt::format("active {} + shared {} exceed the {} experts (S + A ≤ N)",
                                      p.active, p.shared, p.experts)});
    std::set<int64_t> gated;
    for (const ExpectedTensor& t : ctx.tensors)
      if (t.role == TensorRole::kDenseGate) gated.insert(t.layer);
    for (int64_t layer : layers(ctx.spec, &problems)) {
      const LayerSpec& l = ctx.spec.layers[layer];
      if (l.is_moe) {
        problems.push_back(
            {"cmoe.layers", fmt::format("layer {} is an MoE layer: cmoe carves dense FFNs only "
                                        "(prune its experts with experts-* or diep instead)",
                                        layer)});
        continue;
      }
      if (!gated.count(layer)) {
        problems.push_back({"cmoe", fmt::format("layer {} has no gated MLP (gate_proj, up_proj, "
                                                "down_proj): CMoE carves gated FFNs only",
                                                layer)});
        continue;
      }
      if (l.dense_intermediate % p.experts != 0)
        problems.push_back(
            {"cmoe.experts",
             fmt::format("{} experts do not divide the FFN width {} of layer {}; use a divisor",
                         p.experts, l.dense_intermediate, layer)});
      else if (p.atopk > l.dense_intermediate)
        problems.push_back({"cmoe.atopk", fmt::format("{} exceeds the FFN width {} of layer {}",
                                                      p.atopk, l.dense_intermediate, layer)});
    }
  }

  void decide(const DecideContext& ctx, CompressionPlan& plan) const override {
    std::vector<CheckProblem> problems;
    check(CheckContext{ctx.spec, ctx.tensors}, problems);
    if (!problems.empty()) throw ConfigError("", problems.front().field, problems.front().message);
    for (int64_t layer : layers(ctx.spec, nullptr)) plan.carve[layer] = plan_;
    plan.decided_by["carve"] = "cmoe";
    ctx.log.push_back(fmt::format(
        "cmoe: {} layer(s) carved into S{}A{}E{} ({} of {} experts active)", plan.carve.size(),
        plan_.shared, plan_.active, plan_.experts, plan_.shared + plan_.active, plan_.experts));
  }

  void apply(LayerApplyContext& ctx) const override { apply_carve(ctx); }
  bool needs_activations() const override { return true; }
  bool changes_structure() const override { return true; }
  ModelSpec structure_after(const ModelSpec& spec) const override {
    CompressionPlan plan;
    for (int64_t layer : layers(spec, nullptr))
      if (!spec.layers[layer].is_moe) plan.carve[layer] = plan_;
    ModelSpec out = spec;
    out.layers = carved_layers(spec, plan);
    out.model_type = kCmoeModelType;
    out.carved = true;
    out.routing = RoutingRule{};
    out.routing.scoring = ScoringFunc::kCmoe;
    return out;
  }

 private:
  /// The layers to carve: the `layers` option, else every layer. Out-of-range ids are problems.
  std::vector<int64_t> layers(const ModelSpec& spec, std::vector<CheckProblem>* problems) const {
    std::vector<int64_t> out;
    if (!options_.has("layers")) {
      for (int64_t i = 0; i < spec.num_layers; ++i) out.push_back(i);
      return out;
    }
    for (int64_t i : options_.get_int_list("layers")) {
      if (i < spec.num_layers) {
        out.push_back(i);
      } else if (problems) {
        problems->push_back(
            {"cmoe.layers", fmt::format("layer {} is outside [0, {})", i, spec.num_layers)});
      }
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  }

  OptionValues options_;
  CarvePlan plan_;
};

LayerTensor& find_role(std::vector<LayerTensor>& tensors, TensorRole role, int64_t expert = -1) {
  for (auto& t : tensors)
    if (t.role == role && t.expert == expert) return t;
  throw InternalError("", "cmoe", "the layer has no tensor of the role the carve needs");
}

at::Tensor f32(const at::Tensor& t) {
  return t.to(at::kFloat);
}

/// A gated FFN down(act(gate x) · up x) in fp32.
at::Tensor ffn(const ModelSpec& spec, const at::Tensor& x, const at::Tensor& gate,
               const at::Tensor& up, const at::Tensor& down) {
  return at::linear(gate_activation(spec, at::linear(x, f32(gate))) * at::linear(x, f32(up)),
                    f32(down));
}

constexpr int64_t kFinetuneBatch = 512;
constexpr int64_t kStockRows = 4096, kStockSteps = 150;

/// The outputs of every routed expert ([n, k, d]) and of the shared MLP ([n, d], zeros without
/// one) of the carved layer on the rows x, without gradients.
std::pair<at::Tensor, at::Tensor> expert_outputs(const ModelSpec& spec, const LayerSpec& l,
                                                 std::vector<LayerTensor>& tensors,
                                                 const at::Tensor& x) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> outs;
  for (int64_t e = 0; e < l.num_experts; ++e) {
    outs.push_back(ffn(spec, x, find_role(tensors, TensorRole::kExpertGate, e).value,
                       find_role(tensors, TensorRole::kExpertUp, e).value,
                       find_role(tensors, TensorRole::kExpertDown, e).value));
  }
  at::Tensor shared = at::zeros({x.size(0), x.size(1)}, at::kFloat);
  if (l.shared_intermediate > 0)
    shared = ffn(spec, x, find_role(tensors, TensorRole::kSharedGate).value,
                 find_role(tensors, TensorRole::kSharedUp).value,
                 find_role(tensors, TensorRole::kSharedDown).value);
  return {at::stack(outs, 1), shared};
}

/// The router being tuned: Wg, Wc, extra_scale (trained) and the selection bias (moved by γ).
struct TunedRouter {
  std::vector<at::Tensor> params;  ///< Wg, Wc, extra_scale
  at::Tensor bias;
  /// The carved block's output from the experts' outputs, as DecoderLayer routes it; `chosen` gets
  /// the selected experts [n, A].
  at::Tensor output(const ModelSpec& spec, int64_t top_k, const at::Tensor& x,
                    const std::pair<at::Tensor, at::Tensor>& experts, at::Tensor* chosen) const {
    const at::Tensor& routed = experts.first;
    const at::Tensor probs = cmoe_router_scores(spec, x, params[0], params[1]).softmax(-1);
    *chosen = std::get<1>((probs.detach().to(at::kDouble) + bias.to(at::kDouble)).topk(top_k, -1));
    const at::Tensor weight = 1 + probs.gather(1, *chosen) * params[2].index({*chosen});
    const at::Tensor picked =
        routed.gather(1, chosen->unsqueeze(-1).expand({-1, -1, routed.size(2)}));
    return experts.second + (picked * weight.unsqueeze(-1)).sum(1);
  }
};

/// ‖out − y‖² / ‖y‖².
at::Tensor relative_error(const at::Tensor& out, const at::Tensor& y) {
  return (out - y).pow(2).sum() / y.pow(2).sum().clamp_min(1e-30);
}

/// One Adam step (betas 0.9, 0.999; ε `eps`) of `params` with their gradients; `t` counts from 1.
void adam_step(std::vector<at::Tensor>& params, std::vector<at::Tensor>& m1,
               std::vector<at::Tensor>& m2, double lr, double t, double eps = 1e-8) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor g = params[i].grad();
    if (!g.defined()) continue;
    m1[i].mul_(0.9).add_(g, 0.1);
    m2[i].mul_(0.999).addcmul_(g, g, 0.001);
    const at::Tensor mh = m1[i] / (1 - std::pow(0.9, t)), vh = m2[i] / (1 - std::pow(0.999, t));
    params[i].sub_(lr * mh / (vh.sqrt() + eps));
  }
}

/// Router fine-tuning of a carved layer (docs/cmoe.md "Router fine-tuning"): Wg, Wc and
/// extra_scale trained by Adam so that the carved block's output on the layer's carve inputs `h`
/// matches the dense FFN's (`target`), relative squared error; after each step the selection bias
/// moves by γ against the load imbalance (ALGORITHMS.md §5.4). Returns the steps and the error on
/// (at most 4,096 of) the carve rows before and after.
nlohmann::json finetune_router(LayerApplyContext& ctx, const CarvePlan& p, const at::Tensor& h,
                               const at::Tensor& target) {
  const ModelSpec& spec = *ctx.out_spec;
  const LayerSpec& l = spec.layers[ctx.layer];
  const int64_t k = l.num_experts, tokens = h.size(0);
  LayerTensor& wg_t = find_role(ctx.tensors, TensorRole::kRouter);
  LayerTensor& wc_t = find_role(ctx.tensors, TensorRole::kRouterUp);
  LayerTensor& scale_t = find_role(ctx.tensors, TensorRole::kRouterScale);
  LayerTensor& bias_t = find_role(ctx.tensors, TensorRole::kRouterBias);
  TunedRouter router{
      {f32(wg_t.value).clone().requires_grad_(true), f32(wc_t.value).clone().requires_grad_(true),
       f32(scale_t.value).clone().requires_grad_(true)},
      f32(bias_t.value).clone()};
  std::vector<at::Tensor> m1, m2;
  for (const auto& q : router.params) {
    m1.push_back(at::zeros_like(q));
    m2.push_back(at::zeros_like(q));
  }
  const int64_t probe = std::min<int64_t>(tokens, kStockRows);
  const at::Tensor probe_x = h.slice(0, 0, probe), probe_y = target.slice(0, 0, probe);
  const auto probe_experts = expert_outputs(spec, l, ctx.tensors, probe_x);
  auto probe_error = [&] {
    at::NoGradGuard no_grad;
    at::Tensor chosen;
    return relative_error(router.output(spec, l.top_k, probe_x, probe_experts, &chosen), probe_y)
        .item<double>();
  };
  const double before = probe_error();
  const int64_t steps =
      p.finetune_steps > 0
          ? p.finetune_steps
          : std::max<int64_t>(1, 4 * ((tokens + kFinetuneBatch - 1) / kFinetuneBatch));
  std::vector<int64_t> perm(static_cast<size_t>(tokens));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(static_cast<uint64_t>(ctx.layer)));
  const at::Tensor order = at::tensor(perm, at::kLong);
  for (int64_t step = 0; step < steps; ++step) {
    const int64_t b = (step * kFinetuneBatch) % tokens;
    const at::Tensor rows = order.slice(0, b, std::min(tokens, b + kFinetuneBatch));
    const at::Tensor x = h.index_select(0, rows);
    at::Tensor chosen;
    const at::Tensor loss = relative_error(
        router.output(spec, l.top_k, x, expert_outputs(spec, l, ctx.tensors, x), &chosen),
        target.index_select(0, rows));
    for (auto& q : router.params) q.mutable_grad() = at::Tensor();
    loss.backward();
    adam_step(router.params, m1, m2, p.finetune_lr, static_cast<double>(step + 1));
    // Load balance without an auxiliary loss: b_e −= γ above the mean load, += γ below.
    const at::Tensor load =
        at::zeros({k}, at::kFloat)
            .index_add_(0, chosen.reshape({-1}), at::ones({chosen.numel()}, at::kFloat));
    const at::Tensor mean = load.mean();
    router.bias -= p.balance_gamma * ((load > mean).to(at::kFloat) - (load < mean).to(at::kFloat));
  }
  const double after = probe_error();
  wg_t.value = router.params[0].detach();
  wc_t.value = router.params[1].detach();
  scale_t.value = router.params[2].detach();
  bias_t.value = router.bias;
  return {{"steps", steps},        {"loss_before", before}, {"loss_after", after},
          {"probe_tokens", probe}, {"lr", p.finetune_lr},   {"balance_gamma", p.balance_gamma}};
}

/// The carved router's choice scores p + b on the rows of x [n, d] (fp64).
at::Tensor choice_scores(const ModelSpec& spec, const std::vector<LayerTensor>& tensors,
                         const at::Tensor& x) {
  auto value = [&](TensorRole role) -> const at::Tensor& {
    for (const auto& t : tensors)
      if (t.role == role) return t.value;
    throw InternalError("", "cmoe", "a carved layer without its router");
  };
  const at::Tensor s =
      cmoe_router_scores(spec, x, value(TensorRole::kRouter), value(TensorRole::kRouterUp));
  return s.softmax(-1).to(at::kDouble) + value(TensorRole::kRouterBias).to(at::kDouble);
}

/// The linear softmax router a stock runtime (the qwen2-moe export) routes the carve with
/// (docs/cmoe.md "Export"): R fitted by ridge least squares to the carve's choice scores p + b on
/// the carve inputs `h`, refined by softmax cross-entropy towards the carve's top-A choice, then
/// scaled so its logits span at most 0.01 on those rows (the renormalised top-A weights are then
/// within about 1% of uniform, which the export's ×A on down_proj turns into CMoE's weight 1).
/// With every expert active the router is 0 (exact); Gemma 3 carves, which no stock family runs,
/// get 0 unfitted. Returns the fit's facts.
nlohmann::json fit_stock_router(LayerApplyContext& ctx, const at::Tensor& h) {
  const ModelSpec& spec = *ctx.out_spec;
  const LayerSpec& l = spec.layers[ctx.layer];
  LayerTensor& stock = find_role(ctx.tensors, TensorRole::kRouterStock);
  if (l.top_k == l.num_experts) {
    stock.value = at::zeros({l.num_experts, h.size(1)}, at::kFloat);
    return {{"exact", true}, {"agreement", 1.0}, {"overlap", 1.0}};
  }
  if (spec.family == Family::kGemma3Text) {  // no stock export takes it: not worth the fit
    stock.value = at::zeros({l.num_experts, h.size(1)}, at::kFloat);
    return {{"fitted", false}, {"why", "no stock MoE family runs Gemma 3 (docs/cmoe.md)"}};
  }
  const at::Tensor z = choice_scores(spec, ctx.tensors, h).to(at::kDouble);
  const at::Tensor x = h.to(at::kDouble);
  at::Tensor gram = x.t().mm(x);
  const double ridge = 1e-3 * gram.diagonal().mean().item<double>() + 1e-12;
  gram.diagonal().add_(ridge);
  const at::Tensor ls = at::linalg_solve(gram, x.t().mm(z)).t().contiguous();  // [k, d]
  // Refined by softmax cross-entropy towards the carve's choice (uniform over its top A), Adam from
  // the least-squares start, on at most kStockRows rows.
  const int64_t rows = std::min<int64_t>(h.size(0), kStockRows);
  const at::Tensor xs = h.slice(0, 0, rows).to(at::kFloat);
  const at::Tensor chosen = std::get<1>(z.slice(0, 0, rows).topk(l.top_k, 1));
  const at::Tensor target = at::zeros({rows, l.num_experts}, at::kFloat)
                                .scatter_(1, chosen, 1.0 / static_cast<double>(l.top_k));
  const at::Tensor start_logits = x.mm(ls.t());
  const double start_span =
      (std::get<0>(start_logits.max(1)) - std::get<0>(start_logits.min(1))).max().item<double>();
  std::vector<at::Tensor> r = {
      (ls * (start_span > 0 ? 4.0 / start_span : 1.0)).to(at::kFloat).requires_grad_(true)};
  std::vector<at::Tensor> m1 = {at::zeros_like(r[0])}, m2 = {at::zeros_like(r[0])};
  const double lr = 0.02 * r[0].detach().abs().mean().item<double>() + 1e-12;
  double first = 0, last = 0;
  for (int64_t step = 0; step < kStockSteps; ++step) {
    const at::Tensor loss = -(target * xs.mm(r[0].t()).log_softmax(1)).sum(1).mean();
    r[0].mutable_grad() = at::Tensor();
    loss.backward();
    (step == 0 ? first : last) = loss.item<double>();
    adam_step(r, m1, m2, lr, static_cast<double>(step + 1), 1e-12);
  }
  const at::Tensor fitted = r[0].detach().to(at::kDouble);
  const at::Tensor logits = x.mm(fitted.t());
  const double span =
      (std::get<0>(logits.max(1)) - std::get<0>(logits.min(1))).max().item<double>();
  stock.value = (fitted * (span > 0 ? 0.01 / span : 1.0)).to(at::kFloat);
  // How often the fitted router picks the carve's top-A set on the fit's rows, and the mean share
  // of the carve's choice it picks.
  const at::Tensor want = std::get<0>(std::get<1>(z.topk(l.top_k, 1)).sort(1));
  const at::Tensor got = std::get<0>(std::get<1>(logits.topk(l.top_k, 1)).sort(1));
  const double agreement = (want == got).all(1).to(at::kDouble).mean().item<double>();
  const at::Tensor hits = at::zeros_like(z).scatter_(1, want, 1.0).gather(1, got);
  const double overlap = hits.mean().item<double>();
  return {{"exact", false}, {"agreement", agreement}, {"overlap", overlap},
          {"ridge", ridge}, {"ce_first", first},      {"ce_last", last}};
}

/// The carved layer's tensors (router, routed experts, shared MLP) from the dense gate, up and
/// down, named and ordered as `out_spec` says; the stock router is zeros until fitted.
std::vector<LayerTensor> carved_tensors(const ModelSpec& out_spec, int64_t layer,
                                        const LayerTensor& gate, const LayerTensor& up,
                                        const LayerTensor& down, const Carve& carve, int64_t d) {
  auto ids = [](const std::vector<int64_t>& v) { return at::tensor(v, at::kLong); };
  const at::Tensor reps = ids(carve.representatives);
  const int64_t k = static_cast<int64_t>(carve.experts.size());
  std::vector<LayerTensor> carved;
  for (const ExpectedTensor& e :
       expected_layer_tensors(out_spec, ExpertLayout::kPerExpert, layer)) {
    const TensorRole r = e.role;
    // The dense tensor it comes from: up (Wc, expert and shared up), down, else gate.
    const bool from_up =
        r == TensorRole::kRouterUp || r == TensorRole::kExpertUp || r == TensorRole::kSharedUp;
    const bool from_down = r == TensorRole::kExpertDown || r == TensorRole::kSharedDown;
    const LayerTensor& src = from_down ? down : from_up ? up : gate;
    LayerTensor t{src.source, e.name, r, e.expert, {}, src.stored};
    switch (r) {
      case TensorRole::kRouter:
      case TensorRole::kRouterUp:
        t.value = unit_rows(src.value.index_select(0, reps));
        t.stored = at::kFloat;
        break;
      case TensorRole::kRouterScale:
      case TensorRole::kRouterBias:
        t.value = at::zeros({k}, at::kFloat);
        t.stored = at::kFloat;
        break;
      case TensorRole::kRouterStock:  // fitted below, once the router is final
        t.value = at::zeros({k, d}, at::kFloat);
        t.stored = at::kFloat;
        break;
      case TensorRole::kExpertGate:
      case TensorRole::kExpertUp:
      case TensorRole::kExpertDown:
      case TensorRole::kSharedGate:
      case TensorRole::kSharedUp:
      case TensorRole::kSharedDown: {  // rows of gate / up, columns of down
        const std::vector<int64_t>& neurons =
            e.expert >= 0 ? carve.experts.at(e.expert) : carve.shared;
        t.value = src.value.index_select(from_down ? 1 : 0, ids(neurons));
        break;
      }
      default: continue;
    }
    carved.push_back(std::move(t));
  }
  return carved;
}

}  // namespace

void apply_carve(LayerApplyContext& ctx) {
  const auto it = ctx.plan.carve.find(ctx.layer);
  if (it == ctx.plan.carve.end()) return;
  const CarvePlan& p = it->second;
  if (!ctx.activations || !ctx.out_spec) {
    throw ConfigError("", "calibration",
                      "cmoe carves each FFN from its calibration inputs: add a calibration section "
                      "(or --data TASK=FILE for lathe apply)");
  }
  const auto start = std::chrono::steady_clock::now();
  CarveInputs inputs(ctx.layer, p.carve_samples);
  ctx.activations->run(inputs);
  const at::Tensor h = inputs.rows();
  if (inputs.read() < p.carve_samples)
    ctx.warnings.push_back(fmt::format(
        "cmoe: carve-samples is {} but the calibration set has {} sequences: the carve read {} "
        "tokens",
        p.carve_samples, inputs.read(), h.size(0)));
  if (h.size(0) == 0)
    throw DataError(
        "", "calibration",
        fmt::format("layer {}: no calibration token reached the FFN to carve it", ctx.layer));
  const LayerTensor gate = find_role(ctx.tensors, TensorRole::kDenseGate);
  const LayerTensor up = find_role(ctx.tensors, TensorRole::kDenseUp);
  const LayerTensor down = find_role(ctx.tensors, TensorRole::kDenseDown);
  const Carve carve = carve_ffn(ctx.spec, h, gate.value, up.value, {p.experts, p.shared, p.atopk});
  const at::Tensor target =
      p.finetune == "router" ? ffn(ctx.spec, h, gate.value, up.value, down.value) : at::Tensor();

  std::vector<LayerTensor> carved =
      carved_tensors(*ctx.out_spec, ctx.layer, gate, up, down, carve, h.size(1));
  // The carve takes the dense MLP's place, in the registry's order.
  std::vector<LayerTensor> out;
  for (LayerTensor& t : ctx.tensors) {
    if (t.role == TensorRole::kDenseGate) {
      for (LayerTensor& c : carved) out.push_back(std::move(c));
    } else if (t.role != TensorRole::kDenseUp && t.role != TensorRole::kDenseDown) {
      out.push_back(std::move(t));
    }
  }
  ctx.tensors = std::move(out);
  nlohmann::json tuned;
  if (p.finetune == "router") tuned = finetune_router(ctx, p, h, target);
  const nlohmann::json stock = fit_stock_router(ctx, h);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const LayerTensor& t : ctx.tensors) {
    if (t.role != TensorRole::kRouter) continue;
    TensorRecord r;
    r.name = t.name;
    r.source = t.source;
    r.bits = 32;
    r.details = {{"cmoe", carve_details(p, carve, seconds)}};
    if (!tuned.is_null()) r.details["cmoe"]["router_finetune"] = tuned;
    r.details["cmoe"]["stock_router"] = stock;
    replace_record(ctx, std::move(r));
  }
}

std::unique_ptr<Pass> make_cmoe_pass(const PassInstance& instance) {
  return std::make_unique<CmoePass>(instance);
}

PassInfo cmoe_pass_info() {
  OptionSpec finetune = make_option("finetune", OptionType::kEnum, "none",
                                    "none (training-free carve) or router (train Wg, Wc and "
                                    "extra_scale on the layer's calibration inputs)");
  finetune.choices = {"none", "router"};
  PassInfo info{
      "cmoe",
      "carve dense FFNs into MoE: N experts of I/N neurons, S shared, A of the rest routed per "
      "token",
      {
          make_option("experts", OptionType::kInt, "16", "N: experts per FFN (must divide I)", 2,
                      1 << 16),
          make_option("shared", OptionType::kInt, "2", "S: experts merged into the shared MLP", 0,
                      1 << 16),
          make_option("active", OptionType::kInt, "2", "A: routed experts active per token", 1,
                      1 << 16),
          make_option("carve-samples", OptionType::kInt, "8",
                      "calibration sequences the carve's activation statistics read", 1, 1 << 20),
          make_option("atopk", OptionType::kInt, "10", "K_a: neurons marked active per token", 1,
                      1 << 20),
          make_option("layers", OptionType::kIntList, "",
                      "decoder layers to carve (default: every layer)", 0, 1 << 20),
          finetune,
          make_option("balance-gamma", OptionType::kFloat, "0.001",
                      "router fine-tuning: γ of the load-balancing bias update", 0, 1),
          make_option("finetune-steps", OptionType::kInt, "0",
                      "router fine-tuning: Adam steps per layer of 512 tokens (0: 4 epochs)", 0,
                      1 << 20),
          make_option("finetune-lr", OptionType::kFloat, "0.001",
                      "router fine-tuning: Adam learning rate", 1e-7, 1),
      },
      {},
      false,
      make_cmoe_pass};
  info.needs_calibration = true;
  return info;
}

}  // namespace lathe
