// experts-naee (ALGORITHMS.md §7; arXiv 2402.14800): per MoE layer, every keep set of the target
// size is simulated exactly on the block's calibration inputs (removed experts masked in the router
// as surgery would remove them) and the set with the least Σ_sequences ‖Y − Y'‖_F (fp64) is kept.
// Refuses when a layer would need more than `max-subsets` sets, naming diep as the alternative.
#include <ATen/ATen.h>

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "calibrate/calibration_set.h"
#include "compressor/common/errors.h"
#include "compressor/model/causal_lm.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/context.h"
#include "compressor/passes/expert_selection.h"
#include "compressor/passes/moe_blocks.h"

namespace lathe {
namespace {

double binomial(int64_t n, int64_t k) {
  double c = 1;
  for (int64_t i = 1; i <= k; ++i) c = c * static_cast<double>(n - k + i) / static_cast<double>(i);
  return std::round(c);
}

/// Advances `c` (ascending ids < n) to the next combination in lexicographic order; false at the
/// end.
bool next_combination(std::vector<int64_t>& c, int64_t n) {
  const int64_t k = static_cast<int64_t>(c.size());
  for (int64_t i = k - 1; i >= 0; --i) {
    if (c[i] < n - k + i) {
      c[i] += 1;
      for (int64_t j = i + 1; j < k; ++j) c[j] = c[j - 1] + 1;
      return true;
    }
  }
  return false;
}

/// One MoE layer's enumeration: for each kept count k, the best keep set and its loss.
struct LayerResult {
  int64_t layer;
  std::vector<double> best_loss;               // per k in [lo, E]
  std::vector<std::vector<int64_t>> best_set;  // per k
  std::vector<std::vector<double>> excluded;   // per k: per expert, least loss of a set without it
  int64_t sets = 0;
};

/// From the losses of every keep set of size k = lo..hi (enumeration order, next_combination), the
/// best set per k (ties keep the lexicographically first) and, per expert, the least loss of a set
/// without it (0 when k = E).
void summarize_keep_sets(const std::vector<std::vector<double>>& loss, int64_t lo, int64_t hi,
                         int64_t e, LayerResult* r_out) {
  LayerResult& r = *r_out;
  for (int64_t k = lo; k <= hi; ++k) {
    const std::vector<double>& lk = loss[static_cast<size_t>(k - lo)];
    double best = std::numeric_limits<double>::infinity();
    std::vector<int64_t> best_set;
    std::vector<double> excluded(e, std::numeric_limits<double>::infinity());
    std::vector<int64_t> set(k);
    for (int64_t i = 0; i < k; ++i) set[i] = i;
    size_t index = 0;
    do {
      const double v = lk[index++];
      r.sets += 1;
      if (v < best) {  // strict: ties keep the lexicographically first set
        best = v;
        best_set = set;
      }
      std::vector<bool> in_set(e, false);
      for (int64_t id : set) in_set[id] = true;
      for (int64_t id = 0; id < e; ++id) {
        if (!in_set[id]) excluded[id] = std::min(excluded[id], v);
      }
    } while (next_combination(set, e));
    for (double& v : excluded) {
      if (!std::isfinite(v)) v = 0;  // k = E: nothing is excluded
    }
    r.best_loss.push_back(best);
    r.best_set.push_back(best_set);
    r.excluded.push_back(excluded);
  }
}

class NaeePass : public Pass {
 public:
  explicit NaeePass(const PassInstance& instance) : options_(instance.options) {
    check_keep_options(options_, "experts-naee");
  }

  bool decide_needs_model() const override { return true; }

  void check(const CheckContext& ctx, std::vector<CheckProblem>&) const override {
    (void)plan_sizes(ctx.spec);
  }

  void decide(const DecideContext& ctx, CompressionPlan& plan) const override {
    if (!ctx.model) throw InternalError("", "experts-naee", "decide without the model");
    const Sizes sizes = plan_sizes(ctx.spec);
    std::vector<LayerResult> results;
    size_t moe_index = 0;
    for_each_moe_block(
        *ctx.model, [&](int64_t layer, const DecoderLayer& l, const MoeBlockInputs& in) {
          const int64_t e = ctx.spec.layers[layer].num_experts;
          const int64_t lo = sizes.lo[moe_index], hi = sizes.hi[moe_index];
          moe_index += 1;
          LayerResult r{layer, {}, {}, {}, 0};
          const auto dtype = ctx.model->model.options().dtype;
          const at::Tensor x = in.x.to(dtype);
          // Sequence id of every row, for the per-sequence norms.
          const int64_t sequences = static_cast<int64_t>(in.offsets.size()) - 1;
          std::vector<int64_t> seq_of(static_cast<size_t>(x.size(0)));
          for (int64_t s = 0; s < sequences; ++s) {
            for (int64_t row = in.offsets[s]; row < in.offsets[s + 1]; ++row) seq_of[row] = s;
          }
          std::vector<std::vector<double>> loss(
              static_cast<size_t>(hi - lo + 1));  // per k, per set (enumeration order)
          std::vector<ExpertGate> gates(static_cast<size_t>(layer) + 1);
          // Chunks of whole sequences, so that the experts' outputs [E, rows, d] stay under ~1 GiB.
          for (const auto& [s0, s1] : sequence_chunks(
                   in.offsets, e * x.size(1) * static_cast<int64_t>(x.element_size()))) {
            const int64_t r0 = in.offsets[s0], r1 = in.offsets[s1];
            const at::Tensor xc = x.slice(0, r0, r1);
            std::vector<int64_t> local(seq_of.begin() + r0, seq_of.begin() + r1);
            for (int64_t& v : local) v -= s0;
            const at::Tensor seq = at::tensor(local, at::kLong);
            ForwardContext fc;
            const at::Tensor full = l.routing_weights(xc, fc);
            const at::Tensor outputs = all_expert_outputs(l, xc);  // [E, rows, d]
            fc.expert_gates = &gates;
            for (int64_t k = lo; k <= hi; ++k) {
              std::vector<double>& lk = loss[static_cast<size_t>(k - lo)];
              std::vector<int64_t> set(k);
              for (int64_t i = 0; i < k; ++i) set[i] = i;
              size_t index = 0;
              do {
                at::Tensor log_gate =
                    at::full({e}, -std::numeric_limits<float>::infinity(), at::kFloat);
                log_gate.index_fill_(0, at::tensor(set, at::kLong), 0.0);
                gates[layer].log_gate = log_gate;
                const at::Tensor diff =
                    combine_experts(full - l.routing_weights(xc, fc), outputs).to(at::kDouble);
                const at::Tensor per_seq =
                    at::zeros({s1 - s0}, at::kDouble).index_add_(0, seq, diff.pow(2).sum(1));
                const double v = per_seq.sqrt().sum().item<double>();
                if (index == lk.size()) lk.push_back(0);
                lk[index++] += v;
              } while (next_combination(set, e));
            }
          }
          summarize_keep_sets(loss, lo, hi, e, &r);
          results.push_back(std::move(r));
        });
    // Choose the size per layer: uniform → the target; global → least Σ loss under the total.
    std::vector<int64_t> chosen;
    if (sizes.global) {
      std::vector<std::vector<double>> cost;
      for (const LayerResult& r : results) cost.push_back(r.best_loss);
      chosen = knapsack_counts(cost, sizes.lo, sizes.total);
      if (chosen.empty())
        throw InternalError("", "experts-naee", "no allocation reaches the total");
    } else {
      chosen = sizes.lo;
    }
    nlohmann::json diag = nlohmann::json::object();
    for (size_t i = 0; i < results.size(); ++i) {
      const LayerResult& r = results[i];
      const size_t k = static_cast<size_t>(chosen[i] - sizes.lo[i]);
      plan.experts[r.layer] = r.best_set[k];
      plan.expert_scores[r.layer] = r.excluded[k];
      nlohmann::json curve = nlohmann::json::object();
      for (size_t j = 0; j < r.best_loss.size(); ++j)
        curve[std::to_string(sizes.lo[i] + static_cast<int64_t>(j))] = r.best_loss[j];
      diag[std::to_string(r.layer)] = {{"sets", r.sets},
                                       {"kept", chosen[i]},
                                       {"loss", r.best_loss[k]},
                                       {"loss_by_count", curve}};
      std::string ids;
      for (int64_t id : r.best_set[k]) ids += (ids.empty() ? "" : ",") + std::to_string(id);
      ctx.log.push_back(fmt::format(
          "experts-naee: layer {} keeps {}/{} experts [{}] (Σ‖Y−Y'‖ {:.6g}, {} keep sets tried)",
          r.layer, chosen[i], ctx.spec.layers[r.layer].num_experts, ids, r.best_loss[k], r.sets));
    }
    plan.diagnostics["experts-naee"] = {{"layers", diag}};
    if (!results.empty()) plan.decided_by["experts"] = "experts-naee";
  }

  void apply(LayerApplyContext& ctx) const override { apply_expert_surgery(ctx); }

 private:
  struct Sizes {
    bool global = false;
    std::vector<int64_t> lo, hi;  // per MoE layer: sizes enumerated (uniform: lo = hi = target)
    int64_t total = 0;
  };

  /// The sizes to enumerate per MoE layer (keep_targets: uniform → the target; global → floor to
  /// E), refused when a layer would need more than max-subsets keep sets.
  Sizes plan_sizes(const ModelSpec& spec) const {
    Sizes s;
    s.global = options_.get_string("mode") == "global";
    const std::vector<int64_t> targets = keep_targets(spec, options_, "experts-naee");
    const double limit = static_cast<double>(options_.get_int("max-subsets"));
    size_t m = 0;
    for (int64_t i = 0; i < spec.num_layers; ++i) {
      const LayerSpec& l = spec.layers[i];
      if (!l.is_moe) continue;
      const int64_t lo = targets[m++], hi = s.global ? l.num_experts : lo;
      double sets = 0;
      for (int64_t k = lo; k <= hi; ++k)
        sets += k == l.num_experts ? 0 : binomial(l.num_experts, k);
      if (sets > limit) {
        throw ConfigError(
            "", "experts-naee.max-subsets",
            fmt::format(
                "layer {} would need {:.0f} keep sets of its {} experts (limit {:.0f}): use diep "
                "(differentiable, any size), a score method such as experts-frequency, or raise "
                "max-subsets",
                i, sets, l.num_experts, limit));
      }
      s.lo.push_back(lo);
      s.hi.push_back(hi);
    }
    if (s.global) s.total = targets.back();
    return s;
  }

  OptionValues options_;
};

}  // namespace

std::unique_ptr<Pass> make_experts_naee_pass(const PassInstance& instance) {
  return std::make_unique<NaeePass>(instance);
}

PassInfo experts_naee_pass_info() {
  return {
      "experts-naee",
      "prune routed experts by enumerating keep sets and keeping the one that best reconstructs "
      "each MoE "
      "block's output on calibration data (small expert counts only; needs calibration data)",
      expert_selection_options({make_option(
          "max-subsets", OptionType::kInt, "10000",
          "refuse a layer that would need more keep sets than this (use diep instead)", 1, 1e9)}),
      {},
      false,
      make_experts_naee_pass};
}

}  // namespace lathe
