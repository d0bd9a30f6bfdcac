// The one list of every pass (issue 5: "One registry file lists all passes"). Adding a pass is adding
// an entry here plus its source file.
#include <algorithm>

#include "compressor/passes/builtin.h"
#include "compressor/passes/pass.h"

namespace lathe {

void Pass::decide(const DecideContext&, CompressionPlan&) const {}
void Pass::apply(LayerApplyContext&) const {}

const std::vector<PassInfo>& pass_registry() {
  static const std::vector<PassInfo> passes = [] {
    std::vector<PassInfo> p;
    p.push_back({"rtn",
                 "round-to-nearest weight quantization of every decoder linear (no calibration data)",
                 {
                     {"bits", OptionType::kInt, "4", "bits per weight", {}, 2, 8},
                     {"group-size", OptionType::kInt, "128",
                      "columns sharing one scale; -1 = a whole row (must divide the input width)", {}, -1, 1 << 20},
                     {"sym", OptionType::kBool, "true", "symmetric (zero point 2^(bits-1)) or asymmetric"},
                     {"skip", OptionType::kBool, "false", "leave the tensor unquantized (for overrides)"},
                 },
                 {},
                 true,
                 make_rtn_pass});
    p.push_back({"drop-experts",
                 "remove routed experts: keep a given list in every MoE layer, or per layer from an expert map",
                 {
                     {"keep", OptionType::kIntList, "", "original expert ids kept in every MoE layer", {}, 0, 1 << 20},
                     {"map", OptionType::kString, "",
                      "expert_map.json (FORMATS.md) with the kept ids per layer; instead of keep", {}, {}, {}, false,
                      /*is_path=*/true},
                 },
                 {},
                 false,
                 make_drop_experts_pass});
    return p;
  }();
  return passes;
}

const PassInfo* find_pass(const std::string& name) {
  const auto& all = pass_registry();
  auto it = std::find_if(all.begin(), all.end(), [&](const PassInfo& p) { return p.name == name; });
  return it == all.end() ? nullptr : &*it;
}

}  // namespace lathe
