// Choosing which routed experts stay, given scores or error curves (ALGORITHMS.md §3, §7, §8.2):
// shared by the baselines (expert_pruning.cpp), naee and diep. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lathe {

class OptionValues;
struct ModelSpec;
struct OptionSpec;

/// The options every expert-pruning selection shares (keep, keep-count, mode, min-experts), then
/// `extra`: the schema part of the experts-* passes' pass_info().
std::vector<OptionSpec> expert_selection_options(std::vector<OptionSpec> extra = {});

/// Expert-pruning passes on a dense model (llama, gemma3_text, ...): ConfigError naming `pass`,
/// saying that the model (its model_type) has no MoE layer. Every expert-pruning pass's check().
void require_moe(const ModelSpec& spec, const std::string& pass);

/// The kept-count options the expert-pruning passes share (expert_selection_options): exactly one
/// of `keep` and `keep-count`, `keep` above 0, `min-experts` only with `mode: global` (passes
/// without a `mode` option are uniform). ConfigError naming "<pass>.<option>".
void check_keep_options(const OptionValues& options, const std::string& pass);

/// Per MoE layer in model order: uniform mode, the experts kept (round(keep·E) or keep-count, at
/// least top_k, at most E); global mode, the per-layer floor (min-experts, default top_k, within
/// [top_k, E]) with the total (round(keep·Σ E) or keep-count × MoE layers, at least Σ floors)
/// appended last. ConfigError naming the option that does not fit.
std::vector<int64_t> keep_targets(const ModelSpec& spec, const OptionValues& options,
                                  const std::string& pass);

/// Expert ids ordered best first: higher score, ties → lower id.
std::vector<int64_t> rank_experts(const std::vector<double>& score);

/// The best `keep[i]` experts of each layer i (scores[i] per expert, higher is better).
std::vector<std::vector<int64_t>> select_uniform(const std::vector<std::vector<double>>& scores,
                                                 const std::vector<int64_t>& keep);

/// Global ranking with a per-layer floor: each layer first keeps its `floors[i]` best experts, then
/// the remaining `total − Σ floors` slots go to the best `scores[i][e] · scale[i]` anywhere (ties →
/// lower layer, then lower id). Kept ids in rank order (callers sort them).
std::vector<std::vector<int64_t>> select_global(const std::vector<std::vector<double>>& scores,
                                                const std::vector<double>& scale,
                                                const std::vector<int64_t>& floors, int64_t total);

/// Multiple-choice knapsack (ALGORITHMS.md §8.2): layer i may keep k ∈ [floors[i], floors[i] +
/// cost[i].size() − 1] experts at cost cost[i][k − floors[i]]; returns the k per layer with Σ k =
/// total that minimises Σ cost (exact DP; ties → the smaller k in the earlier layer). Empty when no
/// choice reaches `total`.
std::vector<int64_t> knapsack_counts(const std::vector<std::vector<double>>& cost,
                                     const std::vector<int64_t>& floors, int64_t total);

}  // namespace lathe
