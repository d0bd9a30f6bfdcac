// Choosing which routed experts stay, given scores or error curves (ALGORITHMS.md §3, §7, §8.2):
// shared by the baselines (expert_pruning.cpp), naee and diep. Torch-free.
#pragma once

#include <cstdint>
#include <vector>

namespace lathe {

/// Expert ids ordered best first: higher score, ties → lower id.
std::vector<int64_t> rank_experts(const std::vector<double>& score);

/// The best `keep[i]` experts of each layer i (scores[i] per expert, higher is better).
std::vector<std::vector<int64_t>> select_uniform(const std::vector<std::vector<double>>& scores,
                                                 const std::vector<int64_t>& keep);

/// Global ranking with a per-layer floor: each layer first keeps its `floors[i]` best experts, then
/// the remaining `total − Σ floors` slots go to the best `scores[i][e] · scale[i]` anywhere (ties →
/// lower layer, then lower id). Kept ids in rank order (callers sort them).
std::vector<std::vector<int64_t>> select_global(const std::vector<std::vector<double>>& scores,
                                                const std::vector<double>& scale, const std::vector<int64_t>& floors,
                                                int64_t total);

/// Multiple-choice knapsack (ALGORITHMS.md §8.2): layer i may keep k ∈ [floors[i], floors[i] +
/// cost[i].size() − 1] experts at cost cost[i][k − floors[i]]; returns the k per layer with Σ k =
/// total that minimises Σ cost (exact DP; ties → the smaller k in the earlier layer). Empty when no
/// choice reaches `total`.
std::vector<int64_t> knapsack_counts(const std::vector<std::vector<double>>& cost, const std::vector<int64_t>& floors,
                                     int64_t total);

}  // namespace lathe
