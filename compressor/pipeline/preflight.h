// The recipe check that runs before anything is computed or written (issue 26): everything a
// recipe refers to is checked at once, so a user fixes every mistake in one go instead of meeting
// them one run at a time. Torch-free.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "compressor/passes/pass.h"
#include "compressor/pipeline/recipe.h"

namespace lathe {

/// A problem Pass::check found with pass number `pass` of a pipeline.
struct PassProblem {
  size_t pass;
  CheckProblem problem;
};

/// Instantiates every pass and runs its check against the model in `model_dir` (config.json and
/// the safetensors headers only): every problem, in pass order. A lathe Error thrown while a pass
/// is made or checked counts as one problem of that pass. Errors reading the model propagate.
std::vector<PassProblem> check_passes(const std::string& model_dir,
                                      const std::vector<PassInstance>& passes);

/// For commands without a recipe (`lathe apply`, `lathe calibrate`): checks the model path (a
/// directory with config.json, or a .gguf file) and each input file, given as (option, path), and
/// throws one ConfigError listing every problem ("--data: no such file: x.txt"), before anything
/// runs.
void require_command_inputs(const std::string& model,
                            const std::vector<std::pair<std::string, std::string>>& files);

/// Turns a recipe's model path into a model directory (importing a .gguf file); may throw.
using ModelResolver = std::function<std::string(const std::string&)>;

/// Checks `recipe` against what it refers to: the model (a directory holding config.json, or a
/// .gguf file that `resolve_model` imports; recipe.model becomes its result), every input file
/// (calibration sets, eval text and task files, pass options that name files to read), and each
/// pass's options against the model (check_passes: group sizes that do not divide a width, bits a
/// format cannot pack, overrides that match no tensor, expert counts, ...). Every problem is
/// reported at once at the recipe position of the value at fault (recipe.h's RecipeProblems):
/// throws ConfigError "invalid recipe (N errors)". Reads headers only; writes nothing.
void preflight_recipe(Recipe& recipe, const ModelResolver& resolve_model = {});

}  // namespace lathe
