// Expert-pruning baselines (ALGORITHMS.md §7; docs/expert_pruning.md): `experts-frequency`,
// `experts-mass`, `experts-router-norm` and `experts-random` score every routed expert, keep the
// best per MoE layer (uniform) or across layers (global, with a per-layer floor), and hand the kept
// ids to the same surgery as `drop-experts` (apply_expert_surgery).
#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "calibrate/stats_store.h"
#include "compressor/common/errors.h"
#include "compressor/model/weight_store.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/context.h"
#include "compressor/passes/expert_selection.h"

namespace lathe {
namespace {

enum class ScoreMethod { kFrequency, kMass, kRouterNorm, kRandom };

/// One MoE layer's scores. `scale` turns a score into the quantity global mode ranks across
/// layers: 1/T for data scores (T = the layer's calibration tokens), 1/Σ_e score for data-free
/// ones.
struct LayerScores {
  int64_t layer = 0;
  int64_t top_k = 0;
  std::vector<double> score;  ///< per original expert id
  double scale = 1;
};

/// The sum over calibration tasks of statistic `kind` of `layer` ([E] f64) and the tokens behind
/// it. Weights are checked against `upstream` (the weights the statistic depends on); calibration
/// and collector options are the store's own, which the observe stage of this run has just
/// verified.
std::pair<std::vector<double>, int64_t> summed_statistic(const StatsStore& stats,
                                                         const std::string& kind, int64_t layer,
                                                         const std::string& upstream,
                                                         const std::string& pass) {
  at::Tensor sum;
  int64_t tokens = 0;
  for (const StatsKey& key : stats.keys()) {
    if (key.kind != kind || key.layer != layer || key.tap != "router") continue;
    const StatsInfo info = stats.info(key);
    StatsFingerprints want = info.fingerprints;
    want.weights = upstream;
    const at::Tensor v = stats.get(key, want).to(at::kDouble);
    sum = sum.defined() ? sum + v : v;
    tokens += info.tokens;
  }
  if (!sum.defined()) {
    throw DataError(
        stats.path(), fmt::format("{}/layer_{}/router", kind, layer),
        fmt::format("{} needs router statistics of every MoE layer; this store has none", pass));
  }
  const at::Tensor c = sum.contiguous();
  return {std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel()), tokens};
}

class ExpertScorePass : public Pass {
 public:
  ExpertScorePass(const PassInstance& instance, ScoreMethod method)
      : name_(instance.name), method_(method), options_(instance.options) {
    check_keep_options(options_, name_);
  }

  void check(const CheckContext& ctx, std::vector<CheckProblem>&) const override {
    (void)keep_targets(ctx.spec, options_, name_);
  }

  void decide(const DecideContext& ctx, CompressionPlan& plan) const override {
    const std::vector<LayerScores> layers = scores(ctx);
    const std::vector<int64_t> keep = keep_targets(ctx.spec, options_, name_);
    std::vector<std::vector<double>> score;
    std::vector<double> scale;
    for (const LayerScores& l : layers) {
      score.push_back(l.score);
      scale.push_back(l.scale);
    }
    std::vector<std::vector<int64_t>> kept =
        options_.get_string("mode") == "global"
            ? select_global(score, scale, std::vector<int64_t>(keep.begin(), keep.end() - 1),
                            keep.back())
            : select_uniform(score, keep);
    for (size_t i = 0; i < layers.size(); ++i) {
      std::sort(kept[i].begin(), kept[i].end());
      const LayerScores& l = layers[i];
      plan.experts[l.layer] = kept[i];
      plan.expert_scores[l.layer] = l.score;
      std::string ids;
      for (int64_t id : kept[i]) ids += (ids.empty() ? "" : ",") + std::to_string(id);
      ctx.log.push_back(fmt::format("{}: layer {} keeps {}/{} experts [{}]", name_, l.layer,
                                    kept[i].size(), l.score.size(), ids));
    }
    if (!layers.empty()) plan.decided_by["experts"] = name_;
  }

  void apply(LayerApplyContext& ctx) const override { apply_expert_surgery(ctx); }

 private:
  std::vector<LayerScores> scores(const DecideContext& ctx) const {
    std::vector<LayerScores> out;
    const bool data = method_ == ScoreMethod::kFrequency || method_ == ScoreMethod::kMass;
    if (data && !ctx.stats)
      throw ConfigError("", "calibration",
                        name_ + " reads router statistics: add a calibration section");
    std::mt19937_64 rng(
        static_cast<uint64_t>(method_ == ScoreMethod::kRandom ? options_.get_int("seed") : 0));
    for (int64_t i = 0; i < ctx.spec.num_layers; ++i) {
      const LayerSpec& spec = ctx.spec.layers[i];
      if (!spec.is_moe) continue;
      LayerScores l;
      l.layer = i;
      l.top_k = spec.top_k;
      if (data) {
        const std::string kind = method_ == ScoreMethod::kFrequency         ? "expert_tokens"
                                 : options_.get_string("variant") == "topk" ? "router_selected_mass"
                                                                            : "router_prob_mass";
        int64_t tokens = 0;
        std::tie(l.score, tokens) =
            summed_statistic(*ctx.stats, kind, i, ctx.upstream_weights.at(i), name_);
        l.scale = tokens > 0 ? 1.0 / static_cast<double>(tokens) : 0.0;
      } else {
        l.score = method_ == ScoreMethod::kRandom ? random_draws(rng, spec.num_experts)
                                                  : router_row_norms(ctx, i);
        const double sum = std::accumulate(l.score.begin(), l.score.end(), 0.0);
        l.scale = sum > 0 ? 1.0 / sum : 0.0;
      }
      if (static_cast<int64_t>(l.score.size()) != spec.num_experts) {
        throw InternalError("", name_,
                            fmt::format("{} scores for {} experts in layer {}", l.score.size(),
                                        spec.num_experts, i));
      }
      out.push_back(std::move(l));
    }
    return out;
  }

  /// Uniform draws in [0, 1) from the top 53 bits of mt19937_64 (whose output the standard fixes),
  /// so a seed picks the same experts on every platform.
  static std::vector<double> random_draws(std::mt19937_64& rng, int64_t n) {
    std::vector<double> v(n);
    for (double& x : v) x = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    return v;
  }

  /// ‖W_gate[e]‖₂ of every router row, in fp64.
  static std::vector<double> router_row_norms(const DecideContext& ctx, int64_t layer) {
    for (const ExpectedTensor& t : ctx.tensors) {
      if (t.layer != layer || t.role != TensorRole::kRouter) continue;
      const std::vector<float> w = ctx.store.to_f32(t.name);
      const int64_t rows = t.shape[0], cols = t.shape[1];
      std::vector<double> norms(rows);
      for (int64_t r = 0; r < rows; ++r) {
        double s = 0;
        for (int64_t c = 0; c < cols; ++c)
          s += static_cast<double>(w[r * cols + c]) * w[r * cols + c];
        norms[r] = std::sqrt(s);
      }
      return norms;
    }
    throw InternalError("", "router", fmt::format("no router tensor in layer {}", layer));
  }

  std::string name_;
  ScoreMethod method_;
  OptionValues options_;
};

}  // namespace

std::unique_ptr<Pass> make_experts_frequency_pass(const PassInstance& instance) {
  return std::make_unique<ExpertScorePass>(instance, ScoreMethod::kFrequency);
}
std::unique_ptr<Pass> make_experts_mass_pass(const PassInstance& instance) {
  return std::make_unique<ExpertScorePass>(instance, ScoreMethod::kMass);
}
std::unique_ptr<Pass> make_experts_router_norm_pass(const PassInstance& instance) {
  return std::make_unique<ExpertScorePass>(instance, ScoreMethod::kRouterNorm);
}
std::unique_ptr<Pass> make_experts_random_pass(const PassInstance& instance) {
  return std::make_unique<ExpertScorePass>(instance, ScoreMethod::kRandom);
}

PassInfo experts_frequency_pass_info() {
  return {
      "experts-frequency",
      "prune routed experts by how many calibration tokens select them (needs calibration data)",
      expert_selection_options({}),
      {"expert_tokens"},
      false,
      make_experts_frequency_pass};
}

PassInfo experts_mass_pass_info() {
  OptionSpec variant =
      make_option("variant", OptionType::kEnum, "all",
                  "all: Σ p over every token; topk: only over tokens that selected the expert");
  variant.choices = {"all", "topk"};
  return {
      "experts-mass",
      "prune routed experts by the router probability mass they receive (needs calibration data)",
      expert_selection_options({variant}),
      {"router_prob_mass", "router_selected_mass"},
      false,
      make_experts_mass_pass};
}

PassInfo experts_router_norm_pass_info() {
  return {"experts-router-norm",
          "prune routed experts by the L2 norm of their router row (no data)",
          expert_selection_options({}),
          {},
          false,
          make_experts_router_norm_pass};
}

PassInfo experts_random_pass_info() {
  return {"experts-random",
          "prune a seeded uniformly random subset of routed experts per layer (no data)",
          expert_selection_options(
              {make_option("seed", OptionType::kInt, "0", "random seed", 0, 9007199254740991.0)}),
          {},
          false,
          make_experts_random_pass};
}

}  // namespace lathe
