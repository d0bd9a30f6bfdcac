// diep (ALGORITHMS.md §3; arXiv 2509.16105): differentiable, non-uniform expert pruning. All model
// weights stay frozen; per routed expert a gate g = σ(α/τ) enters the router (log g on the logits
// or selection score, see ExpertGate in decoder_layer.h) and per MoE layer a scale β multiplies the
// routed sum. Two modes:
//   end-to-end  every layer resident, loss CE + λ·KD(teacher = the same model without gates) + an
//               quadratic budget penalty μ(ḡ − target)² on the mean gate over all MoE layers, μ
//               growing 100×; alternating α, α, α, β Adam steps; global ranking of α with a
//               per-layer floor; learned β folded.
//   layerwise   one MoE block at a time on its cached calibration inputs: relative reconstruction
//               error + a per-layer budget annealed from E down to the floor; the experts' removal
//               order is ascending α; the exact error err_l(k) of keeping the top k (with the
//               least-squares β) feeds a multiple-choice knapsack under Σ k_l = K.
#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <numeric>
#include <optional>
#include <random>

#include "calibrate/calibration_set.h"
#include "compressor/common/errors.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/weight_store.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/context.h"
#include "compressor/passes/expert_selection.h"
#include "compressor/passes/moe_blocks.h"

namespace lathe {
namespace {

constexpr double kGateInit = 0.95;  // every gate starts at σ(α/τ) = 0.95

/// Bytes available to this process: MemAvailable of /proc/meminfo (0 when unknown).
uint64_t available_memory() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

struct Targets {
  std::vector<int64_t> layers;   ///< MoE layer indices
  std::vector<int64_t> experts;  ///< E_l
  std::vector<int64_t> floors;   ///< min experts per layer
  int64_t total = 0;             ///< experts kept in all
  int64_t all = 0;               ///< Σ E_l
};

/// Per-step record of the training (the report's loss curve).
struct Curve {
  std::vector<double> loss, ce, kd, budget, mean_gate, tau;
  nlohmann::json to_json() const {
    return {{"loss", loss},           {"ce", ce},  {"kd", kd}, {"budget", budget},
            {"mean_gate", mean_gate}, {"tau", tau}};
  }
};

/// End-to-end training's model: every decoder layer resident, the calibration set as [N, T] ids and
/// valid mask, and a seeded, reshuffled-per-pass batch order.
class ResidentModel {
 public:
  ResidentModel(const DecideModel& m, int64_t batch, uint64_t seed)
      : model_(m.model),
        spec_(m.model.spec()),
        rng_(seed),
        opts_(at::TensorOptions().dtype(m.model.options().dtype).device(m.model.options().device)) {
    for (int64_t i = 0; i < spec_.num_layers; ++i) layers_.push_back(model_.load_layer(i));
    std::tie(ids_, valid_) = calibration_tensors(m.calibration);
    batch_ = std::min(batch, m.calibration.num_samples());
    restart(seed);
  }

  /// Starts the batch order afresh from `seed` (the β re-fit draws its own order).
  void restart(uint64_t seed) {
    rng_.seed(seed);
    order_.resize(static_cast<size_t>(ids_.size(0)));
    std::iota(order_.begin(), order_.end(), int64_t{0});
    cursor_ = order_.size();
  }

  /// The next batch of the shuffled order: (ids, valid).
  std::pair<at::Tensor, at::Tensor> next_batch() {
    if (cursor_ + static_cast<size_t>(batch_) > order_.size()) {
      std::shuffle(order_.begin(), order_.end(), rng_);
      cursor_ = 0;
    }
    const at::Tensor pick = at::tensor(
        std::vector<int64_t>(order_.begin() + cursor_, order_.begin() + cursor_ + batch_),
        at::kLong);
    cursor_ += static_cast<size_t>(batch_);
    return {ids_.index_select(0, pick), valid_.index_select(0, pick)};
  }

  /// fp32 logits [B, T, V] with `gates` (null: the original model, without autograd: the teacher).
  at::Tensor logits(const at::Tensor& ids, const at::Tensor& valid,
                    const std::vector<ExpertGate>* gates) const {
    std::optional<at::NoGradGuard> no_grad;
    if (!gates) no_grad.emplace();
    ForwardContext fc = make_forward_context(spec_, valid, opts_, nullptr);
    fc.expert_gates = gates;
    at::Tensor h = model_.embed(ids);
    for (const DecoderLayer& l : layers_) h = l.forward(h, fc);
    return model_.head(h).to(at::kFloat);
  }

  const ModelSpec& spec() const { return spec_; }

 private:
  const CausalLM& model_;
  const ModelSpec& spec_;
  std::vector<DecoderLayer> layers_;
  at::Tensor ids_, valid_;
  int64_t batch_ = 1;
  std::mt19937_64 rng_;
  std::vector<int64_t> order_;
  size_t cursor_ = 0;
  at::TensorOptions opts_;
};

/// CE of the student and its distance to the teacher over the next-token positions whose target is
/// a real token: KL(teacher ‖ student), or the unsquared Frobenius norm of the logit difference.
std::pair<at::Tensor, at::Tensor> distillation(const at::Tensor& student, const at::Tensor& teacher,
                                               const at::Tensor& ids, const at::Tensor& valid,
                                               bool frobenius) {
  const int64_t seq = ids.size(1), v = student.size(-1);
  const at::Tensor mask = (valid.slice(1, 0, seq - 1) & valid.slice(1, 1)).reshape({-1});
  const at::Tensor s_logits = student.slice(1, 0, seq - 1).reshape({-1, v}).index({mask});
  const at::Tensor t_logits = teacher.slice(1, 0, seq - 1).reshape({-1, v}).index({mask});
  const at::Tensor s_log = s_logits.log_softmax(-1);
  const at::Tensor ce = at::nll_loss(s_log, ids.slice(1, 1).reshape({-1}).index({mask}));
  if (frobenius) return {ce, at::sqrt((s_logits - t_logits).pow(2).sum() + 1e-12)};
  const at::Tensor t_log = t_logits.log_softmax(-1);
  return {ce, (t_log.exp() * (t_log - s_log)).sum(-1).mean()};
}

/// The relative error ‖Y − Y'‖/‖Y‖ of MoE block `l` keeping only the top k experts of `rank`
/// (k = floor..E), each with its least-squares routed scale β (returned per k too).
void topk_errors(const DecoderLayer& l, int64_t layer, const MoeBlockInputs& in,
                 const at::Tensor& x, const at::Tensor& y, const std::vector<int64_t>& rank,
                 int64_t e, int64_t floor, std::vector<double>* err, std::vector<double>* beta_k) {
  ForwardContext plain;
  // Exact error of keeping the top k by α, with the least-squares β: accumulate ⟨R,R⟩, ⟨R,T⟩, ⟨T,T⟩
  // (R = routed sum of the kept experts, T = Y − shared), per k, over chunks of sequences so that
  // the experts' outputs [E, rows, d] stay under ~1 GiB whatever the calibration set's size.
  at::NoGradGuard no_grad;
  std::vector<double> rr(e + 1, 0), rt(e + 1, 0);
  double tt = 0, yy = 0;
  std::vector<ExpertGate> g(static_cast<size_t>(layer) + 1);
  ForwardContext fc;
  fc.expert_gates = &g;
  std::vector<at::Tensor> keep_gates;  // log-gates keeping the top k, k = floor..e
  for (int64_t k = floor; k <= e; ++k) {
    keep_gates.push_back(at::full({e}, -std::numeric_limits<float>::infinity(), at::kFloat));
    keep_gates.back().index_fill_(
        0, at::tensor(std::vector<int64_t>(rank.begin(), rank.begin() + k), at::kLong), 0.0);
  }
  for (const auto& [s0, s1] :
       sequence_chunks(in.offsets, e * x.size(1) * static_cast<int64_t>(x.element_size()))) {
    const int64_t r0 = in.offsets[s0], r1 = in.offsets[s1];
    const at::Tensor xc = x.slice(0, r0, r1);
    const at::Tensor outputs = all_expert_outputs(l, xc);
    // Y − shared: the original routed sum.
    const at::Tensor target_t =
        combine_experts(l.routing_weights(xc, plain), outputs).to(at::kDouble);
    tt += target_t.pow(2).sum().item<double>();
    yy += y.slice(0, r0, r1).to(at::kDouble).pow(2).sum().item<double>();
    for (int64_t k = floor; k <= e; ++k) {
      g[layer].log_gate = keep_gates[static_cast<size_t>(k - floor)];
      const at::Tensor r = combine_experts(l.routing_weights(xc, fc), outputs).to(at::kDouble);
      rr[k] += r.pow(2).sum().item<double>();
      rt[k] += (r * target_t).sum().item<double>();
    }
  }
  for (int64_t k = floor; k <= e; ++k) {
    const double b = rr[k] > 0 ? rt[k] / rr[k] : 1.0;
    const double sq = std::max(0.0, b * b * rr[k] - 2 * b * rt[k] + tt);
    err->push_back(std::sqrt(sq) / std::sqrt(std::max(yy, 1e-300)));
    beta_k->push_back(b);
  }
}

class DiepPass : public Pass {
 public:
  explicit DiepPass(const PassInstance& instance) : options_(instance.options) {
    if (options_.has("keep") == options_.has("sparsity")) {
      throw ConfigError(
          "", "diep.keep",
          "give exactly one of keep (fraction of routed experts kept) and sparsity (removed)");
    }
    if (options_.get_float("tau-end") > options_.get_float("tau-start")) {
      throw ConfigError("", "diep.tau-end",
                        "must not exceed tau-start (the temperature anneals down)");
    }
  }

  bool decide_needs_model() const override { return true; }
  void check(const CheckContext& ctx, std::vector<CheckProblem>&) const override {
    (void)targets(ctx.spec);
  }

  void decide(const DecideContext& ctx, CompressionPlan& plan) const override {
    if (!ctx.model) throw InternalError("", "diep", "decide without the model");
    const Targets t = targets(ctx.spec);
    if (t.layers.empty()) throw ConfigError("", "diep", "the model has no MoE layer");
    std::string mode = options_.get_string("mode");
    const uint64_t need = end_to_end_bytes(*ctx.model), have = memory_limit();
    if (mode == "auto") {
      mode = have == 0 || need <= have ? "end-to-end" : "layerwise";
      ctx.log.push_back(fmt::format(
          "diep: mode auto → {} (end-to-end needs about {:.2f} GiB, {:.2f} GiB available)", mode,
          need / 1073741824.0, have / 1073741824.0));
    } else if (mode == "end-to-end" && have != 0 && need > have) {
      throw ResourceError(
          "", "diep.mode",
          fmt::format(
              "end-to-end keeps the whole model and a batch's activations resident: about {:.2f} "
              "GiB, but {:.2f} GiB is available (diep.memory-limit or MemAvailable). Use mode: "
              "layerwise (one MoE block at a time), a smaller batch, or raise memory-limit",
              need / 1073741824.0, have / 1073741824.0));
    }
    torch::manual_seed(static_cast<uint64_t>(options_.get_int("seed")));
    nlohmann::json diag = {{"mode", mode},
                           {"target_mean_gate", static_cast<double>(t.total) / t.all}};
    std::vector<std::vector<int64_t>> kept;
    std::vector<std::vector<double>> alpha;
    std::vector<double> beta;
    if (mode == "end-to-end") {
      ResidentModel model(*ctx.model, options_.get_int("batch"),
                          static_cast<uint64_t>(options_.get_int("seed")));
      end_to_end(ctx, model, t, &alpha, &beta, &diag);
      std::vector<double> scale(t.layers.size(), 1.0);
      kept = select_global(alpha, scale, t.floors, t.total);
      model.restart(static_cast<uint64_t>(options_.get_int("seed")) + 1);
      beta = refit_beta(ctx, model, t, kept, &diag);
    } else {
      layerwise(ctx, t, &alpha, &kept, &beta, &diag);
    }
    nlohmann::json layers = nlohmann::json::object();
    for (size_t i = 0; i < t.layers.size(); ++i) {
      std::sort(kept[i].begin(), kept[i].end());
      const int64_t layer = t.layers[i];
      plan.experts[layer] = kept[i];
      plan.expert_scores[layer] = alpha[i];
      plan.expert_scale[layer] = beta[i];
      layers[std::to_string(layer)]["kept"] = kept[i].size();
      layers[std::to_string(layer)]["beta"] = beta[i];
      std::string ids;
      for (int64_t id : kept[i]) ids += (ids.empty() ? "" : ",") + std::to_string(id);
      ctx.log.push_back(fmt::format("diep: layer {} keeps {}/{} experts [{}], β = {:.4f}", layer,
                                    kept[i].size(), t.experts[i], ids, beta[i]));
    }
    for (auto& [k, v] : layers.items()) diag["layers"][k].update(v);
    plan.diagnostics["diep"] = diag;
    plan.decided_by["experts"] = "diep";
  }

  void apply(LayerApplyContext& ctx) const override { apply_expert_surgery(ctx); }

 private:
  Targets targets(const ModelSpec& spec) const {
    require_moe(spec, "diep");
    Targets t;
    const double keep =
        options_.has("keep") ? options_.get_float("keep") : 1.0 - options_.get_float("sparsity");
    const std::string field = options_.has("keep") ? "diep.keep" : "diep.sparsity";
    for (int64_t i = 0; i < spec.num_layers; ++i) {
      const LayerSpec& l = spec.layers[i];
      if (!l.is_moe) continue;
      const int64_t floor = options_.has("min-experts") ? options_.get_int("min-experts")
                                                        : std::min(l.top_k + 1, l.num_experts);
      if (floor < l.top_k || floor > l.num_experts) {
        throw ConfigError("", "diep.min-experts",
                          fmt::format("{} outside [top_k = {}, {} experts] in layer {}", floor,
                                      l.top_k, l.num_experts, i));
      }
      t.layers.push_back(i);
      t.experts.push_back(l.num_experts);
      t.floors.push_back(floor);
      t.all += l.num_experts;
    }
    t.total = std::llround(keep * static_cast<double>(t.all));
    const int64_t floors = std::accumulate(t.floors.begin(), t.floors.end(), int64_t{0});
    if (t.total < floors) {
      throw ConfigError(
          "", field,
          fmt::format("keeps {} of {} routed experts in all, below the per-layer floor's {} "
                      "(min-experts, default top_k + 1)",
                      t.total, t.all, floors));
    }
    if (t.total >= t.all) throw ConfigError("", field, "keeps every expert: nothing to prune");
    return t;
  }

  uint64_t memory_limit() const {
    const double gib = options_.get_float("memory-limit");
    return gib > 0 ? static_cast<uint64_t>(gib * 1073741824.0) : available_memory() / 10 * 8;
  }

  /// Resident bytes of end-to-end training: the weights in working precision (each expert's copy is
  /// kept by autograd) plus a batch's activations (per layer ≈ 24·d + 6·k·I + heads·T floats per
  /// token, logits ×4 for teacher, student and their gradients).
  uint64_t end_to_end_bytes(const DecideModel& m) const {
    const ModelSpec& s = m.model.spec();
    const uint64_t elem = m.model.options().dtype == at::kFloat ? 4 : 2;
    uint64_t params = 0;
    for (const std::string& name : m.model.store().names()) {
      uint64_t numel = 1;
      for (int64_t d : m.model.store().info(name).shape) numel *= static_cast<uint64_t>(d);
      params += numel * elem;
    }
    const uint64_t tokens = static_cast<uint64_t>(std::min<int64_t>(options_.get_int("batch"),
                                                                    m.calibration.num_samples())) *
                            static_cast<uint64_t>(m.calibration.seq_len);
    uint64_t per_token = 0;
    for (int64_t i = 0; i < s.num_layers; ++i) {
      const LayerSpec& l = s.layers[i];
      const int64_t inter =
          l.is_moe ? l.top_k * l.expert_intermediate + l.shared_intermediate : l.dense_intermediate;
      per_token += 24 * s.hidden_size + 6 * inter + s.attention.num_heads * m.calibration.seq_len;
    }
    per_token += 4 * s.vocab_size;
    return params + tokens * per_token * 4;
  }

  /// Gates of the MoE layers for a forward: log σ(α/τ) and β, indexed by decoder layer.
  static std::vector<ExpertGate> gates(const Targets& t, int64_t num_layers,
                                       const std::vector<at::Tensor>& alpha,
                                       const std::vector<at::Tensor>& beta, double tau) {
    std::vector<ExpertGate> g(static_cast<size_t>(num_layers));
    for (size_t i = 0; i < t.layers.size(); ++i) {
      g[t.layers[i]].log_gate = at::log_sigmoid(alpha[i] / tau);
      if (!beta.empty()) g[t.layers[i]].routed_scale = beta[i];
    }
    return g;
  }

  double tau_at(double progress) const {
    const double a = options_.get_float("tau-start"), b = options_.get_float("tau-end");
    return std::exp(std::log(a) + (std::log(b) - std::log(a)) * progress);
  }
  double lr_at(double progress) const {
    return options_.get_float("lr") * 0.5 * (1 + std::cos(M_PI * progress));
  }

  void end_to_end(const DecideContext& ctx, ResidentModel& model, const Targets& t,
                  std::vector<std::vector<double>>* alpha_out, std::vector<double>* beta_out,
                  nlohmann::json* diag) const {
    const ModelSpec& spec = model.spec();
    const double tau0 = options_.get_float("tau-start");
    std::vector<at::Tensor> alpha, beta;
    for (size_t i = 0; i < t.layers.size(); ++i) {
      alpha.push_back(
          torch::full({t.experts[i]}, tau0 * std::log(kGateInit / (1 - kGateInit)), torch::kFloat)
              .requires_grad_(true));
      beta.push_back(torch::ones({}, torch::kFloat).requires_grad_(true));
    }
    const double lr = options_.get_float("lr");
    torch::optim::Adam opt_alpha(alpha, torch::optim::AdamOptions(lr).betas({0.9, 0.999}));
    torch::optim::Adam opt_beta(beta, torch::optim::AdamOptions(lr).betas({0.9, 0.999}));
    const int64_t steps = options_.get_int("steps");
    const double lambda = options_.get_float("lambda"),
                 target = static_cast<double>(t.total) / t.all;
    const bool frobenius = options_.get_string("kd") == "frobenius";
    const double mu0 = options_.get_float("budget-weight");
    Curve curve;
    for (int64_t step = 0; step < steps; ++step) {
      const auto [b_ids, b_valid] = model.next_batch();
      const double progress = steps > 1 ? static_cast<double>(step) / (steps - 1) : 1.0;
      const double tau = tau_at(progress);
      const at::Tensor teacher = model.logits(b_ids, b_valid, nullptr);
      const std::vector<ExpertGate> g = gates(t, spec.num_layers, alpha, beta, tau);
      const auto [ce, kd] =
          distillation(model.logits(b_ids, b_valid, &g), teacher, b_ids, b_valid, frobenius);
      std::vector<at::Tensor> all_gates;
      for (const at::Tensor& a : alpha) all_gates.push_back(at::sigmoid(a / tau));
      const at::Tensor mean_gate = at::cat(all_gates).mean();
      const double mu =
          mu0 * std::pow(100.0, progress);  // the budget weight grows 100× over training
      const at::Tensor gap = mean_gate - target;
      const at::Tensor budget = mu * gap.pow(2);
      const at::Tensor loss = ce + lambda * kd + budget;
      const bool beta_step = step % 4 == 3;
      torch::optim::Adam& opt = beta_step ? opt_beta : opt_alpha;
      opt_alpha.zero_grad();
      opt_beta.zero_grad();
      loss.backward();
      for (auto& group : opt.param_groups())
        static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr_at(progress));
      opt.step();
      curve.loss.push_back(loss.item<double>());
      curve.ce.push_back(ce.item<double>());
      curve.kd.push_back(kd.item<double>());
      curve.budget.push_back(budget.item<double>());
      curve.mean_gate.push_back(mean_gate.item<double>());
      curve.tau.push_back(tau);
      if (step % std::max<int64_t>(1, steps / 10) == 0 || step == steps - 1) {
        std::string closed;
        for (size_t i = 0; i < alpha.size(); ++i) {
          const int64_t c = (at::sigmoid(alpha[i].detach() / tau) < 0.5).sum().item<int64_t>();
          closed += fmt::format("{}{}", closed.empty() ? "" : ",", c);
        }
        std::cerr << fmt::format(
            "[diep] step {}/{} loss {:.4f} ce {:.4f} kd {:.4g} mean gate {:.4f} (target {:.4f}) τ "
            "{:.3f} "
            "gates < 0.5 per layer [{}]\n",
            step + 1, steps, curve.loss.back(), curve.ce.back(), curve.kd.back(),
            curve.mean_gate.back(), target, tau, closed);
      }
    }
    // The final gates at the final temperature (what the budget was held to).
    double final_gate = 0;
    {
      at::NoGradGuard no_grad;
      std::vector<at::Tensor> all_gates;
      for (const at::Tensor& a : alpha) all_gates.push_back(at::sigmoid(a / tau_at(1.0)));
      final_gate = at::cat(all_gates).mean().item<double>();
    }
    ctx.log.push_back(fmt::format(
        "diep: end-to-end, {} steps: loss {:.4f} → {:.4f}, mean gate {:.4f} (target {:.4f})", steps,
        curve.loss.front(), curve.loss.back(), final_gate, target));
    (*diag)["curve"] = curve.to_json();
    (*diag)["final_mean_gate"] = final_gate;
    for (size_t i = 0; i < alpha.size(); ++i) {
      const at::Tensor a = alpha[i].detach().to(at::kDouble).contiguous();
      alpha_out->emplace_back(a.data_ptr<double>(), a.data_ptr<double>() + a.numel());
      beta_out->push_back(beta[i].item<double>());
      const at::Tensor gv =
          at::sigmoid(alpha[i].detach() / tau_at(1.0)).to(at::kDouble).contiguous();
      (*diag)["layers"][std::to_string(t.layers[i])]["gates"] =
          std::vector<double>(gv.data_ptr<double>(), gv.data_ptr<double>() + gv.numel());
    }
  }

  /// β of the PRUNED model: the relaxed model's β compensates half-open gates that the hard model
  /// no longer has, so after selection β alone is trained again (Adam, CE + λ·KD) with the removed
  /// experts at −inf and the kept ones fully open; steps/4 steps (at least 10).
  std::vector<double> refit_beta(const DecideContext& ctx, ResidentModel& model, const Targets& t,
                                 const std::vector<std::vector<int64_t>>& kept,
                                 nlohmann::json* diag) const {
    const ModelSpec& spec = model.spec();
    std::vector<at::Tensor> beta;
    std::vector<ExpertGate> g(static_cast<size_t>(spec.num_layers));
    for (size_t i = 0; i < t.layers.size(); ++i) {
      beta.push_back(torch::ones({}, torch::kFloat).requires_grad_(true));
      at::Tensor log_gate =
          at::full({t.experts[i]}, -std::numeric_limits<float>::infinity(), at::kFloat);
      log_gate.index_fill_(0, at::tensor(kept[i], at::kLong), 0.0);
      g[t.layers[i]].log_gate = log_gate;
      g[t.layers[i]].routed_scale = beta.back();
    }
    torch::optim::Adam opt(beta, torch::optim::AdamOptions(options_.get_float("lr") * 0.2));
    const int64_t steps = std::max<int64_t>(10, options_.get_int("steps") / 4);
    const double lambda = options_.get_float("lambda");
    const bool frobenius = options_.get_string("kd") == "frobenius";
    std::vector<double> curve;
    for (int64_t step = 0; step < steps; ++step) {
      const auto [b_ids, b_valid] = model.next_batch();
      const at::Tensor teacher = model.logits(b_ids, b_valid, nullptr);
      const auto [ce, kd] =
          distillation(model.logits(b_ids, b_valid, &g), teacher, b_ids, b_valid, frobenius);
      const at::Tensor loss = ce + lambda * kd;
      opt.zero_grad();
      loss.backward();
      opt.step();
      curve.push_back(loss.item<double>());
    }
    std::vector<double> out;
    for (const at::Tensor& b : beta) out.push_back(b.item<double>());
    (*diag)["beta_refit_curve"] = curve;
    ctx.log.push_back(
        fmt::format("diep: β re-fitted on the pruned model, {} steps: loss {:.4f} → {:.4f}", steps,
                    curve.front(), curve.back()));
    return out;
  }

  void layerwise(const DecideContext& ctx, const Targets& t,
                 std::vector<std::vector<double>>* alpha_out,
                 std::vector<std::vector<int64_t>>* kept_out, std::vector<double>* beta_out,
                 nlohmann::json* diag) const {
    const auto dtype = ctx.model->model.options().dtype;
    const int64_t steps = options_.get_int("steps");
    const double lr = options_.get_float("lr"), tau0 = options_.get_float("tau-start");
    const double mu = options_.get_float("budget-weight") * 100;
    std::vector<std::vector<double>> errors;   // per MoE layer: err(k) for k in [floor, E]
    std::vector<std::vector<double>> betas;    // least-squares β per k
    std::vector<std::vector<int64_t>> orders;  // experts best first (descending α)
    size_t index = 0;
    std::mt19937_64 rng(static_cast<uint64_t>(options_.get_int("seed")));
    for_each_moe_block(
        *ctx.model, [&](int64_t layer, const DecoderLayer& l, const MoeBlockInputs& in) {
          const size_t i = index++;
          at::AutoGradMode enable_grad(true);  // the streaming forward runs without autograd
          const int64_t e = t.experts[i], floor = t.floors[i];
          const at::Tensor x = in.x.to(dtype);
          ForwardContext plain;
          at::Tensor y;
          {
            at::NoGradGuard no_grad;
            y = l.mlp(x, plain).to(at::kFloat);
          }
          const int64_t sequences = static_cast<int64_t>(in.offsets.size()) - 1;
          const int64_t batch = std::min(options_.get_int("batch"), sequences);
          at::Tensor alpha =
              torch::full({e}, tau0 * std::log(kGateInit / (1 - kGateInit)), torch::kFloat)
                  .requires_grad_(true);
          at::Tensor beta = torch::ones({}, torch::kFloat).requires_grad_(true);
          torch::optim::Adam opt_alpha({alpha}, torch::optim::AdamOptions(lr));
          torch::optim::Adam opt_beta({beta}, torch::optim::AdamOptions(lr));
          std::vector<int64_t> order(static_cast<size_t>(sequences));
          std::iota(order.begin(), order.end(), 0);
          size_t cursor = order.size();
          std::vector<double> curve;
          for (int64_t step = 0; step < steps; ++step) {
            if (cursor + static_cast<size_t>(batch) > order.size()) {
              std::shuffle(order.begin(), order.end(), rng);
              cursor = 0;
            }
            std::vector<at::Tensor> rows;
            for (int64_t b = 0; b < batch; ++b) {
              const int64_t s = order[cursor + static_cast<size_t>(b)];
              rows.push_back(at::arange(in.offsets[s], in.offsets[s + 1], at::kLong));
            }
            cursor += static_cast<size_t>(batch);
            const at::Tensor pick = at::cat(rows);
            const double progress = steps > 1 ? static_cast<double>(step) / (steps - 1) : 1.0;
            const double tau = tau_at(progress);
            // The per-layer budget anneals from every gate open to the floor over 80% of the steps.
            const double target =
                1.0 - (1.0 - static_cast<double>(floor) / e) * std::min(1.0, progress / 0.8);
            std::vector<ExpertGate> g(static_cast<size_t>(layer) + 1);
            g[layer].log_gate = at::log_sigmoid(alpha / tau);
            g[layer].routed_scale = beta;
            ForwardContext fc;
            fc.expert_gates = &g;
            const at::Tensor yb = y.index_select(0, pick);
            const at::Tensor out = l.mlp(x.index_select(0, pick), fc).to(at::kFloat);
            const at::Tensor rec = (out - yb).norm() / (yb.norm() + 1e-12);
            const at::Tensor gap = at::sigmoid(alpha / tau).mean() - target;
            const at::Tensor loss = rec + mu * gap.pow(2);
            opt_alpha.zero_grad();
            opt_beta.zero_grad();
            loss.backward();
            torch::optim::Adam& opt = step % 4 == 3 ? opt_beta : opt_alpha;
            for (auto& group : opt.param_groups())
              static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr_at(progress));
            opt.step();
            curve.push_back(rec.item<double>());
          }
          const at::Tensor a = alpha.detach().to(at::kDouble).contiguous();
          alpha_out->emplace_back(a.data_ptr<double>(), a.data_ptr<double>() + a.numel());
          const std::vector<int64_t> rank = rank_experts(alpha_out->back());
          std::vector<double> err, beta_k;
          topk_errors(l, layer, in, x, y, rank, e, floor, &err, &beta_k);
          errors.push_back(err);
          betas.push_back(beta_k);
          orders.push_back(rank);
          nlohmann::json& d = (*diag)["layers"][std::to_string(layer)];
          d["curve"] = curve;
          d["error_by_count"] = err;
          d["removal_order"] = std::vector<int64_t>(rank.rbegin(), rank.rend());
          std::cerr << fmt::format(
              "[diep] layer {}: reconstruction {:.4f} → {:.4f} over {} steps; error at {} experts "
              "{:.4f}\n",
              layer, curve.front(), curve.back(), steps, floor, err.front());
        });
    const std::vector<int64_t> k = knapsack_counts(errors, t.floors, t.total);
    if (k.empty()) throw InternalError("", "diep", "no allocation reaches the total");
    double total_err = 0;
    for (size_t i = 0; i < k.size(); ++i) {
      kept_out->emplace_back(orders[i].begin(), orders[i].begin() + k[i]);
      beta_out->push_back(betas[i][static_cast<size_t>(k[i] - t.floors[i])]);
      total_err += errors[i][static_cast<size_t>(k[i] - t.floors[i])];
    }
    ctx.log.push_back(
        fmt::format("diep: layerwise, Σ relative block error of the allocation {:.4f}", total_err));
  }

  OptionValues options_;
};

}  // namespace

std::unique_ptr<Pass> make_diep_pass(const PassInstance& instance) {
  return std::make_unique<DiepPass>(instance);
}

PassInfo diep_pass_info() {
  OptionSpec diep_mode = make_option(
      "mode", OptionType::kEnum, "layerwise",
      "end-to-end: every layer resident, CE + KD + global budget; layerwise: one MoE block "
      "at a time (streaming); auto: end-to-end when it fits in memory");
  diep_mode.choices = {"auto", "end-to-end", "layerwise"};
  OptionSpec kd = make_option("kd", OptionType::kEnum, "kl",
                              "distillation term: kl (KL(teacher‖student)) or frobenius");
  kd.choices = {"kl", "frobenius"};
  return {
      "diep",
      "differentiable non-uniform expert pruning: learned per-expert router gates under one global "
      "budget "
      "(needs calibration data)",
      {
          make_option("keep", OptionType::kFloat, "",
                      "fraction of all routed experts kept, in (0, 1)", 0, 1),
          make_option("sparsity", OptionType::kFloat, "",
                      "fraction of all routed experts removed; instead of keep", 0, 1),
          diep_mode,
          make_option("min-experts", OptionType::kInt, "",
                      "experts every MoE layer keeps at least (default top_k + 1)", 1, 1 << 20),
          make_option("steps", OptionType::kInt, "300",
                      "optimiser steps (α, α, α, β alternating); per layer when layerwise", 1, 1e7),
          make_option("batch", OptionType::kInt, "16", "calibration sequences per step", 1,
                      1 << 20),
          make_option("lr", OptionType::kFloat, "0.15",
                      "Adam learning rate of α and β (cosine schedule)", 0, 10),
          make_option("lambda", OptionType::kFloat, "0.01", "weight of the distillation term", 0,
                      1e6),
          kd,
          make_option("budget-weight", OptionType::kFloat, "10",
                      "initial weight μ of the budget penalty (grows 100× over training)", 0, 1e9),
          make_option("tau-start", OptionType::kFloat, "1", "initial gate temperature", 1e-6, 1e6),
          make_option("tau-end", OptionType::kFloat, "0.05", "final gate temperature", 1e-6, 1e6),
          make_option("seed", OptionType::kInt, "0", "seed of the batch order", 0,
                      9007199254740991.0),
          make_option("memory-limit", OptionType::kFloat, "0",
                      "GiB end-to-end may hold (0: 80% of MemAvailable)", 0, 1e9),
      },
      {},
      false,
      make_diep_pass};
}

}  // namespace lathe
