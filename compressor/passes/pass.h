// The pass framework (DESIGN.md "Core types": Pass, CompressionPlan; issue 5): a pass has a stable
// name, typed options (options.h), the statistics it needs, and up to two hooks — decide
// (whole-model statistics → plan fragment) and apply (one layer at a time, streaming). One registry
// lists every pass (registry.cpp); `lathe passes` prints it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "compressor/passes/options.h"

namespace lathe {

class CompressionPlan;
struct DecideContext;
struct ModelSpec;
struct ExpectedTensor;
struct LayerApplyContext;

class Pass;
struct PassInstance;

/// What the registry knows about a pass before it is instantiated.
struct PassInfo {
  std::string name;                     ///< stable, kebab-case: "rtn", "drop-experts", "gptq"
  std::string summary;                  ///< one line
  std::vector<OptionSpec> options;      ///< in canonical order
  std::vector<std::string> statistics;  ///< statistic kinds it reads from the store (collectors.h)
  bool per_tensor_overrides = false;    ///< accepts `overrides: [{match: REGEX, <option>: v}]`
  std::function<std::unique_ptr<Pass>(const PassInstance&)> make;
  /// Whether a configured instance reads `statistics` (its options may make them unnecessary, e.g.
  /// a uniform sparsity allocation). Unset: whenever `statistics` is not empty.
  std::function<bool(const PassInstance&)> reads_statistics = nullptr;
  /// The pass cannot run without calibration data streamed through apply (cmoe): a recipe
  /// without a calibration section is refused.
  bool needs_calibration = false;
};

/// Whether `instance` of `info` reads calibration statistics (PassInfo::reads_statistics).
bool pass_reads_statistics(const PassInfo& info, const PassInstance& instance);

/// A per-tensor override of a pass's options: the first `match` (ECMAScript regex, full match on
/// the checkpoint tensor name without ".weight") that matches wins; `options` replace the pass's.
struct PassOverride {
  std::string match;
  OptionValues options;  ///< only the keys given in the override
};

/// One configured pass in a pipeline.
struct PassInstance {
  std::string name;
  OptionValues options;
  std::vector<PassOverride> overrides;
};

/// What Pass::check sees: the model as config.json and the safetensors headers describe it.
struct CheckContext {
  const ModelSpec& spec;
  const std::vector<ExpectedTensor>& tensors;  ///< every tensor of the checkpoint, model order
};

/// One mistake a check found: the option it is about ("gptq.group-size",
/// "gptq.overrides[0].match"; the pass name when no one option is at fault) and what is wrong.
struct CheckProblem {
  std::string field;
  std::string message;
};

class Pass {
 public:
  virtual ~Pass() = default;
  /// Checks the options against the model before anything runs or is written (`lathe run` and
  /// `lathe plan` call it ahead of every stage: preflight.h), adding every mistake it finds
  /// to `problems`; the recipe check reports them all at once, each at the recipe position of its
  /// option. A check may instead throw a lathe Error: that counts as one problem. Default: none.
  virtual void check(const CheckContext& ctx, std::vector<CheckProblem>& problems) const;
  /// Decide stage: reads statistics, writes its decisions into `plan`. Default: nothing to decide.
  virtual void decide(const DecideContext& ctx, CompressionPlan& plan) const;
  /// Apply stage: transforms one materialised layer as the plan says. Default: nothing.
  virtual void apply(LayerApplyContext& ctx) const;
  /// True when apply needs the layer's calibration inputs (GPTQ); the runner then streams
  /// activations.
  virtual bool needs_activations() const { return false; }
  /// True when decide runs the model itself on calibration data (naee, diep): run_decide then opens
  /// the model and builds the calibration set for it (DecideContext::model).
  virtual bool decide_needs_model() const { return false; }
  /// True when apply changes the layers' structure beyond expert counts (cmoe turns dense FFNs
  /// into MoE blocks): the passes after it run on its output, as a second segment of the run
  /// (docs/recipes.md "Segments"), and are checked against structure_after.
  virtual bool changes_structure() const { return false; }
  /// The model's spec once this pass has run (changes_structure passes). Default: `spec`.
  virtual ModelSpec structure_after(const ModelSpec& spec) const;
};

/// Every pass, in the order `lathe passes` prints them.
const std::vector<PassInfo>& pass_registry();

/// The pass named `name`, or nullptr.
const PassInfo* find_pass(const std::string& name);

}  // namespace lathe
