// The one list of every pass (issue 5: "One registry file lists all passes"). Adding a pass is adding
// an entry here plus its source file.
#include <algorithm>
#include <optional>
#include <utility>

#include "compressor/passes/builtin.h"
#include "compressor/passes/pass.h"

namespace lathe {

void Pass::check(const ModelSpec&) const {}
void Pass::decide(const DecideContext&, CompressionPlan&) const {}
void Pass::apply(LayerApplyContext&) const {}

namespace {

/// One option's spec; bounds apply to numbers and list elements.
OptionSpec option(std::string name, OptionType type, std::string default_value, std::string help,
                  std::optional<double> min = {}, std::optional<double> max = {}, bool is_path = false) {
  OptionSpec o;
  o.name = std::move(name);
  o.type = type;
  o.default_value = std::move(default_value);
  o.help = std::move(help);
  o.min = min;
  o.max = max;
  o.is_path = is_path;
  return o;
}

}  // namespace

const std::vector<PassInfo>& pass_registry() {
  static const std::vector<PassInfo> passes = [] {
    std::vector<PassInfo> p;
    p.push_back({"rtn",
                 "round-to-nearest weight quantization of every decoder linear (no calibration data)",
                 {
                     option("bits", OptionType::kInt, "4", "bits per weight", 2, 8),
                     option("group-size", OptionType::kInt, "128",
                            "columns sharing one scale; -1 = a whole row (must divide the input width)", -1, 1 << 20),
                     option("sym", OptionType::kBool, "true", "symmetric (zero point 2^(bits-1)) or asymmetric"),
                     option("skip", OptionType::kBool, "false", "leave the tensor unquantized (for overrides)"),
                 },
                 {},
                 true,
                 make_rtn_pass});
    {
      OptionSpec act_order = option("act-order", OptionType::kEnum, "static",
                                    "column order: none, static (diag H descending, static groups; g_idx trivial) or "
                                    "dynamic (groups formed in that order; g_idx scattered)");
      act_order.choices = {"none", "static", "dynamic"};
      p.push_back({"gptq",
                   "GPTQ weight quantization with Hessians of the current layer inputs (needs calibration data)",
                   {
                       option("bits", OptionType::kInt, "4", "bits per weight: 2, 3, 4 or 8 (the GPTQ packings)", 2, 8),
                       option("group-size", OptionType::kInt, "128",
                              "columns sharing one scale; -1 = a whole row (must divide the input width)", -1, 1 << 20),
                       option("sym", OptionType::kBool, "true", "symmetric (zero point 2^(bits-1)) or asymmetric"),
                       act_order,
                       option("mse", OptionType::kBool, "false", "search a clipping ratio per group (MSE grid)"),
                       option("damp", OptionType::kFloat, "0.01", "dampening, relative to mean(diag H)", 0, 1),
                       option("skip", OptionType::kBool, "false", "leave the tensor unquantized (for overrides)"),
                   },
                   {},
                   true,
                   make_gptq_pass});
    }
    p.push_back({"drop-experts",
                 "remove routed experts: keep a given list in every MoE layer, or per layer from an expert map",
                 {
                     option("keep", OptionType::kIntList, "", "original expert ids kept in every MoE layer", 0, 1 << 20),
                     option("map", OptionType::kString, "",
                            "expert_map.json (FORMATS.md) with the kept ids per layer; instead of keep", {}, {},
                            /*is_path=*/true),
                 },
                 {},
                 false,
                 make_drop_experts_pass});
    {
      // Expert-pruning baselines (ALGORITHMS.md §7; docs/expert_pruning.md): shared selection options.
      auto selection = [](std::vector<OptionSpec> extra) {
        OptionSpec mode = option("mode", OptionType::kEnum, "uniform",
                                 "uniform: the best experts of each layer; global: ranked across layers (scores per "
                                 "calibration token, or per layer sum when data-free) above a per-layer floor");
        mode.choices = {"uniform", "global"};
        std::vector<OptionSpec> o = {
            option("keep", OptionType::kFloat, "", "fraction of each MoE layer's routed experts kept, in (0, 1]", 0, 1),
            option("keep-count", OptionType::kInt, "", "routed experts kept per MoE layer; instead of keep", 1, 1 << 20),
            mode,
            option("min-experts", OptionType::kInt, "", "global mode: experts every layer keeps at least (default top_k)",
                   1, 1 << 20),
        };
        o.insert(o.end(), extra.begin(), extra.end());
        return o;
      };
      OptionSpec variant = option("variant", OptionType::kEnum, "all",
                                  "all: Σ p over every token; topk: only over tokens that selected the expert");
      variant.choices = {"all", "topk"};
      p.push_back({"experts-frequency",
                   "prune routed experts by how many calibration tokens select them (needs calibration data)",
                   selection({}),
                   {"expert_tokens"},
                   false,
                   make_experts_frequency_pass});
      p.push_back({"experts-mass",
                   "prune routed experts by the router probability mass they receive (needs calibration data)",
                   selection({variant}),
                   {"router_prob_mass", "router_selected_mass"},
                   false,
                   make_experts_mass_pass});
      p.push_back({"experts-router-norm", "prune routed experts by the L2 norm of their router row (no data)",
                   selection({}),
                   {},
                   false,
                   make_experts_router_norm_pass});
      p.push_back({"experts-random", "prune a seeded uniformly random subset of routed experts per layer (no data)",
                   selection({option("seed", OptionType::kInt, "0", "random seed", 0, 9007199254740991.0)}),
                   {},
                   false,
                   make_experts_random_pass});
      p.push_back({"experts-naee",
                   "prune routed experts by enumerating keep sets and keeping the one that best reconstructs each MoE "
                   "block's output on calibration data (small expert counts only; needs calibration data)",
                   selection({option("max-subsets", OptionType::kInt, "10000",
                                     "refuse a layer that would need more keep sets than this (use diep instead)", 1,
                                     1e9)}),
                   {},
                   false,
                   make_experts_naee_pass});
      OptionSpec diep_mode = option("mode", OptionType::kEnum, "layerwise",
                                    "end-to-end: every layer resident, CE + KD + global budget; layerwise: one MoE block "
                                    "at a time (streaming); auto: end-to-end when it fits in memory");
      diep_mode.choices = {"auto", "end-to-end", "layerwise"};
      OptionSpec kd = option("kd", OptionType::kEnum, "kl", "distillation term: kl (KL(teacher‖student)) or frobenius");
      kd.choices = {"kl", "frobenius"};
      p.push_back({"diep",
                   "differentiable non-uniform expert pruning: learned per-expert router gates under one global budget "
                   "(needs calibration data)",
                   {
                       option("keep", OptionType::kFloat, "", "fraction of all routed experts kept, in (0, 1)", 0, 1),
                       option("sparsity", OptionType::kFloat, "", "fraction of all routed experts removed; instead of keep",
                              0, 1),
                       diep_mode,
                       option("min-experts", OptionType::kInt, "", "experts every MoE layer keeps at least (default top_k + 1)",
                              1, 1 << 20),
                       option("steps", OptionType::kInt, "300", "optimiser steps (α, α, α, β alternating); per layer when layerwise",
                              1, 1e7),
                       option("batch", OptionType::kInt, "16", "calibration sequences per step", 1, 1 << 20),
                       option("lr", OptionType::kFloat, "0.15", "Adam learning rate of α and β (cosine schedule)", 0, 10),
                       option("lambda", OptionType::kFloat, "0.01", "weight of the distillation term", 0, 1e6),
                       kd,
                       option("budget-weight", OptionType::kFloat, "10",
                              "initial weight μ of the budget penalty (grows 100× over training)", 0, 1e9),
                       option("tau-start", OptionType::kFloat, "1", "initial gate temperature", 1e-6, 1e6),
                       option("tau-end", OptionType::kFloat, "0.05", "final gate temperature", 1e-6, 1e6),
                       option("seed", OptionType::kInt, "0", "seed of the batch order", 0, 9007199254740991.0),
                       option("memory-limit", OptionType::kFloat, "0",
                              "GiB end-to-end may hold (0: 80% of MemAvailable)", 0, 1e9),
                   },
                   {},
                   false,
                   make_diep_pass});
    }
    {
      OptionSpec statistic = option("statistic", OptionType::kEnum, "absmax",
                                    "per-channel statistics: absmax (max|X| vs max|W|) or range (max X - min X vs 2 max|W|)");
      statistic.choices = {"absmax", "range"};
      OptionSpec act_order = option("act-order", OptionType::kEnum, "static", "GPTQ column order: none, static or dynamic");
      act_order.choices = {"none", "static", "dynamic"};
      p.push_back({"smoothquant",
                   "W8A8: SmoothQuant scales folded into the weights, then int8 per-channel GPTQ weights with int8 "
                   "per-token inputs (needs calibration data)",
                   {
                       option("alpha", OptionType::kFloat, "0.5", "migration strength (0.75-0.85 for outlier-heavy models)", 0, 1),
                       option("adaptive", OptionType::kBool, "false",
                              "choose alpha per smoothing group from 0.3..0.9 by the W8A8 output error"),
                       statistic,
                       option("v-to-o", OptionType::kBool, "false", "also fold v_proj rows into o_proj columns (GQA)"),
                       act_order,
                       option("damp", OptionType::kFloat, "0.01", "GPTQ dampening, relative to mean(diag H)", 0, 1),
                       option("smooth", OptionType::kBool, "true", "false: W8A8 without smoothing (a baseline)"),
                       option("quantize", OptionType::kBool, "true",
                              "false: smooth only, everything stays in full precision (checks that smoothing is exact)"),
                   },
                   {},
                   false,
                   make_smoothquant_pass});
    }
    {
      // PreMoe's TCESS (ALGORITHMS.md §4; docs/tcess.md): per-task expert scores, a pattern bank for
      // `lathe route`, and one task's kept experts in the plan.
      OptionSpec score = option("score", OptionType::kEnum, "mass",
                                "mass: Σ p over tokens that selected e; frequency: tokens that selected e; "
                                "top1-logit: Σ raw logit where e is the top-1 (PreMoe's code, for reproduction)");
      score.choices = {"mass", "frequency", "top1-logit"};
      p.push_back({"tcess",
                   "PreMoe TCESS: per-task expert scores and a pattern bank; keeps one task's top experts per MoE "
                   "layer (needs calibration data with tasks)",
                   {
                       score,
                       option("r", OptionType::kFloat, "0", "mass threshold; only 0 (every selected expert) is supported",
                              0, 1),
                       option("keep", OptionType::kFloat, "", "fraction of each MoE layer's routed experts kept, in (0, 1]", 0, 1),
                       option("keep-count", OptionType::kInt, "", "routed experts kept per MoE layer (M ≥ top_k); instead of keep",
                              1, 1 << 20),
                       option("task", OptionType::kString, "", "calibration task whose kept experts go into the plan (default: the first)"),
                       option("bank", OptionType::kString, "",
                              "also write the pattern bank here (lathe run always writes <output>/pattern_bank.json)", {}, {},
                              /*is_path=*/true),
                   },
                   {"router_selected_mass", "expert_tokens", "router_top1_count", "router_top1_logit"},
                   false,
                   make_tcess_pass});
    }
    return p;
  }();
  return passes;
}

const PassInfo* find_pass(const std::string& name) {
  const auto& all = pass_registry();
  auto it = std::find_if(all.begin(), all.end(), [&](const PassInfo& p) { return p.name == name; });
  return it == all.end() ? nullptr : &*it;
}

}  // namespace lathe
