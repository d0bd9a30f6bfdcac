#include "compressor/passes/pattern_bank.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"
#include "compressor/passes/plan.h"

namespace lathe {
namespace {

constexpr const char* kFormat = "lathe-pattern-bank";
constexpr int64_t kVersion = 1;

/// Strict access to one object of the bank: every error is a DataError naming file and field.
class Fields {
 public:
  Fields(const nlohmann::json& object, std::string where, std::string path,
         const std::vector<std::string>& known)
      : object_(object), where_(std::move(where)), path_(std::move(path)) {
    if (!object_.is_object()) throw error("", "expected an object");
    for (const auto& [key, value] : object_.items()) {
      if (std::find(known.begin(), known.end(), key) == known.end())
        throw error(key, "unknown key");
    }
  }

  std::string field(const std::string& key) const {
    return path_.empty() ? key : key.empty() ? path_ : path_ + "." + key;
  }
  DataError error(const std::string& key, const std::string& message) const {
    return DataError(where_, field(key), message);
  }
  bool has(const std::string& key) const { return object_.contains(key); }

  const nlohmann::json& at(const std::string& key) const {
    if (!object_.contains(key)) throw error(key, "missing");
    return object_.at(key);
  }
  std::string string(const std::string& key) const {
    const auto& v = at(key);
    if (!v.is_string()) throw error(key, "expected a string");
    return v.get<std::string>();
  }
  int64_t integer(const std::string& key, int64_t min) const {
    const auto& v = at(key);
    if (!v.is_number_integer() || v.get<int64_t>() < min)
      throw error(key, fmt::format("expected an integer ≥ {}", min));
    return v.get<int64_t>();
  }
  double number(const std::string& key) const {
    const auto& v = at(key);
    if (!v.is_number() || !std::isfinite(v.get<double>()))
      throw error(key, "expected a finite number");
    return v.get<double>();
  }
  std::vector<int64_t> integers(const std::string& key, size_t length, int64_t min) const {
    return int_list(at(key), field(key), length, min);
  }

  /// An integer list of exactly `length` entries (any length when length == npos), each ≥ min.
  std::vector<int64_t> int_list(const nlohmann::json& v, const std::string& f, size_t length,
                                int64_t min) const {
    if (!v.is_array()) throw DataError(where_, f, "expected a list of integers");
    if (length != std::string::npos && v.size() != length) {
      throw DataError(where_, f, fmt::format("expected {} entries, found {}", length, v.size()));
    }
    std::vector<int64_t> out;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_number_integer() || v[i].get<int64_t>() < min) {
        throw DataError(where_, fmt::format("{}[{}]", f, i),
                        fmt::format("expected an integer ≥ {}", min));
      }
      out.push_back(v[i].get<int64_t>());
    }
    return out;
  }

  /// [L][E_l] of finite numbers ≥ min_value.
  std::vector<std::vector<double>> matrix(const std::string& key,
                                          const std::vector<int64_t>& widths,
                                          double min_value) const {
    const auto& v = at(key);
    const std::string f = field(key);
    if (!v.is_array() || v.size() != widths.size()) {
      throw DataError(where_, f,
                      fmt::format("expected a list of {} per-layer vectors", widths.size()));
    }
    std::vector<std::vector<double>> out;
    for (size_t l = 0; l < v.size(); ++l) {
      const std::string fl = fmt::format("{}[{}]", f, l);
      if (!v[l].is_array() || static_cast<int64_t>(v[l].size()) != widths[l]) {
        throw DataError(
            where_, fl,
            fmt::format("expected {} numbers (the layer's experts), found {}", widths[l],
                        v[l].is_array() ? std::to_string(v[l].size()) : "no list"));
      }
      std::vector<double> row;
      for (size_t e = 0; e < v[l].size(); ++e) {
        const auto& x = v[l][e];
        if (!x.is_number() || !std::isfinite(x.get<double>()) || x.get<double>() < min_value) {
          throw DataError(where_, fmt::format("{}[{}]", fl, e),
                          std::isinf(min_value)
                              ? "expected a finite number"
                              : fmt::format("expected a finite number ≥ {}", min_value));
        }
        row.push_back(x.get<double>());
      }
      out.push_back(std::move(row));
    }
    return out;
  }

 private:
  const nlohmann::json& object_;
  std::string where_, path_;
};

nlohmann::json fp32_matrix(const std::vector<std::vector<double>>& m) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& row : m) {
    nlohmann::json r = nlohmann::json::array();
    for (double x : row) r.push_back(static_cast<float>(x));
    out.push_back(r);
  }
  return out;
}

TaskPattern task_from_json(const nlohmann::json& doc, const std::string& where,
                           const std::string& path, const PatternBank& bank) {
  const Fields f(
      doc, where, path,
      {"name", "score", "r", "tokens", "calibration_fingerprint", "mass", "scores", "kept"});
  TaskPattern t;
  t.name = f.string("name");
  if (t.name.empty()) throw f.error("name", "empty task name");
  t.score = f.string("score");
  if (t.score != "mass" && t.score != "frequency" && t.score != "top1-logit") {
    throw f.error("score", fmt::format("unknown score '{}'; expected mass, frequency or top1-logit",
                                       t.score));
  }
  t.r = f.number("r");
  if (t.r < 0 || t.r > 1) throw f.error("r", "expected a threshold in [0, 1]");
  t.tokens = f.integer("tokens", 1);
  t.calibration_fingerprint = f.string("calibration_fingerprint");
  t.mass = f.matrix("mass", bank.num_experts, 0.0);
  if (t.score == "mass") {
    if (f.has("scores"))
      throw f.error("scores", "present for score mass (the mass vectors are the scores)");
  } else {
    t.scores = f.matrix("scores", bank.num_experts, -INFINITY);
  }
  const auto& kept = f.at("kept");
  if (!kept.is_array() || kept.size() != bank.moe_layers.size()) {
    throw f.error("kept",
                  fmt::format("expected a list of {} per-layer id lists", bank.moe_layers.size()));
  }
  for (size_t l = 0; l < kept.size(); ++l) {
    const std::string fl = fmt::format("{}[{}]", f.field("kept"), l);
    std::vector<int64_t> ids = f.int_list(kept[l], fl, std::string::npos, 0);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] >= bank.num_experts[l])
        throw DataError(where, fmt::format("{}[{}]", fl, i),
                        fmt::format("expert {} of {}", ids[i], bank.num_experts[l]));
      if (i > 0 && ids[i] <= ids[i - 1])
        throw DataError(where, fl, "expert ids must be unique and ascending");
    }
    if (static_cast<int64_t>(ids.size()) < bank.top_k[l]) {
      throw DataError(where, fl,
                      fmt::format("keeps {} experts but the router selects top_k = {}", ids.size(),
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
  const Fields f(doc, where, "", {"format", "version", "model", "tasks"});
  if (f.string("format") != kFormat) {
    throw f.error("format", fmt::format("'{}' is not a pattern bank (expected \"{}\")",
                                        f.string("format"), kFormat));
  }
  const auto& version = f.at("version");
  if (!version.is_number_integer() || version.get<int64_t>() != kVersion) {
    throw f.error("version", fmt::format("pattern bank version {} (this lathe reads {})",
                                         version.dump(), kVersion));
  }
  PatternBank bank;
  const Fields m(f.at("model"), where, "model",
                 {"weights_fingerprint", "moe_layers", "num_experts", "top_k"});
  bank.weights_fingerprint = m.string("weights_fingerprint");
  bank.moe_layers = m.integers("moe_layers", std::string::npos, 0);
  if (bank.moe_layers.empty()) throw m.error("moe_layers", "no MoE layer");
  for (size_t i = 1; i < bank.moe_layers.size(); ++i) {
    if (bank.moe_layers[i] <= bank.moe_layers[i - 1])
      throw m.error("moe_layers", "layer ids must be unique and ascending");
  }
  bank.num_experts = m.integers("num_experts", bank.moe_layers.size(), 1);
  bank.top_k = m.integers("top_k", bank.moe_layers.size(), 1);
  for (size_t l = 0; l < bank.top_k.size(); ++l) {
    if (bank.top_k[l] > bank.num_experts[l])
      throw m.error(fmt::format("top_k[{}]", l), "exceeds the layer's experts");
  }
  const auto& tasks = f.at("tasks");
  if (!tasks.is_array() || tasks.empty())
    throw f.error("tasks", "expected a non-empty list of task patterns");
  for (size_t i = 0; i < tasks.size(); ++i) {
    TaskPattern t = task_from_json(tasks[i], where, fmt::format("tasks[{}]", i), bank);
    if (bank.find_task(t.name) >= 0)
      throw DataError(where, fmt::format("tasks[{}].name", i),
                      "task '" + t.name + "' appears twice");
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
