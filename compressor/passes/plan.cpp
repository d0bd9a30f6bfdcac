#include "compressor/passes/plan.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/json_reader.h"
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
  if (!sparsity.empty()) {
    nlohmann::json sparse = nlohmann::json::object();
    for (const auto& [name, t] : sparsity) {
      nlohmann::json j = {{"method", t.method}, {"pattern", t.pattern()}, {"ratio", t.ratio}};
      if (t.method == "sparsegpt") {
        j["quantize"] = t.quantize;
        j["damp"] = t.damp;
      }
      sparse[name] = j;
    }
    doc["sparsity"] = sparse;
  }
  if (!carve.empty()) {
    nlohmann::json c = nlohmann::json::object();
    for (const auto& [layer, p] : carve) {
      c[std::to_string(layer)] = {{"experts", p.experts},
                                  {"shared", p.shared},
                                  {"active", p.active},
                                  {"carve_samples", p.carve_samples},
                                  {"atopk", p.atopk},
                                  {"finetune", p.finetune},
                                  {"balance_gamma", p.balance_gamma},
                                  {"finetune_steps", p.finetune_steps},
                                  {"finetune_lr", p.finetune_lr}};
    }
    doc["carve"] = c;
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

SmoothingPlan smoothing_from_json(const JsonReader& j) {
  j.check_keys({"alpha", "adaptive", "statistic", "v_to_o"});
  SmoothingPlan p;
  p.alpha = j.number_or("alpha", p.alpha);
  p.adaptive = j.bool_or("adaptive", p.adaptive);
  p.statistic = j.string_or("statistic", p.statistic);
  p.v_to_o = j.bool_or("v_to_o", p.v_to_o);
  if (!(p.alpha >= 0 && p.alpha <= 1))
    j.fail("alpha", fmt::format("expected a number in [0, 1], found {}", p.alpha));
  if (p.statistic != "absmax" && p.statistic != "range")
    j.fail("statistic", "expected \"absmax\" or \"range\", found \"" + p.statistic + "\"");
  return p;
}

CarvePlan carve_plan_from_json(const JsonReader& f) {
  f.check_keys({"experts", "shared", "active", "carve_samples", "atopk", "finetune",
                "balance_gamma", "finetune_steps", "finetune_lr"});
  CarvePlan p;
  p.experts = f.int_at("experts", 2);
  p.shared = f.int_or("shared", p.shared);
  p.active = f.int_or("active", p.active);
  p.carve_samples = f.int_or("carve_samples", p.carve_samples);
  p.atopk = f.int_or("atopk", p.atopk);
  p.finetune = f.string_or("finetune", p.finetune);
  p.balance_gamma = f.number_or("balance_gamma", p.balance_gamma);
  p.finetune_steps = f.int_or("finetune_steps", p.finetune_steps);
  p.finetune_lr = f.number_or("finetune_lr", p.finetune_lr);
  if (p.shared < 0 || p.shared >= p.experts)
    f.fail("shared",
           fmt::format("expected 0 ≤ shared < experts = {}, found {}", p.experts, p.shared));
  if (p.active < 1 || p.active + p.shared > p.experts)
    f.fail("active", fmt::format("expected 1 ≤ active ≤ experts − shared = {}, found {}",
                                 p.experts - p.shared, p.active));
  if (p.carve_samples < 1) f.fail("carve_samples", "expected at least 1");
  if (p.atopk < 1) f.fail("atopk", "expected at least 1");
  if (p.finetune != "none" && p.finetune != "router")
    f.fail("finetune", "expected \"none\" or \"router\", found \"" + p.finetune + "\"");
  if (!(p.balance_gamma >= 0 && std::isfinite(p.balance_gamma)))
    f.fail("balance_gamma", "expected a finite number ≥ 0");
  if (p.finetune_steps < 0) f.fail("finetune_steps", "expected at least 0");
  if (!(p.finetune_lr > 0 && std::isfinite(p.finetune_lr)))
    f.fail("finetune_lr", "expected a positive number");
  return p;
}

TensorPlan tensor_plan_from_json(const JsonReader& f) {
  f.check_keys({"method", "bits", "group_size", "sym", "act_order", "mse", "damp", "act_bits"});
  TensorPlan p;
  p.method = f.string_or("method", p.method);
  p.bits = f.int_or("bits", p.bits);
  p.group_size = f.int_or("group_size", p.group_size);
  p.sym = f.bool_or("sym", p.sym);
  p.act_order = f.string_or("act_order", p.act_order);
  p.mse = f.bool_or("mse", p.mse);
  p.damp = f.number_or("damp", p.damp);
  p.act_bits = f.int_or("act_bits", p.act_bits);
  if (p.method != "rtn" && p.method != "gptq")
    f.fail("method", "expected \"rtn\" or \"gptq\", found \"" + p.method + "\"");
  if (p.act_order != "none" && p.act_order != "static" && p.act_order != "dynamic")
    f.fail("act_order", "expected none, static or dynamic, found \"" + p.act_order + "\"");
  if (!(p.damp >= 0 && p.damp <= 1)) f.fail("damp", fmt::format("expected 0..1, found {}", p.damp));
  if (p.act_bits != 0 && p.act_bits != 8)
    f.fail("act_bits", fmt::format("expected 0 or 8, found {}", p.act_bits));
  if (p.bits < 2 || p.bits > 8) f.fail("bits", fmt::format("expected 2..8, found {}", p.bits));
  if (p.group_size == 0 || p.group_size < -1)
    f.fail("group_size", fmt::format("expected -1 or a positive size, found {}", p.group_size));
  return p;
}

SparsityPlan sparsity_plan_from_json(const JsonReader& f) {
  f.check_keys({"method", "pattern", "ratio", "quantize", "damp"});
  SparsityPlan p;
  p.method = f.string_at("method");
  if (p.method != "magnitude" && p.method != "wanda" && p.method != "sparsegpt")
    f.fail("method",
           "expected \"magnitude\", \"wanda\" or \"sparsegpt\", found \"" + p.method + "\"");
  const std::string pattern = f.string_or("pattern", "unstructured");
  const auto nm = parse_sparsity_pattern(pattern);
  if (!nm)
    f.fail("pattern", "expected \"unstructured\" or N:M with 0 < N < M, found \"" + pattern + "\"");
  std::tie(p.n, p.m) = *nm;
  if (p.m > 0) {
    p.ratio = static_cast<double>(p.n) / static_cast<double>(p.m);
  } else {
    p.ratio = f.number_at("ratio");
    if (!(p.ratio > 0 && p.ratio < 1))
      f.fail("ratio", fmt::format("expected a fraction in (0, 1), found {}", p.ratio));
  }
  p.quantize = f.bool_or("quantize", false);
  p.damp = f.number_or("damp", p.damp);
  if (p.method != "sparsegpt" && p.quantize)
    f.fail("quantize", "only sparsegpt quantizes in its own sweep");
  if (!(p.damp >= 0 && p.damp <= 1)) f.fail("damp", fmt::format("expected 0..1, found {}", p.damp));
  return p;
}

/// The object under `key` as {decoder layer index ("0", "12"): value}, each value read by `read`
/// (absent: empty). Fails naming `key.<layer>` for a key that is not a layer index.
template <typename T, typename Read>
std::map<int64_t, T> by_layer(const JsonReader& doc, const char* key, const char* hint,
                              Read&& read) {
  std::map<int64_t, T> out;
  const auto e = doc.find(key);
  if (!e) return out;
  if (!e->value().is_object()) e->fail(std::string("expected an object {layer: ") + hint + "}");
  for (const auto& item : e->value().items()) {
    const std::string& layer = item.key();
    const JsonReader value = e->at(layer.c_str());
    if (layer.empty() || layer.find_first_not_of("0123456789") != std::string::npos ||
        layer.size() > 9)
      value.fail("expected a decoder layer index as the key");
    out[std::stoll(layer)] = read(value);
  }
  return out;
}

}  // namespace

CompressionPlan CompressionPlan::from_json(const nlohmann::json& doc, const std::string& where) {
  const JsonReader f(doc, where);
  f.check_keys({"format", "version", "pipeline", "model", "weights_fingerprint", "experts",
                "tensors", "decided_by", "smoothing", "expert_scores", "expert_scale",
                "diagnostics", "sparsity", "carve"});
  if (f.string_at("format") != "lathe-plan") f.fail("format", "expected \"lathe-plan\"");
  const int64_t version = f.int_at("version");
  if (version != 1)
    f.at("version").unsupported(fmt::format("plan version {} (this lathe reads 1)", version));
  CompressionPlan plan;
  plan.pipeline = f.string_or("pipeline", "");
  plan.model = f.string_or("model", "");
  plan.weights_fingerprint = f.string_or("weights_fingerprint", "");
  plan.experts = by_layer<std::vector<int64_t>>(
      f, "experts", "[ids]", [](const JsonReader& v) { return v.as_int_list(); });
  if (const auto tensors = f.object_at("tensors")) {
    for (const auto& item : tensors->value().items())
      plan.tensors[item.key()] = tensor_plan_from_json(tensors->at(item.key().c_str()));
  }
  if (const auto sparse = f.object_at("sparsity")) {
    for (const auto& item : sparse->value().items())
      plan.sparsity[item.key()] = sparsity_plan_from_json(sparse->at(item.key().c_str()));
  }
  plan.expert_scores =
      by_layer<std::vector<double>>(f, "expert_scores", "[scores]", [](const JsonReader& v) {
        std::vector<double> out(v.array_size());
        for (size_t i = 0; i < out.size(); ++i) out[i] = v.element(i).as_number();
        return out;
      });
  plan.expert_scale = by_layer<double>(f, "expert_scale", "factor",
                                       [](const JsonReader& v) { return v.as_number(); });
  plan.carve = by_layer<CarvePlan>(f, "carve", "{experts, shared, active, …}",
                                   [](const JsonReader& v) { return carve_plan_from_json(v); });
  if (const auto diagnostics = f.object_at("diagnostics"))
    for (const auto& [k, v] : diagnostics->value().items()) plan.diagnostics[k] = v;
  if (const auto smoothing = f.object_at("smoothing"))
    plan.smoothing = smoothing_from_json(*smoothing);
  if (const auto decided_by = f.object_at("decided_by"))
    for (const auto& item : decided_by->value().items())
      plan.decided_by[item.key()] = decided_by->at(item.key().c_str()).as_string();
  return plan;
}

std::string SparsityPlan::pattern() const {
  return m > 0 ? fmt::format("{}:{}", n, m) : "unstructured";
}

std::optional<std::pair<int64_t, int64_t>> parse_nm_pattern(const std::string& text) {
  const auto colon = text.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size() || text.size() > 9)
    return std::nullopt;
  const std::string a = text.substr(0, colon), b = text.substr(colon + 1);
  if (a.find_first_not_of("0123456789") != std::string::npos ||
      b.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  const int64_t n = std::stoll(a), m = std::stoll(b);
  if (n <= 0 || m <= n) return std::nullopt;
  return std::make_pair(n, m);
}

std::optional<std::pair<int64_t, int64_t>> parse_sparsity_pattern(const std::string& text) {
  if (text == "unstructured") return std::make_pair(int64_t{0}, int64_t{0});
  return parse_nm_pattern(text);
}

std::vector<LayerSpec> carved_layers(const ModelSpec& spec, const CompressionPlan& plan) {
  std::vector<LayerSpec> layers = spec.layers;
  for (const auto& [i, c] : plan.carve) {
    LayerSpec& l = layers.at(static_cast<size_t>(i));
    const int64_t m = l.dense_intermediate / c.experts;
    l.is_moe = true;
    l.num_experts = c.experts - c.shared;
    l.top_k = c.active;
    l.expert_intermediate = m;
    l.num_shared_experts = c.shared;
    l.shared_intermediate = c.shared * m;
    l.dense_intermediate = 0;
  }
  return layers;
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
  for (const auto& [layer, p] : carve) {
    const std::string field = "carve." + std::to_string(layer);
    if (layer < 0 || layer >= spec.num_layers)
      throw DataError(where, field, "no such decoder layer");
    const LayerSpec& l = spec.layers[layer];
    if (l.is_moe) throw DataError(where, field, "an MoE layer: cmoe carves dense FFNs only");
    if (l.dense_intermediate % p.experts != 0) {
      throw DataError(where, field + ".experts",
                      fmt::format("{} experts do not divide the FFN width {}", p.experts,
                                  l.dense_intermediate));
    }
  }
  for (const auto& [name, p] : sparsity) {
    const std::string field = "sparsity." + name;
    if (std::find(tensor_names.begin(), tensor_names.end(), name) == tensor_names.end())
      throw DataError(where, field, "the model has no such prunable tensor");
    const int64_t in = shapes.at(name).back();
    if (p.m > 0 && in % p.m != 0) {
      throw DataError(where, field + ".pattern",
                      fmt::format("{} does not divide the input width {}", p.m, in));
    }
    if (p.quantize) {
      auto t = tensors.find(name);
      if (t == tensors.end() || t->second.method != "gptq")
        throw DataError(where, field + ".quantize",
                        "quantize needs a tensors entry with method \"gptq\" for the same tensor");
      if (t->second.act_order != "none")
        throw DataError(where, "tensors." + name + ".act_order",
                        "sparsegpt quantizes in the natural column order: expected \"none\"");
    }
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
