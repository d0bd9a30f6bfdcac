#include "calibrate/coverage.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "calibrate/stats_store.h"
#include "compressor/common/errors.h"

namespace lathe {

int64_t CoverageReport::threshold(int64_t task_tokens) const {
  const auto fraction =
      static_cast<int64_t>(std::ceil(options.min_fraction * static_cast<double>(task_tokens)));
  return std::max(options.min_tokens, fraction);
}

CoverageReport coverage_from_store(const StatsStore& store, const CoverageOptions& options) {
  CoverageReport report;
  report.options = options;
  std::map<int64_t, std::map<std::string, std::pair<int64_t, at::Tensor>>>
      found;  // layer → task → (tokens, counts)
  for (const StatsKey& key : store.keys()) {
    if (key.kind != "expert_tokens") continue;
    const StatsInfo info = store.info(key);
    const at::Tensor counts = store.get_as_stored(key).to(at::kLong);
    if (counts.dim() != 1)
      throw DataError(store.path(), to_string(key), "expected a 1-d tensor of token counts");
    found[key.layer][key.task] = {info.tokens, counts};
    if (std::find(report.tasks.begin(), report.tasks.end(), key.task) == report.tasks.end())
      report.tasks.push_back(key.task);
  }
  // Tasks in the calibration set's order when the store has it, else sorted.
  if (const std::optional<std::string> description = stored_calibration_description(store)) {
    const auto doc = nlohmann::json::parse(*description, nullptr, false);
    if (doc.is_object() && doc.contains("tasks") && doc["tasks"].is_array()) {
      std::vector<std::string> ordered;
      for (const auto& t : doc["tasks"]) {
        if (t.is_object() && t.contains("name") && t["name"].is_string()) {
          const std::string name = t["name"];
          if (std::find(report.tasks.begin(), report.tasks.end(), name) != report.tasks.end())
            ordered.push_back(name);
        }
      }
      if (ordered.size() == report.tasks.size()) report.tasks = ordered;
    }
  }
  for (const auto& [layer, by_task] : found) {
    CoverageReport::Layer l;
    l.layer = layer;
    int64_t experts = -1;
    for (const auto& task : report.tasks) {
      auto it = by_task.find(task);
      if (it == by_task.end()) {
        throw DataError(store.path(), fmt::format("expert_tokens/layer_{}/router/{}", layer, task),
                        "missing for this layer");
      }
      if (experts < 0) {
        experts = it->second.second.size(0);
        l.expert_tokens.assign(experts, {});
      } else if (it->second.second.size(0) != experts) {
        throw DataError(store.path(), fmt::format("expert_tokens/layer_{}/router/{}", layer, task),
                        "expert count differs between tasks");
      }
      l.task_tokens.push_back(it->second.first);
      const at::Tensor c = it->second.second;
      for (int64_t e = 0; e < experts; ++e) l.expert_tokens[e].push_back(c[e].item<int64_t>());
    }
    for (int64_t e = 0; e < experts; ++e) {
      int64_t all = 0, all_tokens = 0;
      for (size_t t = 0; t < report.tasks.size(); ++t) {
        const int64_t n = l.expert_tokens[e][t], thr = report.threshold(l.task_tokens[t]);
        all += n;
        all_tokens += l.task_tokens[t];
        if (n < thr) report.flagged.push_back({layer, e, report.tasks[t], n, thr});
      }
      if (report.tasks.size() > 1 && all < report.threshold(all_tokens)) {
        report.flagged.push_back({layer, e, "all", all, report.threshold(all_tokens)});
      }
    }
    report.layers.push_back(std::move(l));
  }
  return report;
}

nlohmann::json coverage_json(const CoverageReport& report) {
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : report.layers) {
    nlohmann::json tokens = nlohmann::json::object(), experts = nlohmann::json::array();
    for (size_t t = 0; t < report.tasks.size(); ++t) tokens[report.tasks[t]] = l.task_tokens[t];
    for (size_t e = 0; e < l.expert_tokens.size(); ++e) {
      nlohmann::json per = nlohmann::json::object();
      int64_t all = 0;
      for (size_t t = 0; t < report.tasks.size(); ++t) {
        per[report.tasks[t]] = l.expert_tokens[e][t];
        all += l.expert_tokens[e][t];
      }
      experts.push_back({{"expert", e}, {"tokens", per}, {"all", all}});
    }
    layers.push_back({{"layer", l.layer}, {"tokens", tokens}, {"experts", experts}});
  }
  nlohmann::json flagged = nlohmann::json::array();
  for (const auto& f : report.flagged) {
    flagged.push_back({{"layer", f.layer},
                       {"expert", f.expert},
                       {"task", f.task},
                       {"tokens", f.tokens},
                       {"threshold", f.threshold}});
  }
  return {
      {"format", "lathe-coverage"},
      {"version", 1},
      {"rule",
       {{"min_tokens", report.options.min_tokens}, {"min_fraction", report.options.min_fraction}}},
      {"tasks", report.tasks},
      {"layers", layers},
      {"flagged", flagged}};
}

std::string coverage_text(const CoverageReport& report) {
  std::ostringstream out;
  if (report.layers.empty()) {
    out << "expert coverage: no MoE layers in this store\n";
    return out.str();
  }
  out << fmt::format(
      "expert coverage: tokens routed to each expert; flagged below max({}, {:g}% of the task's "
      "tokens)\n",
      report.options.min_tokens, report.options.min_fraction * 100);
  out << fmt::format("{:>5} {:>9} {:>7} {:>9} {:>9} {:>9}  {}\n", "layer", "tokens", "experts",
                     "min", "median", "max", "flagged per task");
  for (const auto& l : report.layers) {
    std::vector<int64_t> totals;
    for (const auto& per : l.expert_tokens) {
      int64_t s = 0;
      for (int64_t v : per) s += v;
      totals.push_back(s);
    }
    std::vector<int64_t> sorted = totals;
    std::sort(sorted.begin(), sorted.end());
    int64_t tokens = 0;
    for (int64_t v : l.task_tokens) tokens += v;
    std::string flags;
    for (const auto& task : report.tasks) {
      int64_t count = 0;
      for (const auto& f : report.flagged) count += f.layer == l.layer && f.task == task;
      if (count) flags += fmt::format("{}{}:{}", flags.empty() ? "" : " ", task, count);
    }
    const int64_t median = sorted.empty() ? 0 : sorted[(sorted.size() - 1) / 2];
    out << fmt::format("{:>5} {:>9} {:>7} {:>9} {:>9} {:>9}  {}\n", l.layer, tokens, totals.size(),
                       sorted.empty() ? 0 : sorted.front(), median,
                       sorted.empty() ? 0 : sorted.back(), flags.empty() ? "-" : flags);
  }
  if (!report.flagged.empty()) {
    out << fmt::format("{} flagged (layer, expert, task: tokens < threshold):\n",
                       report.flagged.size());
    size_t shown = 0;
    for (const auto& f : report.flagged) {
      if (++shown > 40) {
        out << fmt::format("  … {} more in the JSON report\n", report.flagged.size() - 40);
        break;
      }
      out << fmt::format("  layer {:>3} expert {:>4} {}: {} < {}\n", f.layer, f.expert, f.task,
                         f.tokens, f.threshold);
    }
  }
  return out.str();
}

}  // namespace lathe
