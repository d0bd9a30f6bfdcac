#include "compressor/quant/smooth.h"

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>

#include "compressor/common/errors.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/quant/quantizer.h"

namespace lathe {
namespace {

std::string shape_text(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

}  // namespace

const char* smooth_statistic_name(SmoothStatistic statistic) {
  return statistic == SmoothStatistic::kRange ? "range" : "absmax";
}

std::optional<SmoothStatistic> parse_smooth_statistic(const std::string& name) {
  if (name == "absmax") return SmoothStatistic::kAbsMax;
  if (name == "range") return SmoothStatistic::kRange;
  return std::nullopt;
}

const std::vector<double>& adaptive_alpha_grid() {
  static const std::vector<double> grid = {0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9};
  return grid;
}

ActivationSummary::ActivationSummary(int64_t sample_cap, uint64_t seed)
    : sample_cap_(sample_cap), rng_(seed) {}

void ActivationSummary::add(const at::Tensor& rows) {
  if (rows.dim() != 2)
    throw InternalError("ActivationSummary", "",
                        fmt::format("expected [n, c] rows, got {} dims", rows.dim()));
  if (max_.defined() && rows.size(1) != max_.size(0)) {
    throw InternalError("ActivationSummary", "",
                        fmt::format("rows of width {} after width {}", rows.size(1), max_.size(0)));
  }
  if (rows.size(0) == 0) return;
  const at::Tensor x = rows.to(at::kCPU, at::kFloat);
  const at::Tensor hi = x.amax(0), lo = x.amin(0);
  max_ = max_.defined() ? at::maximum(max_, hi) : hi;
  min_ = min_.defined() ? at::minimum(min_, lo) : lo;
  const int64_t n = x.size(0);
  if (sample_cap_ > 0) {
    std::vector<double> keys(n);
    for (double& k : keys) k = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
    at::Tensor new_keys = at::tensor(keys, at::kDouble);
    at::Tensor new_order = at::arange(tokens_, tokens_ + n, at::kLong);
    at::Tensor all_rows = sample_.defined() ? at::cat({sample_, x}) : x.clone();
    at::Tensor all_keys = keys_.defined() ? at::cat({keys_, new_keys}) : new_keys;
    at::Tensor all_order = order_.defined() ? at::cat({order_, new_order}) : new_order;
    if (all_rows.size(0) > sample_cap_) {
      const at::Tensor keep =
          std::get<1>(all_keys.topk(sample_cap_, 0, /*largest=*/false, /*sorted=*/false));
      all_rows = all_rows.index_select(0, keep);
      all_keys = all_keys.index_select(0, keep);
      all_order = all_order.index_select(0, keep);
    }
    sample_ = all_rows;
    keys_ = all_keys;
    order_ = all_order;
  }
  tokens_ += n;
}

at::Tensor ActivationSummary::statistic(SmoothStatistic statistic) const {
  if (!max_.defined())
    throw InternalError("ActivationSummary", "", "statistic of a summary that saw no rows");
  return statistic == SmoothStatistic::kRange ? max_ - min_ : at::maximum(max_.abs(), min_.abs());
}

at::Tensor ActivationSummary::sample() const {
  if (!sample_.defined()) return {};
  return sample_.index_select(0, std::get<1>(order_.sort()));
}

at::Tensor weight_statistic(const std::vector<at::Tensor>& weights, SmoothStatistic statistic) {
  if (weights.empty()) throw InternalError("weight_statistic", "", "no weights");
  at::Tensor m;
  for (const at::Tensor& w : weights) {
    if (w.dim() != 2 || w.size(1) != weights[0].size(1)) {
      throw InternalError("weight_statistic", "",
                          fmt::format("weights of other input widths: {} vs {}", shape_text(w),
                                      shape_text(weights[0])));
    }
    const at::Tensor col = w.abs().amax(0).to(at::kCPU, at::kFloat);
    m = m.defined() ? at::maximum(m, col) : col;
  }
  return statistic == SmoothStatistic::kRange ? 2 * m : m;
}

at::Tensor smoothing_scales(const at::Tensor& act, const at::Tensor& weight, double alpha) {
  if (!(alpha >= 0 && alpha <= 1))
    throw ConfigError("", "alpha", fmt::format("expected a number in [0, 1], found {}", alpha));
  if (act.sizes() != weight.sizes()) {
    throw InternalError("smoothing_scales", "",
                        fmt::format("activation statistic {} vs weight statistic {}",
                                    shape_text(act), shape_text(weight)));
  }
  const at::Tensor a = act.to(at::kCPU, at::kFloat), w = weight.to(at::kCPU, at::kFloat);
  const at::Tensor s =
      at::where(w > 0, a.pow(alpha) / w.pow(1.0 - alpha), a);  // §2.1: w_j = 0 → a_j
  return s.clamp_min(1e-5);
}

double w8a8_output_error(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                         const at::Tensor& scales) {
  std::vector<at::Tensor> parts;
  for (const at::Tensor& w : weights) parts.push_back(w.to(at::kCPU, at::kFloat));
  const at::Tensor W = at::cat(parts, 0);
  const at::Tensor s = scales.to(at::kCPU, at::kFloat);
  const at::Tensor qw = quantize_rtn(W * s.unsqueeze(0), QuantSpec{8, -1, true}).dequantize();
  const at::Tensor xf = x.to(at::kCPU, at::kFloat);
  double error = 0;
  for (int64_t begin = 0; begin < xf.size(0); begin += 1024) {  // bounded [chunk, out] products
    const at::Tensor xc = xf.slice(0, begin, begin + 1024);
    const at::Tensor approx = quantize_activations_per_token(xc / s.unsqueeze(0), 8).mm(qw.t());
    error += (approx - xc.mm(W.t())).square().sum(at::kDouble).item<double>();
  }
  return error;
}

AlphaSearch search_alpha(const at::Tensor& sample, const at::Tensor& act,
                         const at::Tensor& weight_stat, const std::vector<at::Tensor>& balanced,
                         const std::vector<double>& alphas,
                         const std::function<at::Tensor(const at::Tensor&)>& to_columns) {
  if (alphas.empty()) throw ConfigError("", "alpha", "the adaptive α grid is empty");
  if (!sample.defined() || sample.size(0) == 0)
    throw InternalError("search_alpha", "", "no sampled tokens");
  AlphaSearch r;
  r.alphas = alphas;
  double best = 0;
  for (double alpha : alphas) {
    const at::Tensor s = smoothing_scales(act, weight_stat, alpha);
    const double e = w8a8_output_error(sample, balanced, to_columns ? to_columns(s) : s);
    r.errors.push_back(e);
    if (!r.scales.defined() || e < best) {  // strict: the first α of a tie wins
      best = e;
      r.alpha = alpha;
      r.scales = s;
    }
  }
  return r;
}

namespace {

void require_width(const at::Tensor& t, int64_t dim, int64_t n, const char* what) {
  if (t.size(dim) != n) {
    throw InternalError(
        "smoothing fold", "",
        fmt::format("{} has {} channels along dim {}, the scales {}", what, t.size(dim), dim, n));
  }
}

}  // namespace

void fold_into_norm(at::Tensor& norm_weight, at::Tensor* norm_bias,
                    const std::vector<at::Tensor*>& readers, const at::Tensor& scales,
                    bool plus_one) {
  const int64_t n = scales.size(0);
  require_width(norm_weight, 0, n, "the norm weight");
  if (plus_one) {  // (1 + w') = (1 + w)/s
    norm_weight.add_(1.0).div_(scales.to(norm_weight.options())).sub_(1.0);
  } else {
    norm_weight.div_(scales.to(norm_weight.options()));
  }
  if (norm_bias && norm_bias->defined()) norm_bias->div_(scales.to(norm_bias->options()));
  for (at::Tensor* w : readers) {
    require_width(*w, 1, n, "a reading weight");
    w->mul_(scales.to(w->options()).unsqueeze(0));
  }
}

void fold_rows_into_columns(at::Tensor& producer, at::Tensor* producer_bias, at::Tensor& consumer,
                            const at::Tensor& scales, const at::Tensor& consumer_scales) {
  const at::Tensor cs = consumer_scales.defined() ? consumer_scales : scales;
  require_width(producer, 0, scales.size(0), "the producing weight");
  require_width(consumer, 1, cs.size(0), "the consuming weight");
  producer.div_(scales.to(producer.options()).unsqueeze(1));
  if (producer_bias && producer_bias->defined())
    producer_bias->div_(scales.to(producer_bias->options()));
  consumer.mul_(cs.to(consumer.options()).unsqueeze(0));
}

at::Tensor expand_kv_channels(const at::Tensor& kv_scales, int64_t heads, int64_t kv_heads,
                              int64_t head_dim) {
  require_width(kv_scales, 0, kv_heads * head_dim, "the kv scales");
  return kv_scales.view({kv_heads, 1, head_dim})
      .expand({kv_heads, heads / kv_heads, head_dim})
      .reshape({-1});
}

at::Tensor reduce_to_kv_channels(const at::Tensor& per_column, int64_t heads, int64_t kv_heads,
                                 int64_t head_dim) {
  require_width(per_column, 0, heads * head_dim, "the per-column statistic");
  return per_column.view({kv_heads, heads / kv_heads, head_dim}).amax(1).reshape({-1});
}

}  // namespace lathe
