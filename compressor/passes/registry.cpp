// The one list of every pass (issue 5: "One registry file lists all passes"). Adding a pass is adding
// an entry here plus its source file.
#include <algorithm>
#include <optional>
#include <utility>

#include "compressor/passes/builtin.h"
#include "compressor/passes/pass.h"

namespace lathe {

void Pass::decide(const DecideContext&, CompressionPlan&) const {}
void Pass::apply(LayerApplyContext&) const {}

namespace {

/// One option's spec; bounds apply to numbers and list elements.
OptionSpec option(std::string name, OptionType type, std::string default_value, std::string help,
                  std::optional<double> min = {}, std::optional<double> max = {}, bool is_path = false) {
  OptionSpec o;
  o.name = std::move(name);
  o.type = type;
  o.default_value = std::move(default_value);
  o.help = std::move(help);
  o.min = min;
  o.max = max;
  o.is_path = is_path;
  return o;
}

}  // namespace

const std::vector<PassInfo>& pass_registry() {
  static const std::vector<PassInfo> passes = [] {
    std::vector<PassInfo> p;
    p.push_back({"rtn",
                 "round-to-nearest weight quantization of every decoder linear (no calibration data)",
                 {
                     option("bits", OptionType::kInt, "4", "bits per weight", 2, 8),
                     option("group-size", OptionType::kInt, "128",
                            "columns sharing one scale; -1 = a whole row (must divide the input width)", -1, 1 << 20),
                     option("sym", OptionType::kBool, "true", "symmetric (zero point 2^(bits-1)) or asymmetric"),
                     option("skip", OptionType::kBool, "false", "leave the tensor unquantized (for overrides)"),
                 },
                 {},
                 true,
                 make_rtn_pass});
    p.push_back({"drop-experts",
                 "remove routed experts: keep a given list in every MoE layer, or per layer from an expert map",
                 {
                     option("keep", OptionType::kIntList, "", "original expert ids kept in every MoE layer", 0, 1 << 20),
                     option("map", OptionType::kString, "",
                            "expert_map.json (FORMATS.md) with the kept ids per layer; instead of keep", {}, {},
                            /*is_path=*/true),
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
