#include "compressor/passes/expert_selection.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "compressor/common/errors.h"
#include "compressor/model/model_spec.h"
#include "compressor/passes/options.h"

namespace lathe {

namespace {
bool global_mode(const OptionValues& options) {
  return options.has("mode") && options.get_string("mode") == "global";
}
}  // namespace

void check_keep_options(const OptionValues& options, const std::string& pass) {
  if (options.has("keep") == options.has("keep-count")) {
    throw ConfigError(
        "", pass + ".keep",
        "give exactly one of keep (a fraction of each layer's experts) and keep-count");
  }
  if (options.has("keep") && !(options.get_float("keep") > 0)) {
    throw ConfigError("", pass + ".keep", "expected a fraction in (0, 1], found 0");
  }
  if (options.has("min-experts") && !global_mode(options)) {
    throw ConfigError("", pass + ".min-experts", "applies to mode global only");
  }
}

void require_moe(const ModelSpec& spec, const std::string& pass) {
  if (spec.is_moe()) return;
  throw ConfigError(
      "", pass,
      fmt::format("the model ({}) has no MoE layer: there are no routed experts to prune",
                  spec.model_type));
}

std::vector<int64_t> keep_targets(const ModelSpec& spec, const OptionValues& options,
                                  const std::string& pass) {
  require_moe(spec, pass);
  const bool global = global_mode(options);
  const bool by_count = options.has("keep-count");
  const std::string field = pass + (by_count ? ".keep-count" : ".keep");
  std::vector<int64_t> out;
  int64_t total_experts = 0, moe_layers = 0, floors = 0;
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    const LayerSpec& l = spec.layers[i];
    if (!l.is_moe) continue;
    moe_layers += 1;
    total_experts += l.num_experts;
    if (by_count && options.get_int("keep-count") > l.num_experts) {
      throw ConfigError("", field,
                        fmt::format("{} exceeds the {} routed experts of layer {}",
                                    options.get_int("keep-count"), l.num_experts, i));
    }
    if (global) {
      const int64_t floor = options.has("min-experts") ? options.get_int("min-experts") : l.top_k;
      if (floor < l.top_k || floor > l.num_experts) {
        throw ConfigError("", pass + ".min-experts",
                          fmt::format("{} outside [top_k = {}, {} experts] in layer {}", floor,
                                      l.top_k, l.num_experts, i));
      }
      out.push_back(floor);
      floors += floor;
      continue;
    }
    const int64_t n = by_count ? options.get_int("keep-count")
                               : std::llround(options.get_float("keep") * l.num_experts);
    if (n < l.top_k) {
      throw ConfigError(
          "", field,
          fmt::format("keeps {} of the {} experts of layer {} but the router selects top_k = {}", n,
                      l.num_experts, i, l.top_k));
    }
    out.push_back(n);
  }
  if (global) {
    const int64_t total = by_count ? options.get_int("keep-count") * moe_layers
                                   : std::llround(options.get_float("keep") * total_experts);
    if (total < floors) {
      throw ConfigError(
          "", field,
          fmt::format("keeps {} experts in all but the per-layer floor (min-experts, default "
                      "top_k) needs {}",
                      total, floors));
    }
    out.push_back(total);
  }
  return out;
}

std::vector<int64_t> rank_experts(const std::vector<double>& score) {
  std::vector<int64_t> ids(score.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int64_t a, int64_t b) { return score[a] > score[b]; });
  return ids;
}

std::vector<std::vector<int64_t>> select_uniform(const std::vector<std::vector<double>>& scores,
                                                 const std::vector<int64_t>& keep) {
  std::vector<std::vector<int64_t>> kept;
  for (size_t i = 0; i < scores.size(); ++i) {
    std::vector<int64_t> order = rank_experts(scores[i]);
    order.resize(static_cast<size_t>(keep[i]));
    kept.push_back(order);
  }
  return kept;
}

std::vector<std::vector<int64_t>> select_global(const std::vector<std::vector<double>>& scores,
                                                const std::vector<double>& scale,
                                                const std::vector<int64_t>& floors, int64_t total) {
  struct Candidate {
    double score;
    size_t layer;
    int64_t expert;
  };
  std::vector<std::vector<int64_t>> kept;
  std::vector<Candidate> rest;
  int64_t used = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    const std::vector<int64_t> order = rank_experts(scores[i]);
    kept.emplace_back(order.begin(), order.begin() + floors[i]);
    used += floors[i];
    for (size_t r = static_cast<size_t>(floors[i]); r < order.size(); ++r) {
      rest.push_back({scores[i][order[r]] * scale[i], i, order[r]});
    }
  }
  std::stable_sort(rest.begin(), rest.end(),
                   [](const Candidate& a, const Candidate& b) { return a.score > b.score; });
  const int64_t extra = total - used;
  for (int64_t j = 0; j < extra && j < static_cast<int64_t>(rest.size()); ++j)
    kept[rest[j].layer].push_back(rest[j].expert);
  return kept;
}

std::vector<int64_t> knapsack_counts(const std::vector<std::vector<double>>& cost,
                                     const std::vector<int64_t>& floors, int64_t total) {
  const size_t n = cost.size();
  int64_t base = 0;
  for (int64_t f : floors) base += f;
  const int64_t budget = total - base;  // slots above the floors
  if (budget < 0) return {};
  const double inf = std::numeric_limits<double>::infinity();
  // best[i][b]: least cost of layers [0, i) using b extra slots; choice[i][b]: extra of layer i
  // − 1.
  std::vector<std::vector<double>> best(n + 1,
                                        std::vector<double>(static_cast<size_t>(budget) + 1, inf));
  std::vector<std::vector<int64_t>> choice(
      n + 1, std::vector<int64_t>(static_cast<size_t>(budget) + 1, -1));
  best[0][0] = 0;
  for (size_t i = 0; i < n; ++i) {
    for (int64_t b = 0; b <= budget; ++b) {
      if (best[i][b] == inf) continue;
      for (int64_t x = 0; x < static_cast<int64_t>(cost[i].size()) && b + x <= budget; ++x) {
        const double c = best[i][b] + cost[i][x];
        if (c < best[i + 1][b + x]) {
          best[i + 1][b + x] = c;
          choice[i + 1][b + x] = x;
        }
      }
    }
  }
  if (best[n][budget] == inf) return {};
  std::vector<int64_t> k(n);
  int64_t b = budget;
  for (size_t i = n; i > 0; --i) {
    const int64_t x = choice[i][b];
    k[i - 1] = floors[i - 1] + x;
    b -= x;
  }
  return k;
}

std::vector<OptionSpec> expert_selection_options(std::vector<OptionSpec> extra) {
  OptionSpec mode = make_option(
      "mode", OptionType::kEnum, "uniform",
      "uniform: the best experts of each layer; global: ranked across layers (scores per "
      "calibration token, or per layer sum when data-free) above a per-layer floor");
  mode.choices = {"uniform", "global"};
  std::vector<OptionSpec> o = {
      make_option("keep", OptionType::kFloat, "",
                  "fraction of each MoE layer's routed experts kept, in (0, 1]", 0, 1),
      make_option("keep-count", OptionType::kInt, "",
                  "routed experts kept per MoE layer; instead of keep", 1, 1 << 20),
      mode,
      make_option("min-experts", OptionType::kInt, "",
                  "global mode: experts every layer keeps at least (default top_k)", 1, 1 << 20),
  };
  o.insert(o.end(), extra.begin(), extra.end());
  return o;
}

}  // namespace lathe
