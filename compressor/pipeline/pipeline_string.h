// The canonical pipeline string (DESIGN.md "A recipe, as a user writes it"; STYLE.md "Pipelines are
// text that round-trips"): a recipe lowers to a Pipeline, whose one-line text is printed at start
// and stored in the manifest; parsing that text gives the same Pipeline again. Torch-free.
//
// Grammar (EBNF; whitespace is allowed between tokens, never inside one):
//
//   pipeline  = stage { "," stage } ;
//   stage     = name "{" [ option { "," option } ] "}" { override } ;
//   override  = "[" "match" "=" item { "," option } "]" ;      (passes with per-tensor overrides)
//   option    = name "=" value ;
//   value     = [ item { ":" item } ] ;                        (':' separates list elements)
//   item      = bare | quoted ;
//   bare      = ( letter | digit | "_" | "." | "+" | "/" | "%" | "-" ) { idem } ;
//   quoted    = '"' { any character but '"' or '\' | '\"' | '\\' } '"' ;
//   name      = ( lower | digit | "-" ) { idem } ;
//
// Stages: an optional `calibrate` first, then the passes of the registry (pass.h) in order, then an
// optional `export` last. Each stage prints every option that has a value, defaults included, in
// the order its specs declare; overrides print only the options they set. Canonical text has no
// whitespace and quotes exactly the items that are not bare.
//
//   calibrate{seq-len=2048,samples=128,seed=0,packing=pack,sets="prose=/d/prose.txt":"code#64=/d/c.txt"},
//   rtn{bits=4,group-size=32,sym=true,skip=false}[match="model\\.layers\\.0\\..*down_proj",bits=8],
//   export{formats=hf:gptq}  or  export{formats=hf,pad-experts=true}
//
// A calibration set is one string element `TASK[#SAMPLES]=PATH`: the task (letters, digits and
// _.+-; empty for a JSONL file whose records name their tasks), its own sample count when it has
// one, then the path (any characters: the element is quoted, so ':' ',' '=' '"' all survive).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "calibrate/calibration_set.h"
#include "compressor/passes/pass.h"

namespace lathe {

/// A whole compression pipeline: what `lathe run` executes between loading and evaluating.
struct Pipeline {
  /// The calibrate stage; absent when no pass needs calibration data.
  std::optional<CalibrationOptions> calibration;
  std::vector<PassInstance> passes;  ///< in order
  std::vector<std::string>
      export_formats;  ///< export_format_names() members; empty: no export stage
  /// export{pad-experts=true}: pad non-uniform expert counts with dummy experts (FORMATS.md §6);
  /// printed only when true.
  bool pad_experts = false;
};

/// Same stages, options, overrides and calibration sets (floats compared exactly).
bool operator==(const Pipeline& a, const Pipeline& b);
inline bool operator!=(const Pipeline& a, const Pipeline& b) {
  return !(a == b);
}

/// The formats an `export` stage accepts: hf, gptq, compressed-tensors, gguf.
const std::vector<std::string>& export_format_names();

/// Options of the `calibrate` stage: seq-len, samples, seed, packing, sets (grammar above).
const std::vector<OptionSpec>& calibrate_stage_options();

/// Empty when `task` may name a calibration task (task_label_problem's rule, and only letters,
/// digits and _.+- so that it reads bare in the pipeline grammar), else what is wrong.
std::string check_task_name(const std::string& task);

/// Empty when `pattern` compiles as an ECMAScript std::regex, else the regex library's complaint.
std::string check_tensor_regex(const std::string& pattern);

/// The canonical one-line text of `pipeline`. Throws InternalError for a pass missing from the
/// registry or a value that does not fit its spec (a Pipeline built by hand, not by a parser).
std::string canonical_pipeline(const Pipeline& pipeline);

/// Parses pipeline text (canonical or not). Throws ConfigError(where = "pipeline", field = the
/// stage or "stage.option") whose message starts "column N:" (1-based, in characters of `text`) for
/// malformed text, an unknown stage (the known ones listed), an unknown, repeated or missing
/// option (the valid keys listed), a bad value (parse_option's wording) or a bad regex.
Pipeline parse_pipeline(const std::string& text);

}  // namespace lathe
