// The registry: every pass of compressor/passes/passes.def, each described by its own
// <id>_pass_info() beside its implementation.
#include <algorithm>

#include "compressor/passes/builtin.h"
#include "compressor/passes/pass.h"

namespace lathe {

void Pass::check(const CheckContext&, std::vector<CheckProblem>&) const {}
void Pass::decide(const DecideContext&, CompressionPlan&) const {}
ModelSpec Pass::structure_after(const ModelSpec& spec) const {
  return spec;
}
void Pass::apply(LayerApplyContext&) const {}

const std::vector<PassInfo>& pass_registry() {
  static const std::vector<PassInfo> passes = {
#define LATHE_PASS(id) id##_pass_info(),
#include "compressor/passes/passes.def"
#undef LATHE_PASS
  };
  return passes;
}

bool pass_reads_statistics(const PassInfo& info, const PassInstance& instance) {
  if (info.statistics.empty()) return false;
  return !info.reads_statistics || info.reads_statistics(instance);
}

const PassInfo* find_pass(const std::string& name) {
  const auto& all = pass_registry();
  auto it = std::find_if(all.begin(), all.end(), [&](const PassInfo& p) { return p.name == name; });
  return it == all.end() ? nullptr : &*it;
}

}  // namespace lathe
