// `lathe run` and `lathe plan` (DESIGN.md data flow): a recipe through calibrate → decide → apply →
// evaluate → report, into an output directory that appears when complete (docs/output.md).
#pragma once

#include <string>
#include <vector>

#include "compressor/passes/plan.h"
#include "compressor/pipeline/golden.h"
#include "compressor/pipeline/recipe.h"

namespace lathe {

struct RunOptions {
  bool force = false;  ///< replace an existing finished output directory
  bool fresh =
      false;  ///< discard a partial run (and statistics) of other inputs instead of refusing
  bool dry_run =
      false;  ///< print the plan (what would be cut and quantized, sizes) and write nothing
  int64_t micro_batch = 8;
  GoldenOptions golden;  ///< golden vectors into verify/ (lathe verify)
  /// The model eval compares the output against when it is not the recipe's (the second segment
  /// of a run whose first segment changed the structure: the original model). Empty: recipe.model.
  std::string reference_model;
};

struct RunResult {
  bool gate_passed = true;  ///< false: the recipe's gate found a regression (exit 1)
  std::vector<std::string> gate_failures;
  std::string out_dir;
};

/// Runs `recipe` (checked by preflight_recipe, preflight.h) end to end. Prints the canonical
/// pipeline string first. A kill at any point and the same command again resume (statistics reused,
/// applied layers kept); a changed recipe is refused (DataError naming what changed) unless
/// options.fresh.
/// A recipe whose passes continue after one that changes the model's structure (cmoe) runs in two
/// segments (docs/recipes.md "Segments"): the passes up to it into `<output>.segment1` (kept until
/// the run ends, so a killed run resumes there), then the rest on that model into `output`, whose
/// eval compares against the original model; the first segment's plan and manifest are kept in
/// `<output>/segments/1/`.
RunResult run_recipe(const Recipe& recipe, const RunOptions& options);

/// Observe + decide only (`recipe` checked by preflight_recipe): the plan `lathe apply` executes.
/// Statistics go to `stats_path` (reused when current); empty `stats_path` when no pass needs
/// statistics.
CompressionPlan plan_recipe(const Recipe& recipe, const std::string& stats_path,
                            const RunOptions& options);

/// What a plan would do to the model, for --dry-run: experts removed, tensors quantized, bytes
/// before and (estimated, packed) after.
std::string describe_plan(const std::string& model_dir, const CompressionPlan& plan);

}  // namespace lathe
