// PreMoe's TCESS (ALGORITHMS.md §4.1-§4.2; docs/tcess.md): per calibration task, a score vector per
// MoE layer from the router statistics the observe stage stores per task; each task keeps its
// top-M experts per layer. All tasks go into the pattern bank (for `lathe route`); one task's kept
// set goes into the plan and through the same surgery as drop-experts (apply_expert_surgery).
#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "calibrate/stats_store.h"
#include "compressor/common/errors.h"
#include "compressor/common/strict_json.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/context.h"
#include "compressor/passes/expert_selection.h"
#include "compressor/passes/pattern_bank.h"

namespace lathe {
namespace {

/// Calibration tasks in the order the recipe named them (the stored calibration description), or
/// sorted when the store has no description.
std::vector<std::string> calibration_tasks(const StatsStore& stats) {
  std::vector<std::string> tasks;
  if (const auto description = stored_calibration_description(stats)) {
    const nlohmann::json doc =
        parse_json_strict(*description, stats.path(), "calibration description");
    if (doc.contains("tasks") && doc["tasks"].is_array()) {
      for (const auto& t : doc["tasks"]) {
        if (t.is_object() && t.contains("name") && t["name"].is_string())
          tasks.push_back(t["name"].get<std::string>());
      }
    }
  }
  if (!tasks.empty()) return tasks;
  for (const StatsKey& key : stats.keys()) {
    if (key.tap == "router" && key.kind == "router_selected_mass" &&
        std::find(tasks.begin(), tasks.end(), key.task) == tasks.end()) {
      tasks.push_back(key.task);
    }
  }
  return tasks;
}

class TcessPass : public Pass {
 public:
  explicit TcessPass(const PassInstance& instance)
      : name_(instance.name), options_(instance.options) {
    check_keep_options(options_, name_);
    // The observe stage stores Σ p·1[e ∈ TopK] over every selected expert (r = 0) only; a threshold
    // would need the per-token probabilities, which are not kept.
    if (options_.get_float("r") != 0) {
      throw ConfigError(
          "", name_ + ".r",
          fmt::format("r = {} is not supported: the stored router statistics hold the "
                      "mass of every selected expert (r = 0) only",
                      options_.get_float("r")));
    }
    if (options_.has("task") && options_.get_string("task").empty())
      throw ConfigError("", name_ + ".task", "empty task name");
  }

  void check(const CheckContext& ctx, std::vector<CheckProblem>&) const override {
    (void)targets(ctx.spec);
  }

  void decide(const DecideContext& ctx, CompressionPlan& plan) const override {
    if (!ctx.stats)
      throw ConfigError("", "calibration",
                        name_ + " reads router statistics per task: add a calibration section");
    const std::vector<int64_t> keep = targets(ctx.spec);
    PatternBank bank;
    bank.weights_fingerprint = plan.weights_fingerprint;
    for (int64_t i = 0; i < ctx.spec.num_layers; ++i) {
      const LayerSpec& l = ctx.spec.layers[i];
      if (!l.is_moe) continue;
      bank.moe_layers.push_back(i);
      bank.num_experts.push_back(l.num_experts);
      bank.top_k.push_back(l.top_k);
    }
    if (bank.moe_layers.empty()) throw ConfigError("", name_, "the model has no MoE layer");
    for (const std::string& task : calibration_tasks(*ctx.stats))
      bank.tasks.push_back(pattern(ctx, bank, task, keep));
    if (bank.tasks.empty())
      throw DataError(ctx.stats->path(), "router_selected_mass",
                      name_ + " found no calibration task");

    const std::string chosen =
        options_.has("task") ? options_.get_string("task") : bank.tasks.front().name;
    const int64_t index = bank.find_task(chosen);
    if (index < 0) {
      std::string names;
      for (const auto& t : bank.tasks) names += (names.empty() ? "" : ", ") + t.name;
      throw ConfigError(
          "", name_ + ".task",
          fmt::format("no calibration task '{}'; the calibration has {}", chosen, names));
    }
    const TaskPattern& t = bank.tasks[index];
    for (size_t l = 0; l < bank.moe_layers.size(); ++l) {
      plan.experts[bank.moe_layers[l]] = t.kept[l];
      plan.expert_scores[bank.moe_layers[l]] = t.ranking_scores()[l];
      std::string ids;
      for (int64_t id : t.kept[l]) ids += (ids.empty() ? "" : ",") + std::to_string(id);
      ctx.log.push_back(fmt::format("{}: task {}: layer {} keeps {}/{} experts [{}]", name_, t.name,
                                    bank.moe_layers[l], t.kept[l].size(), bank.num_experts[l],
                                    ids));
    }
    plan.decided_by["experts"] = name_;
    plan.diagnostics[name_] = {{"task", t.name}, {"pattern_bank", bank.to_json()}};
    if (options_.has("bank")) {
      bank.write(options_.get_string("bank"));
      ctx.log.push_back(fmt::format("{}: pattern bank of {} tasks written to {}", name_,
                                    bank.tasks.size(), options_.get_string("bank")));
    }
  }

  void apply(LayerApplyContext& ctx) const override { apply_expert_surgery(ctx); }

 private:
  /// Experts kept per MoE layer, in layer order. ConfigError naming the option that does not fit.
  std::vector<int64_t> targets(const ModelSpec& spec) const {
    return keep_targets(spec, options_, name_);
  }

  /// Statistic `kind` of one task and layer ([E] f64) and its token count, checked against the
  /// layer's upstream weights.
  static std::pair<std::vector<double>, int64_t> statistic(const DecideContext& ctx,
                                                           const std::string& kind, int64_t layer,
                                                           const std::string& task) {
    const StatsKey key{kind, layer, "router", task};
    if (!ctx.stats->contains(key)) {
      throw DataError(ctx.stats->path(), to_string(key),
                      "tcess needs the router statistics of every MoE layer and task");
    }
    const StatsInfo info = ctx.stats->info(key);
    StatsFingerprints want = info.fingerprints;
    want.weights = ctx.upstream_weights.at(layer);
    const at::Tensor v = ctx.stats->get(key, want).to(at::kDouble).contiguous();
    return {std::vector<double>(v.data_ptr<double>(), v.data_ptr<double>() + v.numel()),
            info.tokens};
  }

  /// One task's pattern: mass vectors of every MoE layer, the chosen score and the top-M kept ids.
  TaskPattern pattern(const DecideContext& ctx, const PatternBank& bank, const std::string& task,
                      const std::vector<int64_t>& keep) const {
    TaskPattern t;
    t.name = task;
    t.score = options_.get_string("score");
    t.r = options_.get_float("r");
    for (size_t l = 0; l < bank.moe_layers.size(); ++l) {
      const int64_t layer = bank.moe_layers[l];
      auto [mass, tokens] = statistic(ctx, "router_selected_mass", layer, task);
      if (tokens <= 0)
        throw DataError(ctx.stats->path(),
                        to_string(StatsKey{"router_selected_mass", layer, "router", task}),
                        "no tokens");
      if (l == 0) {
        t.tokens = tokens;
        t.calibration_fingerprint = ctx.stats->info({"router_selected_mass", layer, "router", task})
                                        .fingerprints.calibration;
      }
      const double inv = 1.0 / static_cast<double>(tokens);
      for (double& x : mass) x *= inv;
      std::vector<double> score;
      if (t.score == "frequency") {
        score = statistic(ctx, "expert_tokens", layer, task).first;
        for (double& x : score) x *= inv;
      } else if (t.score == "top1-logit") {
        // Σ_t ℓ_{t,e}·1[e = top-1(t)] = (mean logit of e over its top-1 tokens) × (their count).
        score = statistic(ctx, "router_top1_logit", layer, task).first;
        const std::vector<double> count = statistic(ctx, "router_top1_count", layer, task).first;
        for (size_t e = 0; e < score.size(); ++e) score[e] *= count[e] * inv;
      }
      t.mass.push_back(mass);
      if (!score.empty()) t.scores.push_back(score);
      std::vector<int64_t> kept = rank_experts(t.ranking_scores()[l]);
      kept.resize(keep[l]);
      std::sort(kept.begin(), kept.end());
      t.kept.push_back(kept);
    }
    return t;
  }

  std::string name_;
  OptionValues options_;
};

}  // namespace

std::unique_ptr<Pass> make_tcess_pass(const PassInstance& instance) {
  return std::make_unique<TcessPass>(instance);
}

PassInfo tcess_pass_info() {
  // PreMoe's TCESS (ALGORITHMS.md §4; docs/tcess.md): per-task expert scores, a pattern bank for
  // `lathe route`, and one task's kept experts in the plan.
  OptionSpec score =
      make_option("score", OptionType::kEnum, "mass",
                  "mass: Σ p over tokens that selected e; frequency: tokens that selected e; "
                  "top1-logit: Σ raw logit where e is the top-1 (PreMoe's code, for reproduction)");
  score.choices = {"mass", "frequency", "top1-logit"};
  return {
      "tcess",
      "PreMoe TCESS: per-task expert scores and a pattern bank; keeps one task's top experts per "
      "MoE "
      "layer (needs calibration data with tasks)",
      {
          score,
          make_option("r", OptionType::kFloat, "0",
                      "mass threshold; only 0 (every selected expert) is supported", 0, 1),
          make_option("keep", OptionType::kFloat, "",
                      "fraction of each MoE layer's routed experts kept, in (0, 1]", 0, 1),
          make_option("keep-count", OptionType::kInt, "",
                      "routed experts kept per MoE layer (M ≥ top_k); instead of keep", 1, 1 << 20),
          make_option("task", OptionType::kString, "",
                      "calibration task whose kept experts go into the plan (default: the first)"),
          make_option("bank", OptionType::kString, "",
                      "also write the pattern bank here (lathe run always writes "
                      "<output>/pattern_bank.json)",
                      {}, {}, PathRole::kOutput),
      },
      {"router_selected_mass", "expert_tokens", "router_top1_count", "router_top1_logit"},
      false,
      make_tcess_pass};
}

}  // namespace lathe
