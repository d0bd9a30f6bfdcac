// GPTQ on one weight matrix (ALGORITHMS.md §1.1–1.5, metrics §1.8): the library core of the
// `gptq` pass. The pass gathers Σ x xᵀ, picks the Hessian source and logs; this file only turns
// (W, Σ x xᵀ, N) into codes, scales and zeros.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

#include "compressor/quant/quantizer.h"

namespace lathe {

struct GptqOptions {
  int64_t bits = 4;          ///< 2..8
  int64_t group_size = 128;  ///< columns per group; -1 = the whole row
  bool sym = true;
  /// Column order and group kind (§1.5):
  ///   kNone    — natural order, dynamic groups;
  ///   kStatic  — columns by diag H descending, static groups (DEFAULT; contiguous g_idx);
  ///   kDynamic — columns by diag H descending, dynamic groups formed in that order.
  enum ActOrder { kNone, kStatic, kDynamic } act_order = kStatic;
  double damp = 0.01;         ///< λ of §1.2.3, relative to mean(diag H)
  double damp_step = 0.0015;  ///< λ increment after a failed factorisation
  double damp_max = 1.0;      ///< last λ tried before the RTN fallback
  int64_t block_size =
      128;           ///< B of §1.3 (lazy batch width); changes rounding only, not the result
  bool mse = false;  ///< MSE clipping grid for the group parameters (§1.4)
  at::ScalarType scale_dtype = at::kFloat;  ///< QuantSpec::scale_dtype (the pass: the export's)
};

/// SparseGPT (ALGORITHMS.md §9) in GPTQ's sweep: which weights become zero, chosen on the updated
/// weights by W²/U_jj² (the OBS saliency), the remaining ones compensating through GPTQ's update.
/// At most one of `ratio` and N:M; `keep_zero` combines with either or stands alone (GPTQ of an
/// already pruned weight that must stay pruned).
struct SparseOptions {
  /// Unstructured: at each block start, the floor(ratio·out·count) smallest W²/U_jj² entries of the
  /// block (all rows together, ties to the lower flat index) are pruned. 0: none.
  double ratio = 0;
  /// N:M: at each column c with c mod m = 0, the n smallest W²/U_jj² of columns c … c+m−1 of each
  /// row (ties to the lower column). Needs the natural column order (act_order kNone) and m
  /// dividing both the input width and block_size. 0, 0: none.
  int64_t n = 0, m = 0;
  at::Tensor keep_zero;  ///< bool [out, in], original order: weights that must end at zero
  bool quantize = true;  ///< false: prune only (bits and groups ignored); see GptqResult::values
};

/// The result for one [out, in] weight.
///
/// Layout. `q.codes` is [out, in] uint8 in the ORIGINAL column order. `q.scales` [out, G] f32 and
/// `q.zeros` [out, G] i32 hold G = in / g groups (G = 1 for g = −1). Original column c dequantizes
/// as  Ŵ[r, c] = scales[r, g_idx[c]] · (codes[r, c] − zeros[r, g_idx[c]]):
///   - kNone, kStatic and every fallback: g_idx[c] = c / g, so groups are contiguous column ranges
///     and q.dequantize() is valid;
///   - kDynamic: group j is the j-th run of g columns in loop order, g_idx[perm[k]] = k / g, so
///     columns of one group are scattered; use gptq_dequantize(q, g_idx) (q.dequantize() is wrong).
/// `perm` (int64 [in]) is the loop order (loop position k quantized original column perm[k]);
/// undefined for kNone and for the RTN paths.
struct GptqResult {
  QuantizedWeight q;
  at::Tensor g_idx;  ///< int32 [in]
  at::Tensor perm;   ///< int64 [in] or undefined
  /// ½ Σ_i ℓ_i (§1.3, normalised H of §1.1). It equals ½ tr(ΔW H_d ΔWᵀ) for the damped,
  /// dead-fixed H_d and the dead-zeroed W. RTN fallback: ½ tr(ΔW H ΔWᵀ) with the undamped H.
  /// Data-free: 0.
  double loss_sum = 0;
  /// tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), ΔW = W − Ŵ, undamped H (§1.8); NaN for the data-free path.
  double rel_err = 0;
  double damp_used = 0;  ///< the λ that factorised (fallback: the last λ tried; data-free: 0)
  int retries = 0;       ///< times λ was increased
  bool rtn_fallback =
      false;  ///< no λ ≤ damp_max factorised (or H was not finite): RTN with MSE grid
  /// "hessian" when one was given (the pass replaces it by "routed"/"all"), "none" for data-free.
  std::string h_source;
  /// With SparseOptions::quantize false: the pruned, updated weight (f32, or f64 for an f64 input;
  /// [out, in], original order) and `q` is empty. Otherwise undefined, and pruned weights have the
  /// code of their group's zero point, so they dequantize to exactly 0.
  at::Tensor values;
  int64_t pruned = 0;  ///< weights set to zero by the sparsity options (0 without them)
};

/// GPTQ of `weight` ([out, in], any float dtype, any device) with `hessian` = Σ_t x_t x_tᵀ over
/// `tokens` tokens ([in, in] fp32, unnormalised; moved to the weight's device). Works in fp32 like
/// the reference implementations (an fp64 weight is worked in fp64, for exactness tests); only
/// scalar reductions (losses, traces: sums of out·in terms) are accumulated in fp64. Lazy batching
/// changes the order of fp32 sums, so codes can differ from the unbatched algorithm where a value
/// lies within rounding of a code boundary (measured: < 0.1% of codes, a few rows). `hessian`
/// undefined or `tokens` == 0: data-free RTN with MSE clipping (h_source "none"). ConfigError: bits
/// outside 2..8 (field "bits"), group size 0, < −1 or not dividing `in`
/// ("group-size"), damp < 0, damp_step ≤ 0, damp_max < damp, block_size < 1. InternalError: shapes.
///
/// With `sparse` (SparseGPT): the same sweep prunes as SparseOptions says. Without a Hessian, or
/// when no λ factorises, U is the identity: magnitude pruning and plain RTN (no error feedback).
/// ConfigError: ratio outside [0, 1), n ≥ m, N:M with act-order or with m not dividing the input
/// width or the block size, both a ratio and N:M.
GptqResult gptq_quantize(const at::Tensor& weight, const at::Tensor& hessian, int64_t tokens,
                         const GptqOptions& options, const SparseOptions* sparse = nullptr);

/// Ŵ (f32 [out, in]) of a result: scales[r, g_idx[c]] · (codes[r, c] − zeros[r, g_idx[c]]).
at::Tensor gptq_dequantize(const QuantizedWeight& q, const at::Tensor& g_idx);

/// h += xᵀx for x [n, in] (h [in, in], same dtype and device; symmetric before and after). Wide
/// inputs compute only the blocks on and above the diagonal and mirror them: 56 % of the products
/// at in = 2048, where the Hessians of a real model's down projections cost more than its forward.
void accumulate_hessian(at::Tensor& h, const at::Tensor& x);

}  // namespace lathe
