// `drop-experts`: removes routed experts. Decide: the kept original ids per MoE layer, from `keep`
// (the same list in every layer) or `map` (an expert_map.json, FORMATS.md, with per-layer lists).
// Apply (surgery): router rows and selection-bias entries of removed experts are sliced away, kept
// experts are renumbered in ascending original order, fused expert tensors are sliced. The model
// then computes exactly what the original computes with the removed experts' router logits at −inf.
#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/context.h"
#include "compressor/passes/expert_selection.h"

namespace lathe {
namespace {

/// Sorted, checked kept ids. Problems are ConfigError for the `keep` option, DataError for an
/// expert-map file (`from_file`).
std::vector<int64_t> checked_ids(std::vector<int64_t> ids, int64_t experts, int64_t top_k,
                                 const std::string& where, const std::string& field,
                                 bool from_file) {
  auto fail = [&](const std::string& message) {
    if (from_file) throw DataError(where, field, message);
    throw ConfigError(where, field, message);
  };
  std::sort(ids.begin(), ids.end());
  if (std::adjacent_find(ids.begin(), ids.end()) != ids.end()) fail("expert ids repeat");
  for (int64_t id : ids) {
    if (id < 0 || id >= experts) fail(fmt::format("expert id {} outside [0, {})", id, experts));
  }
  if (static_cast<int64_t>(ids.size()) < top_k) {
    fail(fmt::format("keeps {} experts but the router selects top_k = {}", ids.size(), top_k));
  }
  return ids;
}

class DropExpertsPass : public Pass {
 public:
  explicit DropExpertsPass(const PassInstance& instance) : options_(instance.options) {
    if (options_.has("keep") == options_.has("map")) {
      throw ConfigError("", "drop-experts",
                        "give exactly one of keep (ids for every layer) and map (expert_map.json)");
    }
  }

  void check(const CheckContext& ctx, std::vector<CheckProblem>&) const override {
    require_moe(ctx.spec, "drop-experts");
  }

  void decide(const DecideContext& ctx, CompressionPlan& plan) const override {
    require_moe(ctx.spec, "drop-experts");
    if (options_.has("keep")) {
      for (int64_t i = 0; i < ctx.spec.num_layers; ++i) {
        const LayerSpec& l = ctx.spec.layers[i];
        if (!l.is_moe) continue;
        plan.experts[i] = checked_ids(options_.get_int_list("keep"), l.num_experts, l.top_k, "",
                                      "drop-experts.keep", false);
        plan.decided_by["experts"] = "drop-experts";
      }
      return;
    }
    const std::string path = options_.get_string("map");
    const nlohmann::json doc =
        parse_json_strict(read_file(path, "cannot open the expert map"), path, "");
    if (!doc.is_object() || doc.value("format", "") != "lathe-expert-map") {
      throw DataError(path, "format", "expected \"lathe-expert-map\"");
    }
    if (!doc.contains("layers") || !doc["layers"].is_object())
      throw DataError(path, "layers", "expected an object");
    for (const auto& [key, ids] : doc["layers"].items()) {
      const std::string field = "layers." + key;
      int64_t layer = -1;
      try {
        size_t used = 0;
        layer = std::stoll(key, &used);
        if (used != key.size()) layer = -1;
      } catch (const std::exception&) {
      }
      if (layer < 0 || layer >= ctx.spec.num_layers)
        throw DataError(path, field, "not a decoder layer index");
      const LayerSpec& l = ctx.spec.layers[layer];
      if (!l.is_moe) throw DataError(path, field, "layer " + key + " is not an MoE layer");
      if (!ids.is_array()) throw DataError(path, field, "expected a list of expert ids");
      std::vector<int64_t> list;
      for (const auto& id : ids) {
        if (!id.is_number_integer()) throw DataError(path, field, "expected integer expert ids");
        list.push_back(id.get<int64_t>());
      }
      plan.experts[layer] = checked_ids(list, l.num_experts, l.top_k, path, field, true);
    }
    plan.decided_by["experts"] = "drop-experts";
  }

  void apply(LayerApplyContext& ctx) const override { apply_expert_surgery(ctx); }

 private:
  OptionValues options_;
};

}  // namespace

void apply_expert_surgery(LayerApplyContext& ctx) {
  // β of DiEP folded into every kept routed expert's down_proj (plan.expert_scale; exact).
  auto scale = ctx.plan.expert_scale.find(ctx.layer);
  if (scale != ctx.plan.expert_scale.end() && scale->second != 1.0) {
    for (LayerTensor& t : ctx.tensors) {
      if (t.role == TensorRole::kExpertDown || t.role == TensorRole::kExpertsDown) {
        t.value = t.value.to(at::kFloat) * scale->second;
      }
    }
  }
  auto it = ctx.plan.experts.find(ctx.layer);
  if (it == ctx.plan.experts.end()) return;
  const std::vector<int64_t>& keep = it->second;
  const at::Tensor index = at::tensor(keep, at::kLong);
  std::vector<int64_t> new_id(ctx.spec.layers[ctx.layer].num_experts, -1);
  for (size_t i = 0; i < keep.size(); ++i) new_id[keep[i]] = static_cast<int64_t>(i);
  std::vector<LayerTensor> out;
  for (LayerTensor& t : ctx.tensors) {
    switch (t.role) {
      case TensorRole::kRouter:
      case TensorRole::kRouterBias:
      case TensorRole::kRouterUp:
      case TensorRole::kRouterScale:
      case TensorRole::kRouterStock:
      case TensorRole::kExpertsGateUp:
      case TensorRole::kExpertsDown:
        t.value = t.value.index_select(0, index).contiguous();
        out.push_back(std::move(t));
        break;
      case TensorRole::kExpertGate:
      case TensorRole::kExpertUp:
      case TensorRole::kExpertDown: {
        const int64_t id = new_id.at(t.expert);
        if (id < 0) {
          TensorRecord r;
          r.name = t.name;
          r.source = t.source;
          r.format = "removed";
          r.bits = 0;
          ctx.records.push_back(r);
          break;
        }
        const std::string from = fmt::format(".experts.{}.", t.expert),
                          to = fmt::format(".experts.{}.", id);
        const size_t pos = t.name.find(from);
        if (pos == std::string::npos)
          throw InternalError(t.name, "", "expert tensor name without " + from);
        t.name.replace(pos, from.size(), to);
        t.expert = id;
        out.push_back(std::move(t));
        break;
      }
      default: out.push_back(std::move(t));
    }
  }
  ctx.tensors = std::move(out);
}

std::unique_ptr<Pass> make_drop_experts_pass(const PassInstance& instance) {
  return std::make_unique<DropExpertsPass>(instance);
}

PassInfo drop_experts_pass_info() {
  return {
      "drop-experts",
      "remove routed experts: keep a given list in every MoE layer, or per layer from an expert "
      "map",
      {
          make_option("keep", OptionType::kIntList, "",
                      "original expert ids kept in every MoE layer", 0, 1 << 20),
          make_option("map", OptionType::kString, "",
                      "expert_map.json (FORMATS.md) with the kept ids per layer; instead of keep",
                      {}, {}, PathRole::kInput),
      },
      {},
      false,
      make_drop_experts_pass};
}

}  // namespace lathe
