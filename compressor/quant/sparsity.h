// Weight sparsity on one matrix and its layerwise allocation (ALGORITHMS.md §8.4, §9): the masks of
// magnitude and Wanda pruning, and OWL / DLP per-layer ratios. SparseGPT is GPTQ's sweep with
// SparseOptions (gptq.h). The passes are compressor/passes/sparsity.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace lathe {

/// The weights to prune (bool [out, in]) by `score` ([out, in]; larger = more important).
/// Unstructured (n = m = 0): the floor(ratio·in) smallest of each row. N:M: the n smallest of every
/// m consecutive inputs of each row. Ties go to the lower column. InternalError for a ratio outside
/// [0, 1) or an m that does not divide `in` (the passes check options first).
at::Tensor prune_mask(const at::Tensor& score, double ratio, int64_t n, int64_t m);

/// Wanda's score |W_ij|·‖X_j‖₂ from Σ_t x_{t,j}² ([in], any float dtype), in f32.
at::Tensor wanda_score(const at::Tensor& weight, const at::Tensor& sum_sq);

/// OWL's layer outlier ratio: 100 · #{A_ij > threshold · mean(A)} / numel over a block's metric.
double outlier_ratio(const at::Tensor& metric, double threshold);

/// Per-layer sparsities with mean `target` (§8.4): `scores` are OWL's outlier ratios (more outliers
/// → denser) or DLP's importances 1 − s_l/Σs (higher → denser); r = (score − min)/(max − min)·2·λ,
/// density = r − mean(r) + (1 − target), sparsity = 1 − density clamped to [0.01, 0.99]. Equal
/// scores give `target` everywhere.
std::vector<double> allocate_sparsity(const std::vector<double>& scores, double target,
                                      double lambda);

/// DLP's importances from per-layer mean metrics s_l: 1 − |s_l| / Σ|s|.
std::vector<double> dlp_importance(const std::vector<double>& mean_metric);

}  // namespace lathe
