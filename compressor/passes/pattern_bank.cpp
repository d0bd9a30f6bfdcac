#include "compressor/passes/pattern_bank.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/json_reader.h"
#include "compressor/common/strict_json.h"
#include "compressor/passes/plan.h"

namespace lathe {
namespace {

constexpr const char* kFormat = "lathe-pattern-bank";
constexpr int64_t kVersion = 1;

/// An integer list of exactly `length` entries (any length when length == npos), each ≥ min.
std::vector<int64_t> int_list(const JsonReader& v, size_t length, int64_t min) {
  const size_t n = v.array_size();
  if (length != std::string::npos && n != length)
    v.fail(fmt::format("expected {} entries, found {}", length, n));
  std::vector<int64_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = v.element(i).as_int(min);
  return out;
}

/// [L][E_l] of finite numbers ≥ min_value, one row per MoE layer of `widths[l]` numbers.
std::vector<std::vector<double>> matrix(const JsonReader& v, const std::vector<int64_t>& widths,
                                        double min_value) {
  if (!v.value().is_array() || v.value().size() != widths.size())
    v.fail(fmt::format("expected a list of {} per-layer vectors", widths.size()));
  std::vector<std::vector<double>> out;
  for (size_t l = 0; l < widths.size(); ++l) {
    const JsonReader row = v.element(l);
    if (!row.value().is_array() || static_cast<int64_t>(row.value().size()) != widths[l]) {
      row.fail(
          fmt::format("expected {} numbers (the layer's experts), found {}", widths[l],
                      row.value().is_array() ? std::to_string(row.value().size()) : "no list"));
    }
    std::vector<double> values(row.array_size());
    for (size_t e = 0; e < values.size(); ++e) values[e] = row.element(e).as_number(min_value);
    out.push_back(std::move(values));
  }
  return out;
}

nlohmann::json fp32_matrix(const std::vector<std::vector<double>>& m) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& row : m) {
    nlohmann::json r = nlohmann::json::array();
    for (double x : row) r.push_back(static_cast<float>(x));
    out.push_back(r);
  }
  return out;
}

TaskPattern task_from_json(const JsonReader& f, const PatternBank& bank) {
  f.check_keys(
      {"name", "score", "r", "tokens", "calibration_fingerprint", "mass", "scores", "kept"});
  TaskPattern t;
  t.name = f.string_at("name");
  if (t.name.empty()) f.fail("name", "empty task name");
  t.score = f.string_at("score");
  if (t.score != "mass" && t.score != "frequency" && t.score != "top1-logit") {
    f.fail("score",
           fmt::format("unknown score '{}'; expected mass, frequency or top1-logit", t.score));
  }
  t.r = f.number_at("r");
  if (t.r < 0 || t.r > 1) f.fail("r", "expected a threshold in [0, 1]");
  t.tokens = f.int_at("tokens", 1);
  t.calibration_fingerprint = f.string_at("calibration_fingerprint");
  t.mass = matrix(f.at("mass"), bank.num_experts, 0.0);
  if (t.score == "mass") {
    if (f.has("scores"))
      f.fail("scores", "present for score mass (the mass vectors are the scores)");
  } else {
    t.scores = matrix(f.at("scores"), bank.num_experts, -INFINITY);
  }
  const JsonReader kept = f.at("kept");
  if (!kept.value().is_array() || kept.value().size() != bank.moe_layers.size())
    kept.fail(fmt::format("expected a list of {} per-layer id lists", bank.moe_layers.size()));
  for (size_t l = 0; l < bank.moe_layers.size(); ++l) {
    const JsonReader layer = kept.element(l);
    std::vector<int64_t> ids = int_list(layer, std::string::npos, 0);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] >= bank.num_experts[l])
        layer.element(i).fail(fmt::format("expert {} of {}", ids[i], bank.num_experts[l]));
      if (i > 0 && ids[i] <= ids[i - 1]) layer.fail("expert ids must be unique and ascending");
    }
    if (static_cast<int64_t>(ids.size()) < bank.top_k[l]) {
      layer.fail(fmt::format("keeps {} experts but the router selects top_k = {}", ids.size(),
                             bank.top_k[l]));
    }
    t.kept.push_back(std::move(ids));
  }
  return t;
}

}  // namespace

nlohmann::json PatternBank::to_json() const {
  nlohmann::json tasks_json = nlohmann::json::array();
  for (const TaskPattern& t : tasks) {
    nlohmann::json j = {{"name", t.name},
                        {"score", t.score},
                        {"r", t.r},
                        {"tokens", t.tokens},
                        {"calibration_fingerprint", t.calibration_fingerprint},
                        {"mass", fp32_matrix(t.mass)},
                        {"kept", t.kept}};
    if (t.score != "mass") j["scores"] = fp32_matrix(t.scores);
    tasks_json.push_back(j);
  }
  return {{"format", kFormat},
          {"version", kVersion},
          {"model",
           {{"weights_fingerprint", weights_fingerprint},
            {"moe_layers", moe_layers},
            {"num_experts", num_experts},
            {"top_k", top_k}}},
          {"tasks", tasks_json}};
}

PatternBank PatternBank::from_json(const nlohmann::json& doc, const std::string& where) {
  const JsonReader f(doc, where);
  f.check_keys({"format", "version", "model", "tasks"});
  const std::string format = f.string_at("format");
  if (format != kFormat)
    f.fail("format", fmt::format("'{}' is not a pattern bank (expected \"{}\")", format, kFormat));
  const JsonReader version = f.at("version");
  if (!version.value().is_number_integer() || version.value().get<int64_t>() != kVersion) {
    version.fail(fmt::format("pattern bank version {} (this lathe reads {})",
                             version.value().dump(), kVersion));
  }
  PatternBank bank;
  const JsonReader m = f.at("model");
  m.check_keys({"weights_fingerprint", "moe_layers", "num_experts", "top_k"});
  bank.weights_fingerprint = m.string_at("weights_fingerprint");
  bank.moe_layers = int_list(m.at("moe_layers"), std::string::npos, 0);
  if (bank.moe_layers.empty()) m.fail("moe_layers", "no MoE layer");
  for (size_t i = 1; i < bank.moe_layers.size(); ++i) {
    if (bank.moe_layers[i] <= bank.moe_layers[i - 1])
      m.fail("moe_layers", "layer ids must be unique and ascending");
  }
  bank.num_experts = int_list(m.at("num_experts"), bank.moe_layers.size(), 1);
  bank.top_k = int_list(m.at("top_k"), bank.moe_layers.size(), 1);
  for (size_t l = 0; l < bank.top_k.size(); ++l) {
    if (bank.top_k[l] > bank.num_experts[l])
      m.fail(fmt::format("top_k[{}]", l), "exceeds the layer's experts");
  }
  const JsonReader tasks = f.at("tasks");
  if (!tasks.value().is_array() || tasks.value().empty())
    tasks.fail("expected a non-empty list of task patterns");
  for (size_t i = 0; i < tasks.array_size(); ++i) {
    TaskPattern t = task_from_json(tasks.element(i), bank);
    if (bank.find_task(t.name) >= 0)
      tasks.element(i).fail("name", "task '" + t.name + "' appears twice");
    bank.tasks.push_back(std::move(t));
  }
  return bank;
}

PatternBank PatternBank::read(const std::string& path) {
  return from_json(parse_json_strict(read_file(path, "cannot read the pattern bank"), path, ""),
                   path);
}

void PatternBank::write(const std::string& path) const {
  write_file_atomically(path, to_json().dump(1) + "\n");
}

int64_t PatternBank::find_task(const std::string& name) const {
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (tasks[i].name == name) return static_cast<int64_t>(i);
  }
  return -1;
}

std::vector<double> normalised_concat(const std::vector<std::vector<double>>& layers) {
  std::vector<double> out;
  for (const auto& v : layers) {
    double sq = 0;
    for (double x : v) sq += x * x;
    const double scale = sq > 0 ? 1.0 / std::sqrt(sq) : 0.0;
    for (double x : v) out.push_back(x * scale);
  }
  return out;
}

std::vector<RouteScore> rank_patterns(const PatternBank& bank,
                                      const std::vector<std::vector<double>>& query,
                                      size_t layers) {
  if (layers == 0 || layers > bank.moe_layers.size() || query.size() != layers) {
    throw InternalError("", "route",
                        fmt::format("query of {} layers against {} of a bank with {}", query.size(),
                                    layers, bank.moe_layers.size()));
  }
  const std::vector<double> q = normalised_concat(query);
  double qn = 0;
  for (double x : q) qn += x * x;
  std::vector<RouteScore> out;
  for (size_t t = 0; t < bank.tasks.size(); ++t) {
    const std::vector<std::vector<double>> first(bank.tasks[t].mass.begin(),
                                                 bank.tasks[t].mass.begin() + layers);
    const std::vector<double> p = normalised_concat(first);
    if (p.size() != q.size())
      throw InternalError("", "route", "query and pattern differ in length");
    double dot = 0, pn = 0;
    for (size_t i = 0; i < p.size(); ++i) {
      dot += p[i] * q[i];
      pn += p[i] * p[i];
    }
    out.push_back({static_cast<int64_t>(t), qn > 0 && pn > 0 ? dot / std::sqrt(qn * pn) : 0.0});
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const RouteScore& a, const RouteScore& b) { return a.cosine > b.cosine; });
  return out;
}

bool write_plan_pattern_bank(const CompressionPlan& plan, const std::string& path) {
  const auto it = plan.diagnostics.find("tcess");
  if (it == plan.diagnostics.end() || !it->second.is_object() ||
      !it->second.contains("pattern_bank"))
    return false;
  write_file_atomically(path, it->second["pattern_bank"].dump(1) + "\n");
  return true;
}

}  // namespace lathe
