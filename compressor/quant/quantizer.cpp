#include "compressor/quant/quantizer.h"

#include <torch/torch.h>

#include <string>

#include "compressor/common/errors.h"

namespace lathe {

std::pair<at::Tensor, at::Tensor> quant_params(const at::Tensor& x, int64_t bits, bool sym) {
  const double maxq = static_cast<double>((1 << bits) - 1);
  const at::Tensor xf = x.to(at::kFloat);
  at::Tensor xmin = std::get<0>(xf.min(1)).clamp_max(0.0);
  at::Tensor xmax = std::get<0>(xf.max(1)).clamp_min(0.0);
  if (sym) {
    xmax = at::maximum(xmin.abs(), xmax);
    xmin = -xmax;
  }
  const at::Tensor both_zero = (xmin == 0) & (xmax == 0);
  xmin = at::where(both_zero, -1.0, xmin);
  xmax = at::where(both_zero, 1.0, xmax);
  at::Tensor scale = (xmax - xmin) / maxq;
  at::Tensor zero;
  if (sym) {
    zero = at::full_like(scale, (maxq + 1) / 2);
  } else {
    zero = at::round(-xmin / scale);
    // DECISION (§1.4): zero in [1, maxq] so the v1 "zero − 1" convention is exact; when the clamp
    // fires, widen the scale so the largest value stays representable.
    const at::Tensor clamped = zero < 1;
    zero = zero.clamp(1.0, maxq);
    scale = at::where(clamped, at::maximum(scale, xmax / (maxq - 1)), scale);
  }
  return {scale, zero.to(at::kInt)};
}

at::Tensor quantize_codes(const at::Tensor& x, const at::Tensor& scales, const at::Tensor& zeros, int64_t bits) {
  const double maxq = static_cast<double>((1 << bits) - 1);
  const at::Tensor s = scales.dim() == 1 ? scales.unsqueeze(1) : scales;
  const at::Tensor z = (zeros.dim() == 1 ? zeros.unsqueeze(1) : zeros).to(at::kFloat);
  return (at::round(x.to(at::kFloat) / s) + z).clamp(0.0, maxq);
}

at::Tensor QuantizedWeight::dequantize() const {
  const int64_t out = codes.size(0), in = codes.size(1);
  const int64_t g = spec.group_size == -1 ? in : spec.group_size;
  const at::Tensor s = scales.repeat_interleave(g, 1);
  const at::Tensor z = zeros.to(at::kFloat).repeat_interleave(g, 1);
  return s * (codes.to(at::kFloat) - z).view({out, in});
}

QuantizedWeight quantize_rtn(const at::Tensor& weight, const QuantSpec& spec) {
  if (spec.bits < 2 || spec.bits > 8) throw ConfigError("", "bits", "expected 2..8, found " + std::to_string(spec.bits));
  if (weight.dim() != 2) throw InternalError("", "weight", "quantize_rtn needs a 2-d weight");
  const int64_t out = weight.size(0), in = weight.size(1);
  if (spec.group_size == 0 || spec.group_size < -1 || (spec.group_size > 0 && in % spec.group_size != 0)) {
    throw ConfigError("", "group-size", "expected -1 or a positive divisor of the input width " + std::to_string(in) +
                                            ", found " + std::to_string(spec.group_size));
  }
  const int64_t g = spec.group_size == -1 ? in : spec.group_size;
  const int64_t groups = in / g;
  const at::Tensor grouped = weight.to(at::kFloat).reshape({out * groups, g});
  auto [scale, zero] = quant_params(grouped, spec.bits, spec.sym);
  QuantizedWeight q;
  q.spec = spec;
  q.codes = quantize_codes(grouped, scale, zero, spec.bits).to(at::kByte).view({out, in});
  q.scales = scale.view({out, groups});
  q.zeros = zero.view({out, groups});
  return q;
}

}  // namespace lathe
