// Recipes (DESIGN.md "A recipe, as a user writes it"; docs/recipes.md is the user-facing schema):
// a YAML file → a validated Recipe whose compression stages are a Pipeline (pipeline_string.h).
// Validation reads the whole file before anything runs and reports every mistake at once, each as
// `file:line:column: field: message`. Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compressor/pipeline/pipeline_string.h"

namespace lathe {

/// Held-out evaluation (the `eval` section).
struct EvalSpec {
  std::vector<std::string> text;   ///< perplexity files (resolved paths)
  std::vector<std::string> tasks;  ///< task files, JSONL (resolved paths)
  int64_t seq_len = 512;           ///< tokens per perplexity window
  std::string bos = "auto";  ///< auto | on | off: a BOS token before each window (docs/eval.md)
};

/// Regression thresholds (the `gate` section); an absent threshold is not checked.
struct GateSpec {
  std::optional<double> max_ppl_increase;  ///< relative: 0.03 means perplexity may grow by 3 %
  std::optional<double> max_acc_drop;      ///< percentage points of task accuracy
  std::optional<double> max_kl;  ///< nats/token: mean KL(original ‖ compressed) per text file
};

/// A budget for the search stage (the `search` section); at least one member is set.
struct SearchBudget {
  std::optional<double> bits;     ///< average bits per weight over the compressed tensors
  std::optional<double> size_gb;  ///< checkpoint size in GB (10^9 bytes)
};

/// A validated recipe. Paths are resolved: relative paths written in the file against the file's
/// directory, relative paths given by `--set` against the working directory.
struct Recipe {
  std::string source;                      ///< the recipe file as given to load_recipe
  std::vector<std::string> set_overrides;  ///< the `--set` texts applied, in order
  std::string model;                       ///< HF model directory
  std::string output;                      ///< output directory
  std::string device = "cpu";              ///< cpu | cuda
  std::string dtype = "f32";               ///< working precision: f32 | bf16
  Pipeline pipeline;                       ///< calibrate stage, passes, export stage
  std::optional<SearchBudget> search;
  std::optional<EvalSpec> eval;
  GateSpec gate;
};

/// Reads, overrides and validates the recipe at `path`. Each `--set` text is `KEY.PATH=VALUE`
/// (e.g. `passes.rtn.bits=3`, `calibration.samples=64`, `output=out2`); it is applied to the YAML
/// before validation, its VALUE read as canonical option text (options.h) or, when it starts with
/// '[' or '{', as YAML flow. Throws ResourceError when the file cannot be read, ConfigError(where =
/// path) listing every problem (YAML syntax, unknown or repeated keys with the valid ones, wrong
/// types, missing required keys, bad values, unknown passes, bad regexes, bad `--set` paths),
/// sorted by position, `--set` problems (prefixed "--set TEXT") last.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& set_overrides = {});

/// load_recipe on text already in memory: `source` names it in messages, `base_dir` is the
/// directory its relative paths resolve against.
Recipe parse_recipe(const std::string& yaml_text, const std::string& source,
                    const std::string& base_dir,
                    const std::vector<std::string>& set_overrides = {});

/// The canonical pipeline string of the recipe (what `lathe run` prints and the manifest stores).
std::string recipe_pipeline_string(const Recipe& recipe);

/// The whole recipe as JSON for the manifest: every field with defaults filled, typed option
/// values, and "pipeline" holding recipe_pipeline_string.
nlohmann::json recipe_to_json(const Recipe& recipe);

}  // namespace lathe
