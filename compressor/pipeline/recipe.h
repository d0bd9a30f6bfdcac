// Recipes (DESIGN.md "A recipe, as a user writes it"; docs/recipes.md is the user-facing schema):
// a YAML file → a validated Recipe whose compression stages are a Pipeline (pipeline_string.h).
// Validation reads the whole file before anything runs and reports every mistake at once, each as
// `file:line:column: field: message`. Torch-free.
#pragma once

#include <cstdint>
#include <map>
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

/// Where a recipe value was written: a position in the file, or the `--set` text that gave it.
struct RecipeLocation {
  int rank = 1;        ///< 0: file position, 1: the file without a position, 2: `--set`
  int64_t line = 0;    ///< 1-based (rank 0), or the `--set` index (rank 2)
  int64_t column = 0;  ///< 1-based (rank 0)
  std::string prefix;  ///< "r.yaml:9:22", "r.yaml" or "--set TEXT"
};

/// Mistakes in a recipe, each at the location of the value at fault; thrown together as one
/// ConfigError "invalid recipe (N errors)" whose lines read `LOCATION: FIELD: MESSAGE`, sorted by
/// position, `--set` ones last.
class RecipeProblems {
 public:
  void add(const RecipeLocation& at, const std::string& field, const std::string& message);
  bool empty() const { return list_.empty(); }
  /// The ConfigError (where = `source`) listing every problem; nothing when there is none.
  void throw_if_any(const std::string& source);

 private:
  struct Item {
    RecipeLocation at;
    size_t order;
    std::string text;
  };
  std::vector<Item> list_;
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
  /// Where each value was written, by field path: "model", "calibration.sets[0].path",
  /// "eval.text[1]", and per pass by position in the list, "passes[0]" (the pass name) and
  /// "passes[0].group-size", "passes[0].overrides[1].bits". For checks that run after parsing
  /// (preflight.h) to report at the value's position.
  std::map<std::string, RecipeLocation> locations;

  /// The location of `field`, else of the nearest enclosing field that has one ("passes[0].x" →
  /// "passes[0]"), else the recipe file itself.
  RecipeLocation location_of(const std::string& field) const;
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
