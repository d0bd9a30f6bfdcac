#include "compressor/quant/sparsity.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "compressor/common/errors.h"

namespace lathe {

at::Tensor prune_mask(const at::Tensor& score, double ratio, int64_t n, int64_t m) {
  const int64_t out = score.size(0), in = score.size(1);
  at::Tensor mask = at::zeros({out, in}, score.options().dtype(at::kBool));
  if (m > 0) {
    if (in % m != 0 || n <= 0 || n >= m)
      throw InternalError("", "pattern", fmt::format("{}:{} on an input width of {}", n, m, in));
    const at::Tensor groups = score.reshape({out, in / m, m});
    const at::Tensor order =
        std::get<1>(groups.sort(/*stable=*/true, /*dim=*/2, /*descending=*/false));
    return mask.view({out, in / m, m}).scatter_(2, order.slice(2, 0, n), true).view({out, in});
  }
  if (!(ratio >= 0 && ratio < 1))
    throw InternalError("", "sparsity", fmt::format("ratio {} outside [0, 1)", ratio));
  const int64_t k = static_cast<int64_t>(std::floor(ratio * static_cast<double>(in)));
  if (k == 0) return mask;
  const at::Tensor order =
      std::get<1>(score.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false));
  return mask.scatter_(1, order.slice(1, 0, k), true);
}

at::Tensor wanda_score(const at::Tensor& weight, const at::Tensor& sum_sq) {
  return weight.to(at::kFloat).abs() * sum_sq.to(at::kDouble).sqrt().to(at::kFloat).unsqueeze(0);
}

double outlier_ratio(const at::Tensor& metric, double threshold) {
  const at::Tensor a = metric.to(at::kDouble);
  const double mean = a.mean().item<double>();
  return 100.0 * (a > threshold * mean).sum().item<double>() / static_cast<double>(a.numel());
}

std::vector<double> allocate_sparsity(const std::vector<double>& scores, double target,
                                      double lambda) {
  std::vector<double> out(scores.size(), target);
  if (scores.empty()) return out;
  const auto [lo, hi] = std::minmax_element(scores.begin(), scores.end());
  if (!(*hi > *lo)) return out;
  std::vector<double> r(scores.size());
  for (size_t i = 0; i < r.size(); ++i) r[i] = (scores[i] - *lo) / (*hi - *lo) * 2 * lambda;
  const double mean = std::accumulate(r.begin(), r.end(), 0.0) / static_cast<double>(r.size());
  for (size_t i = 0; i < r.size(); ++i)
    out[i] = std::clamp(1.0 - (r[i] - mean + (1.0 - target)), 0.01, 0.99);
  return out;
}

std::vector<double> dlp_importance(const std::vector<double>& mean_metric) {
  double sum = 0;
  for (double s : mean_metric) sum += std::abs(s);
  std::vector<double> out(mean_metric.size(), 1.0);
  if (sum > 0)
    for (size_t i = 0; i < out.size(); ++i) out[i] = 1.0 - std::abs(mean_metric[i]) / sum;
  return out;
}

}  // namespace lathe
