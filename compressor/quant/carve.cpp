#include "compressor/quant/carve.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>

#include <fmt/format.h>

#include "compressor/common/errors.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/quant/balanced_assignment.h"

namespace lathe {
namespace {

/// Ids of `v` ordered by value, highest first (ties: lower id first).
std::vector<int64_t> by_rate_descending(const std::vector<int64_t>& ids,
                                        const std::vector<double>& rate) {
  std::vector<int64_t> out = ids;
  std::stable_sort(out.begin(), out.end(), [&](int64_t a, int64_t b) { return rate[a] > rate[b]; });
  return out;
}

constexpr int64_t kTokenChunk = 2048;

/// The ATopK markers M [T, I] (uint8): 1 where a neuron is among the K_a largest |a| of a token.
at::Tensor activation_markers(const ModelSpec& spec, const at::Tensor& h, const at::Tensor& gate,
                              const at::Tensor& up, int64_t atopk) {
  const int64_t tokens = h.size(0), width = gate.size(0);
  const at::Tensor g = unit_rows(gate), u = unit_rows(up);
  at::Tensor markers = at::zeros({tokens, width}, at::kByte);
  for (int64_t b = 0; b < tokens; b += kTokenChunk) {
    const int64_t e = std::min(tokens, b + kTokenChunk);
    const at::Tensor x = unit_rows(h.slice(0, b, e));
    const at::Tensor a = gate_activation(spec, at::linear(x, g)) * at::linear(x, u);
    markers.slice(0, b, e).scatter_(1, std::get<1>(a.abs().topk(atopk, 1)), 1);
  }
  return markers;
}

/// Σ_t M[t, rows]ᵀ · right[t] over token chunks: [rows, right columns] fp64. `right(b, e)` gives
/// the [e − b, c] fp32 block of tokens b..e.
template <typename Right>
at::Tensor marker_products(const at::Tensor& markers, const at::Tensor& rows, int64_t columns,
                           Right&& right) {
  at::Tensor out = at::zeros({rows.size(0), columns}, at::kDouble);
  const int64_t tokens = markers.size(0);
  for (int64_t b = 0; b < tokens; b += kTokenChunk) {
    const int64_t e = std::min(tokens, b + kTokenChunk);
    const at::Tensor left = markers.slice(0, b, e).index_select(1, rows).to(at::kFloat);
    out += left.t().mm(right(b, e)).to(at::kDouble);
  }
  return out;
}

std::vector<double> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}  // namespace

at::Tensor unit_rows(const at::Tensor& w) {
  const at::Tensor f = w.to(at::kFloat);
  return f / f.norm(2, {1}, true).clamp_min(1e-30);
}

Carve carve_ffn(const ModelSpec& spec, const at::Tensor& h, const at::Tensor& gate,
                const at::Tensor& up, const CarveOptions& o) {
  const int64_t width = gate.size(0);
  if (o.experts < 1 || width % o.experts != 0)
    throw ConfigError("", "experts",
                      fmt::format("{} experts do not divide the FFN width {}", o.experts, width));
  if (o.shared < 0 || o.shared >= o.experts)
    throw ConfigError(
        "", "shared",
        fmt::format("expected 0 ≤ shared < experts = {}, found {}", o.experts, o.shared));
  if (o.atopk < 1 || o.atopk > width)
    throw ConfigError(
        "", "atopk",
        fmt::format("expected 1 ≤ atopk ≤ the FFN width {}, found {}", width, o.atopk));
  Carve carve;
  carve.tokens = h.size(0);
  const at::Tensor markers = activation_markers(spec, h, gate, up, o.atopk);
  const std::vector<double> count = to_vector(markers.sum(0, false, at::kDouble));
  carve.rates.resize(static_cast<size_t>(width));
  for (int64_t j = 0; j < width; ++j)
    carve.rates[j] = carve.tokens > 0 ? count[j] / static_cast<double>(carve.tokens) : 0.0;

  const int64_t m = width / o.experts, k = o.experts - o.shared;
  std::vector<int64_t> ids(static_cast<size_t>(width));
  std::iota(ids.begin(), ids.end(), 0);
  const std::vector<int64_t> order = by_rate_descending(ids, carve.rates);
  carve.shared.assign(order.begin(), order.begin() + o.shared * m);
  std::sort(carve.shared.begin(), carve.shared.end());
  const std::vector<int64_t> seeds(order.begin() + o.shared * m, order.begin() + o.shared * m + k);
  std::vector<int64_t> rest(order.begin() + o.shared * m, order.end());
  std::sort(rest.begin(), rest.end());  // assignment rows in ascending id order
  const int64_t r = static_cast<int64_t>(rest.size());

  // L1 distance of binary marker columns: n_j + n_c − 2 M_jᵀ M_c (integers, exact in fp64).
  const at::Tensor rows = at::tensor(rest, at::kLong), seed_ids = at::tensor(seeds, at::kLong);
  const std::vector<double> dots =
      to_vector(marker_products(markers, rows, k, [&](int64_t b, int64_t e) {
        return markers.slice(0, b, e).index_select(1, seed_ids).to(at::kFloat);
      }));
  std::vector<double> cost(static_cast<size_t>(r * k));
  for (int64_t i = 0; i < r; ++i)
    for (int64_t c = 0; c < k; ++c)
      cost[i * k + c] = count[rest[i]] + count[seeds[c]] - 2 * dots[i * k + c];
  const std::vector<int32_t> bin = balanced_assignment(cost, r, k, m);

  carve.experts.assign(static_cast<size_t>(k), {});
  at::Tensor one_hot = at::zeros({r, k}, at::kFloat);
  for (int64_t i = 0; i < r; ++i) {
    carve.experts[bin[i]].push_back(rest[i]);
    one_hot[i][bin[i]] = 1.0f;
    carve.assignment_cost += cost[i * k + bin[i]];
  }
  // One iteration: centroids are the members' mean marker columns [T, k]; the representative is
  // the member nearest (L1) its centroid: Σ_t c_t + n_j − 2 M_jᵀ c.
  at::Tensor centroids = at::zeros({carve.tokens, k}, at::kFloat);
  for (int64_t b = 0; b < carve.tokens; b += kTokenChunk) {
    const int64_t e = std::min(carve.tokens, b + kTokenChunk);
    centroids.slice(0, b, e).copy_(
        markers.slice(0, b, e).index_select(1, rows).to(at::kFloat).mm(one_hot) /
        static_cast<float>(m));
  }
  const std::vector<double> mass = to_vector(centroids.sum(0, false, at::kDouble));
  const std::vector<double> near = to_vector(marker_products(
      markers, rows, k, [&](int64_t b, int64_t e) { return centroids.slice(0, b, e); }));
  carve.representatives.assign(static_cast<size_t>(k), -1);
  std::vector<double> best(static_cast<size_t>(k), 0.0);
  for (int64_t i = 0; i < r; ++i) {  // ascending ids: a tie keeps the lower id
    const int64_t c = bin[i];
    const double dist = mass[c] + count[rest[i]] - 2 * near[i * k + c];
    if (carve.representatives[c] < 0 || dist < best[c]) {
      carve.representatives[c] = rest[i];
      best[c] = dist;
    }
  }
  return carve;
}

}  // namespace lathe
