// W8A8 smoothing (ALGORITHMS.md §2): SmoothQuant scales (arXiv 2211.10438), the HAQ-style
// adaptive α (§2.3), and the exact folds that move a per-channel scale from an activation into
// the weights that read it. The library core of the `smoothquant` pass (passes/smoothquant.cpp):
// the pass gathers activations through taps and picks the tensors; this file only does the math.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace lathe {

/// Which per-channel statistics the scales compare (§2.1).
///   kAbsMax — a_j = max|X_j|, w_j = max_r |W_rj| (the paper; DEFAULT);
///   kRange  — a_j = max X_j − min X_j, w_j = 2·max_r |W_rj| (llm-compressor's form).
enum class SmoothStatistic { kAbsMax, kRange };

/// "absmax" / "range".
const char* smooth_statistic_name(SmoothStatistic statistic);
/// The statistic named `name`, or nullopt.
std::optional<SmoothStatistic> parse_smooth_statistic(const std::string& name);

/// The α grid of the adaptive search (§2.3): 0.3, 0.4, …, 0.9.
const std::vector<double>& adaptive_alpha_grid();

/// Tokens the adaptive search evaluates e(α) on (§2.3).
constexpr int64_t kAdaptiveSampleTokens = 4096;

/// Running per-channel min and max of activation rows, plus (when `sample_cap` > 0) a uniform
/// sample without replacement of at most `sample_cap` rows: every row gets a pseudo-random key
/// from a generator seeded with `seed`, and the rows with the smallest keys are kept (bottom-k
/// sampling), so the sample depends only on the order rows arrive in, never on batch sizes.
class ActivationSummary {
 public:
  explicit ActivationSummary(int64_t sample_cap = 0, uint64_t seed = 0);

  /// Adds `rows` ([n, c], any float dtype, any device; only real tokens). The first call fixes c;
  /// InternalError when a later call has another width.
  void add(const at::Tensor& rows);

  int64_t tokens() const { return tokens_; }
  int64_t channels() const { return max_.defined() ? max_.size(0) : 0; }
  /// Per-channel max|x| (kAbsMax) or max x − min x (kRange), fp32 [c]; InternalError before any
  /// row.
  at::Tensor statistic(SmoothStatistic statistic) const;
  /// The sampled rows, fp32 [min(tokens, cap), c] on the CPU, in arrival order; undefined when
  /// nothing was sampled.
  at::Tensor sample() const;

 private:
  int64_t sample_cap_;
  std::mt19937_64 rng_;
  int64_t tokens_ = 0;
  at::Tensor max_, min_;      // [c] fp32, CPU
  at::Tensor sample_, keys_;  // [≤cap, c] fp32 and [≤cap] fp64
  at::Tensor order_;          // [≤cap] int64 arrival index of each sampled row
};

/// Per-column statistic of the weights a scale balances (PyTorch layout [out, in], all the same
/// `in`): max over every row of every weight of |W_rj| (kAbsMax), twice that (kRange). fp32 [in].
at::Tensor weight_statistic(const std::vector<at::Tensor>& weights, SmoothStatistic statistic);

/// SmoothQuant scales (§2.1): s_j = a_j^α / w_j^(1−α), clamped to ≥ 1e-5; where w_j = 0,
/// s_j = a_j (then clamped). `act` and `weight` are [in]; returns fp32 [in]. ConfigError (field
/// "alpha") outside [0, 1].
at::Tensor smoothing_scales(const at::Tensor& act, const at::Tensor& weight, double alpha);

/// The W8A8 output error of §2.3 for scales s:
///   e = ‖Q_a(X S⁻¹) · Q_w(W S)ᵀ − X Wᵀ‖²_F
/// with W the balanced weights stacked by rows, Q_w int8 symmetric per output row by RTN on the
/// grid the weights are stored with (§1.4 at 8 bits: scale = 2·max|W_r|/255, codes −128…127) and
/// Q_a int8 symmetric per token (scale = max|x_t|/127, as the engine runs it). `x` [n, in]; fp64
/// sum of fp32 products.
double w8a8_output_error(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                         const at::Tensor& scales);

/// Result of the adaptive search of one smoothing group.
struct AlphaSearch {
  double alpha = 0.5;          ///< the argmin (the smallest α on ties)
  at::Tensor scales;           ///< smoothing_scales at that α
  std::vector<double> alphas;  ///< the grid tried
  std::vector<double> errors;  ///< e(α) for each
};

/// HAQ-style α (§2.3): for each α of `alphas`, s(α) = smoothing_scales(act, weight_stat, α) (`act`
/// the statistic over ALL tokens, per scale channel), e(α) = w8a8_output_error on `sample` with the
/// scales mapped to the balanced weights' input columns by `to_columns` (identity when empty; GQA
/// v→o expands kv channels); keeps the argmin.
AlphaSearch search_alpha(const at::Tensor& sample, const at::Tensor& act,
                         const at::Tensor& weight_stat, const std::vector<at::Tensor>& balanced,
                         const std::vector<double>& alphas = adaptive_alpha_grid(),
                         const std::function<at::Tensor(const at::Tensor&)>& to_columns = {});

// ---- Exact folds. All tensors fp32 (or fp64), modified in place (views modify their base). ----

/// A norm's output scaled by 1/s, every reader's input columns by s: norm weight (and bias when
/// given) ÷ s, column j of every `readers` weight ([out, in]) × s_j. Exact: y = (x/s)(W s)ᵀ.
/// `plus_one`: the norm multiplies by (1 + w) (Gemma), so w becomes (1 + w)/s − 1.
void fold_into_norm(at::Tensor& norm_weight, at::Tensor* norm_bias,
                    const std::vector<at::Tensor*>& readers, const at::Tensor& scales,
                    bool plus_one = false);

/// Output channel j of `producer` ÷ s_j (rows of its [out, in] weight and its bias when given),
/// input column c of `consumer` × consumer_scales[c] (= scales when undefined). Exact when the
/// path between them is linear per channel: v → attention → o (softmax weights mix tokens, not
/// channels), up → SiLU(gate) ⊙ up → down.
void fold_rows_into_columns(at::Tensor& producer, at::Tensor* producer_bias, at::Tensor& consumer,
                            const at::Tensor& scales, const at::Tensor& consumer_scales = {});

/// GQA: o_proj input column h·D + d reads v channel (h / (H/H_kv))·D + d. Scales per v channel
/// [H_kv·D] → per o column [H·D].
at::Tensor expand_kv_channels(const at::Tensor& kv_scales, int64_t heads, int64_t kv_heads,
                              int64_t head_dim);

/// The inverse direction for statistics: per o column [H·D] → per v channel [H_kv·D], the max over
/// the query heads that read each kv head.
at::Tensor reduce_to_kv_channels(const at::Tensor& per_column, int64_t heads, int64_t kv_heads,
                                 int64_t head_dim);

}  // namespace lathe
