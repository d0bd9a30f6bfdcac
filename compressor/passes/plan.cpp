#include "compressor/passes/plan.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"
#include "compressor/model/model_spec.h"

namespace lathe {

nlohmann::json CompressionPlan::to_json() const {
  nlohmann::json experts_json = nlohmann::json::object(), tensors_json = nlohmann::json::object();
  for (const auto& [layer, ids] : experts) experts_json[std::to_string(layer)] = ids;
  for (const auto& [name, t] : tensors) {
    nlohmann::json j = {
        {"method", t.method}, {"bits", t.bits}, {"group_size", t.group_size}, {"sym", t.sym}};
    if (t.method == "gptq") {
      j["act_order"] = t.act_order;
      j["mse"] = t.mse;
      j["damp"] = t.damp;
      j["act_bits"] = t.act_bits;
    }
    tensors_json[name] = j;
  }
  nlohmann::json doc = {{"format", "lathe-plan"},
                        {"version", 1},
                        {"pipeline", pipeline},
                        {"model", model},
                        {"weights_fingerprint", weights_fingerprint},
                        {"experts", experts_json},
                        {"tensors", tensors_json},
                        {"decided_by", decided_by}};
  if (!expert_scores.empty()) {
    nlohmann::json scores = nlohmann::json::object();
    for (const auto& [layer, v] : expert_scores) scores[std::to_string(layer)] = v;
    doc["expert_scores"] = scores;
  }
  if (!expert_scale.empty()) {
    nlohmann::json scale = nlohmann::json::object();
    for (const auto& [layer, v] : expert_scale) scale[std::to_string(layer)] = v;
    doc["expert_scale"] = scale;
  }
  if (!diagnostics.empty()) doc["diagnostics"] = diagnostics;
  if (smoothing) {
    doc["smoothing"] = {{"alpha", smoothing->alpha},
                        {"adaptive", smoothing->adaptive},
                        {"statistic", smoothing->statistic},
                        {"v_to_o", smoothing->v_to_o}};
  }
  return doc;
}

namespace {

const nlohmann::json& member(const nlohmann::json& obj, const char* key, const std::string& where,
                             nlohmann::json::value_t type, const char* expected) {
  if (!obj.contains(key)) throw DataError(where, key, "missing");
  const nlohmann::json& v = obj[key];
  const bool ok =
      type == nlohmann::json::value_t::number_integer ? v.is_number_integer() : v.type() == type;
  if (!ok) throw DataError(where, key, std::string("expected ") + expected);
  return v;
}

SmoothingPlan smoothing_from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object())
    throw DataError(where, "smoothing", "expected {alpha, adaptive, statistic, v_to_o}");
  SmoothingPlan p;
  for (const auto& [k, v] : j.items()) {
    if (k == "alpha" && v.is_number()) {
      p.alpha = v.get<double>();
    } else if (k == "adaptive" && v.is_boolean()) {
      p.adaptive = v.get<bool>();
    } else if (k == "statistic" && v.is_string()) {
      p.statistic = v.get<std::string>();
    } else if (k == "v_to_o" && v.is_boolean()) {
      p.v_to_o = v.get<bool>();
    } else {
      throw DataError(
          where, "smoothing." + k,
          "unknown key or wrong type (alpha: number, adaptive/v_to_o: bool, statistic: string)");
    }
  }
  if (!(p.alpha >= 0 && p.alpha <= 1)) {
    throw DataError(where, "smoothing.alpha",
                    fmt::format("expected a number in [0, 1], found {}", p.alpha));
  }
  if (p.statistic != "absmax" && p.statistic != "range") {
    throw DataError(where, "smoothing.statistic",
                    "expected \"absmax\" or \"range\", found \"" + p.statistic + "\"");
  }
  return p;
}

/// A plan key naming a decoder layer ("0", "12"); DataError(where, field) otherwise.
int64_t layer_index(const std::string& key, const std::string& where, const std::string& field) {
  if (key.empty() || key.find_first_not_of("0123456789") != std::string::npos || key.size() > 9) {
    throw DataError(where, field, "expected a decoder layer index as the key");
  }
  return std::stoll(key);
}

/// `doc[key]` as {decoder layer index: [values]} (absent: empty). DataError naming `key.<layer>`
/// for a key that is not a layer index, a value that is not a list, or an element `accept` refuses.
template <typename T, typename Accept>
std::map<int64_t, std::vector<T>> layer_lists(const nlohmann::json& doc, const std::string& key,
                                              const std::string& where, const std::string& hint,
                                              const std::string& list_of,
                                              const std::string& elements, Accept&& accept) {
  std::map<int64_t, std::vector<T>> out;
  if (!doc.contains(key)) return out;
  const auto& e = doc[key];
  if (!e.is_object()) throw DataError(where, key, "expected an object {layer: [" + hint + "]}");
  for (const auto& [layer, values] : e.items()) {
    const std::string field = key + "." + layer;
    const int64_t index = layer_index(layer, where, field);
    if (!values.is_array()) throw DataError(where, field, "expected a list of " + list_of);
    std::vector<T> list;
    for (const auto& x : values) {
      if (!accept(x)) throw DataError(where, field, "expected " + elements);
      list.push_back(x.template get<T>());
    }
    out[index] = list;
  }
  return out;
}

}  // namespace

CompressionPlan CompressionPlan::from_json(const nlohmann::json& doc, const std::string& where) {
  using vt = nlohmann::json::value_t;
  if (!doc.is_object()) throw DataError(where, "", "expected a JSON object");
  if (member(doc, "format", where, vt::string, "a string") != "lathe-plan") {
    throw DataError(where, "format", "expected \"lathe-plan\"");
  }
  const int64_t version =
      member(doc, "version", where, vt::number_integer, "an integer").get<int64_t>();
  if (version != 1)
    throw UnsupportedError(where, "version",
                           fmt::format("plan version {} (this lathe reads 1)", version));
  static const std::vector<std::string> known = {
      "format",  "version",    "pipeline",  "model",         "weights_fingerprint", "experts",
      "tensors", "decided_by", "smoothing", "expert_scores", "expert_scale",        "diagnostics"};
  for (const auto& [k, v] : doc.items()) {
    if (std::find(known.begin(), known.end(), k) == known.end())
      throw DataError(where, k, "unknown key");
  }
  CompressionPlan plan;
  plan.pipeline = doc.value("pipeline", "");
  plan.model = doc.value("model", "");
  plan.weights_fingerprint = doc.value("weights_fingerprint", "");
  plan.experts =
      layer_lists<int64_t>(doc, "experts", where, "ids", "expert ids", "integer expert ids",
                           [](const nlohmann::json& x) { return x.is_number_integer(); });
  if (doc.contains("tensors")) {
    const auto& t = doc["tensors"];
    if (!t.is_object()) throw DataError(where, "tensors", "expected an object {name: format}");
    for (const auto& [name, f] : t.items()) {
      const std::string field = "tensors." + name;
      if (!f.is_object()) throw DataError(where, field, "expected {method, bits, group_size, sym}");
      TensorPlan p;
      for (const auto& [k, v] : f.items()) {
        if (k == "method" && v.is_string()) {
          p.method = v.get<std::string>();
        } else if (k == "bits" && v.is_number_integer()) {
          p.bits = v.get<int64_t>();
        } else if (k == "group_size" && v.is_number_integer()) {
          p.group_size = v.get<int64_t>();
        } else if (k == "sym" && v.is_boolean()) {
          p.sym = v.get<bool>();
        } else if (k == "act_order" && v.is_string()) {
          p.act_order = v.get<std::string>();
        } else if (k == "mse" && v.is_boolean()) {
          p.mse = v.get<bool>();
        } else if (k == "damp" && v.is_number()) {
          p.damp = v.get<double>();
        } else if (k == "act_bits" && v.is_number_integer()) {
          p.act_bits = v.get<int64_t>();
        } else {
          throw DataError(where, field + "." + k,
                          "unknown key or wrong type (method/act_order: string, "
                          "bits/group_size/act_bits: integer, "
                          "sym/mse: bool, damp: number)");
        }
      }
      if (p.method != "rtn" && p.method != "gptq") {
        throw DataError(where, field + ".method",
                        "expected \"rtn\" or \"gptq\", found \"" + p.method + "\"");
      }
      if (p.act_order != "none" && p.act_order != "static" && p.act_order != "dynamic") {
        throw DataError(where, field + ".act_order",
                        "expected none, static or dynamic, found \"" + p.act_order + "\"");
      }
      if (!(p.damp >= 0 && p.damp <= 1))
        throw DataError(where, field + ".damp", fmt::format("expected 0..1, found {}", p.damp));
      if (p.act_bits != 0 && p.act_bits != 8) {
        throw DataError(where, field + ".act_bits",
                        fmt::format("expected 0 or 8, found {}", p.act_bits));
      }
      if (p.bits < 2 || p.bits > 8)
        throw DataError(where, field + ".bits", fmt::format("expected 2..8, found {}", p.bits));
      if (p.group_size == 0 || p.group_size < -1) {
        throw DataError(where, field + ".group_size",
                        fmt::format("expected -1 or a positive size, found {}", p.group_size));
      }
      plan.tensors[name] = p;
    }
  }
  plan.expert_scores =
      layer_lists<double>(doc, "expert_scores", where, "scores", "numbers", "numbers",
                          [](const nlohmann::json& x) { return x.is_number(); });
  if (doc.contains("expert_scale")) {
    const auto& e = doc["expert_scale"];
    if (!e.is_object())
      throw DataError(where, "expert_scale", "expected an object {layer: factor}");
    for (const auto& [layer, v] : e.items()) {
      const std::string field = "expert_scale." + layer;
      const int64_t index = layer_index(layer, where, field);
      if (!v.is_number() || !std::isfinite(v.get<double>()))
        throw DataError(where, field, "expected a finite number");
      plan.expert_scale[index] = v.get<double>();
    }
  }
  if (doc.contains("diagnostics")) {
    if (!doc["diagnostics"].is_object())
      throw DataError(where, "diagnostics", "expected an object {pass: {...}}");
    for (const auto& [k, v] : doc["diagnostics"].items()) plan.diagnostics[k] = v;
  }
  if (doc.contains("smoothing")) plan.smoothing = smoothing_from_json(doc["smoothing"], where);
  if (doc.contains("decided_by")) {
    if (!doc["decided_by"].is_object()) throw DataError(where, "decided_by", "expected an object");
    for (const auto& [k, v] : doc["decided_by"].items()) {
      if (!v.is_string()) throw DataError(where, "decided_by." + k, "expected a string");
      plan.decided_by[k] = v.get<std::string>();
    }
  }
  return plan;
}

CompressionPlan CompressionPlan::read(const std::string& path) {
  return from_json(parse_json_strict(read_file(path, "cannot open the plan"), path, ""), path);
}

void CompressionPlan::validate(const ModelSpec& spec, const std::vector<std::string>& tensor_names,
                               const std::map<std::string, std::vector<int64_t>>& shapes,
                               const std::string& where) const {
  for (const auto& [layer, ids] : experts) {
    const std::string field = "experts." + std::to_string(layer);
    if (layer < 0 || layer >= spec.num_layers)
      throw DataError(where, field, "no such decoder layer");
    const LayerSpec& l = spec.layers[layer];
    if (!l.is_moe) throw DataError(where, field, "not an MoE layer");
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= l.num_experts) {
        throw DataError(where, field,
                        fmt::format("expert id {} outside [0, {})", ids[i], l.num_experts));
      }
      if (i > 0 && ids[i] <= ids[i - 1])
        throw DataError(where, field, "expert ids must be unique and ascending");
    }
    if (static_cast<int64_t>(ids.size()) < l.top_k) {
      throw DataError(where, field,
                      fmt::format("keeps {} experts but top_k is {}", ids.size(), l.top_k));
    }
  }
  for (const auto& [layer, scores] : expert_scores) {
    const std::string field = "expert_scores." + std::to_string(layer);
    if (layer < 0 || layer >= spec.num_layers || !spec.layers[layer].is_moe)
      throw DataError(where, field, "not an MoE layer");
    if (static_cast<int64_t>(scores.size()) != spec.layers[layer].num_experts) {
      throw DataError(
          where, field,
          fmt::format("{} scores for {} experts", scores.size(), spec.layers[layer].num_experts));
    }
  }
  for (const auto& [layer, factor] : expert_scale) {
    const std::string field = "expert_scale." + std::to_string(layer);
    if (layer < 0 || layer >= spec.num_layers || !spec.layers[layer].is_moe)
      throw DataError(where, field, "not an MoE layer");
    if (!std::isfinite(factor)) throw DataError(where, field, "expected a finite number");
  }
  for (const auto& [name, p] : tensors) {
    const std::string field = "tensors." + name;
    if (std::find(tensor_names.begin(), tensor_names.end(), name) == tensor_names.end()) {
      throw DataError(where, field, "the model has no such quantizable tensor");
    }
    const auto& shape = shapes.at(name);
    const int64_t in = shape.back();
    if (p.group_size > 0 && in % p.group_size != 0) {
      throw DataError(where, field + ".group_size",
                      fmt::format("{} does not divide the input width {}", p.group_size, in));
    }
  }
}

}  // namespace lathe
