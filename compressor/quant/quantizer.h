// The uniform weight quantizer of ALGORITHMS.md §1.4, shared by RTN and GPTQ: per output row and
// group of columns, a scale and a zero point; codes q ∈ [0, 2^bits − 1]; x̂ = scale · (q − zero).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace lathe {

struct QuantSpec {
  int64_t bits = 4;
  int64_t group_size = 128;  ///< columns per group; -1 = the whole row
  bool sym = true;
  /// Storage type of the scales. kFloat keeps fp32 scales. kHalf / kBFloat16: every scale is
  /// clamped to [2^−14, 65504] and rounded to that type before codes are chosen, so the codes fit
  /// the scale an export stores (GPTQ: fp16; compressed-tensors: the model dtype). A bf16 scale in
  /// that range is exactly an fp16 value too, so one rounding serves both exports.
  at::ScalarType scale_dtype = at::kFloat;
};

/// The parameters of a quantized [out, in] weight. Groups are contiguous column ranges.
struct QuantizedWeight {
  at::Tensor codes;   ///< [out, in] uint8, values in [0, 2^bits − 1]
  at::Tensor scales;  ///< [out, groups] float32
  at::Tensor zeros;   ///< [out, groups] int32 (asymmetric: in [1, maxq]; symmetric: 2^(bits−1))
  QuantSpec spec;
  /// scale · (code − zero), float32 [out, in].
  at::Tensor dequantize() const;
};

/// Scale and zero for every row of `x` ([rows, cols], any float dtype) over all its columns, by the
/// range rule of §1.4 including the asymmetric zero clamp and scale widening. Returns
/// {scales [rows] f32 (f64 when x is f64), zeros [rows] i32}.
std::pair<at::Tensor, at::Tensor> quant_params(const at::Tensor& x, int64_t bits, bool sym,
                                               at::ScalarType scale_dtype = at::kFloat);

/// quant_params with the §1.4 MSE grid: for i = 0 … ⌊maxshrink·grid⌋ − 1 the range shrunk by
/// p = 1 − i/grid goes through the same parameter rule (asymmetric: zero recomputed, clamped and
/// the scale widened), and each row keeps the candidate with the least Σ|x̂ − x|^norm (the first,
/// i.e. the widest, on ties). i = 0 is quant_params itself.
std::pair<at::Tensor, at::Tensor> quant_params_mse(const at::Tensor& x, int64_t bits, bool sym,
                                                   int64_t grid = 100, double maxshrink = 0.8,
                                                   double norm = 2.4,
                                                   at::ScalarType scale_dtype = at::kFloat);

/// The scale rule of QuantSpec::scale_dtype: identity for kFloat / kDouble, else clamp to
/// [2^−14, 65504] and round to `scale_dtype` (values returned in x's dtype).
at::Tensor round_scales(const at::Tensor& scales, at::ScalarType scale_dtype);

/// clamp(round(x / scale) + zero, 0, maxq) with per-row scale/zero ([rows] or [rows, 1]); f32
/// (f64 when x is f64).
at::Tensor quantize_codes(const at::Tensor& x, const at::Tensor& scales, const at::Tensor& zeros,
                          int64_t bits);

/// Round-to-nearest of a whole [out, in] weight; with `mse` the parameters come from
/// quant_params_mse (the clipping search). ConfigError (field "group-size") when the group size
/// is 0, < −1, or does not divide `in`; ConfigError (field "bits") outside [2, 8].
QuantizedWeight quantize_rtn(const at::Tensor& weight, const QuantSpec& spec, bool mse = false);

}  // namespace lathe
