#include "compressor/quant/quantizer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "compressor/common/errors.h"

namespace lathe {

namespace {

/// fp64 stays fp64 (exactness checks); every other float type works in fp32.
at::ScalarType work_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

/// The §1.4 range of every row: [min(0, min x), max(0, max x)], made symmetric when `sym`, and
/// [−1, 1] where both ends are zero.
std::pair<at::Tensor, at::Tensor> quant_range(const at::Tensor& xf, bool sym) {
  at::Tensor xmin = std::get<0>(xf.min(1)).clamp_max(0.0);
  at::Tensor xmax = std::get<0>(xf.max(1)).clamp_min(0.0);
  if (sym) {
    xmax = at::maximum(xmin.abs(), xmax);
    xmin = -xmax;
  }
  const at::Tensor both_zero = (xmin == 0) & (xmax == 0);
  xmin = at::where(both_zero, -1.0, xmin);
  xmax = at::where(both_zero, 1.0, xmax);
  return {xmin, xmax};
}

/// Scale and zero of a range [xmin, xmax] (per row) by the §1.4 parameter rule.
std::pair<at::Tensor, at::Tensor> range_params(const at::Tensor& xmin, const at::Tensor& xmax,
                                               double maxq, bool sym, at::ScalarType scale_dtype) {
  at::Tensor scale = round_scales((xmax - xmin) / maxq, scale_dtype);
  at::Tensor zero;
  if (sym) {
    zero = at::full_like(scale, (maxq + 1) / 2);
  } else {
    zero = at::round(-xmin / scale);
    // DECISION (§1.4): zero in [1, maxq] so the v1 "zero − 1" convention is exact; when the clamp
    // fires, widen the scale so the largest value stays representable.
    const at::Tensor clamped = zero < 1;
    zero = zero.clamp(1.0, maxq);
    scale =
        at::where(clamped, at::maximum(scale, round_scales(xmax / (maxq - 1), scale_dtype)), scale);
  }
  return {scale, zero};
}

}  // namespace

at::Tensor round_scales(const at::Tensor& scales, at::ScalarType scale_dtype) {
  if (scale_dtype == at::kFloat || scale_dtype == at::kDouble) return scales;
  return scales.clamp(1.0 / 16384.0, 65504.0).to(scale_dtype).to(scales.scalar_type());
}

std::pair<at::Tensor, at::Tensor> quant_params(const at::Tensor& x, int64_t bits, bool sym,
                                               at::ScalarType scale_dtype) {
  const double maxq = static_cast<double>((1 << bits) - 1);
  const auto [xmin, xmax] = quant_range(x.to(work_type(x)), sym);
  auto [scale, zero] = range_params(xmin, xmax, maxq, sym, scale_dtype);
  return {scale, zero.to(at::kInt)};
}

std::pair<at::Tensor, at::Tensor> quant_params_mse(const at::Tensor& x, int64_t bits, bool sym,
                                                   int64_t grid, double maxshrink, double norm,
                                                   at::ScalarType scale_dtype) {
  const double maxq = static_cast<double>((1 << bits) - 1);
  const at::Tensor xf = x.to(work_type(x));
  const auto [xmin, xmax] = quant_range(xf, sym);
  at::Tensor best = at::full({xf.size(0)}, std::numeric_limits<float>::infinity(), xf.options());
  at::Tensor best_scale, best_zero;
  const int64_t steps =
      static_cast<int64_t>(std::floor(maxshrink * static_cast<double>(grid) + 1e-9));
  for (int64_t i = 0; i < std::max<int64_t>(steps, 1); ++i) {
    const double p = 1.0 - static_cast<double>(i) / static_cast<double>(grid);
    const auto [scale, zero] = range_params(xmin * p, xmax * p, maxq, sym, scale_dtype);
    const at::Tensor q = (at::round(xf / scale.unsqueeze(1)) + zero.unsqueeze(1)).clamp(0.0, maxq);
    const at::Tensor err =
        (scale.unsqueeze(1) * (q - zero.unsqueeze(1)) - xf).abs_().pow_(norm).sum(1);
    if (i == 0) {
      best = err;
      best_scale = scale;
      best_zero = zero;
      continue;
    }
    const at::Tensor better = err < best;  // strict: ties keep the wider range
    best = at::where(better, err, best);
    best_scale = at::where(better, scale, best_scale);
    best_zero = at::where(better, zero, best_zero);
  }
  return {best_scale, best_zero.to(at::kInt)};
}

at::Tensor quantize_codes(const at::Tensor& x, const at::Tensor& scales, const at::Tensor& zeros,
                          int64_t bits) {
  const double maxq = static_cast<double>((1 << bits) - 1);
  const at::Tensor s = scales.dim() == 1 ? scales.unsqueeze(1) : scales;
  const at::ScalarType t = work_type(x);
  const at::Tensor z = (zeros.dim() == 1 ? zeros.unsqueeze(1) : zeros).to(t);
  return (at::round(x.to(t) / s) + z).clamp(0.0, maxq);
}

at::Tensor QuantizedWeight::dequantize() const {
  const int64_t out = codes.size(0), in = codes.size(1);
  const int64_t g = spec.group_size == -1 ? in : spec.group_size;
  const at::Tensor s = scales.repeat_interleave(g, 1);
  const at::Tensor z = zeros.to(at::kFloat).repeat_interleave(g, 1);
  return s * (codes.to(at::kFloat) - z).view({out, in});
}

QuantizedWeight quantize_rtn(const at::Tensor& weight, const QuantSpec& spec, bool mse) {
  if (spec.bits < 2 || spec.bits > 8)
    throw ConfigError("", "bits", "expected 2..8, found " + std::to_string(spec.bits));
  if (weight.dim() != 2) throw InternalError("", "weight", "quantize_rtn needs a 2-d weight");
  const int64_t out = weight.size(0), in = weight.size(1);
  if (spec.group_size == 0 || spec.group_size < -1 ||
      (spec.group_size > 0 && in % spec.group_size != 0)) {
    throw ConfigError("", "group-size",
                      "expected -1 or a positive divisor of the input width " + std::to_string(in) +
                          ", found " + std::to_string(spec.group_size));
  }
  const int64_t g = spec.group_size == -1 ? in : spec.group_size;
  const int64_t groups = in / g;
  const at::Tensor grouped = weight.to(at::kFloat).reshape({out * groups, g});
  auto [scale, zero] =
      mse ? quant_params_mse(grouped, spec.bits, spec.sym, 100, 0.8, 2.4, spec.scale_dtype)
          : quant_params(grouped, spec.bits, spec.sym, spec.scale_dtype);
  QuantizedWeight q;
  q.spec = spec;
  q.codes = quantize_codes(grouped, scale, zero, spec.bits).to(at::kByte).view({out, in});
  q.scales = scale.view({out, groups});
  q.zeros = zero.view({out, groups});
  return q;
}

}  // namespace lathe
