#include "compressor/pipeline/preflight.h"

#include <filesystem>
#include <fstream>
#include <memory>

#include "compressor/common/errors.h"
#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"
#include "compressor/model/weight_store.h"

namespace fs = std::filesystem;

namespace lathe {
namespace {

/// What is wrong with `path` as a file to read, or "" when it can be read.
std::string unreadable_file(const std::string& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) return "no such file: " + path;
  if (fs::is_directory(status)) return "expected a file, found a directory: " + path;
  if (!std::ifstream(path)) return "cannot read " + path;
  return "";
}

/// What is wrong with `path` as a model, or "" when it looks like one (a .gguf file, or a
/// directory with config.json).
std::string unusable_model(const std::string& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) return "no such model directory or .gguf file: " + path;
  if (fs::is_directory(status)) {
    const std::string config = (fs::path(path) / "config.json").string();
    if (!fs::exists(config)) return "not a Hugging Face model directory (no config.json): " + path;
    return unreadable_file(config);
  }
  if (fs::path(path).extension() != ".gguf")
    return "expected a model directory (config.json, *.safetensors) or a .gguf file, found the "
           "file " +
           path;
  return unreadable_file(path);
}

/// What a pass problem's field names below the pass: "gptq.overrides[0].bits" of pass gptq →
/// ".overrides[0].bits"; "" when the field is not one of the pass's options.
std::string option_suffix(const std::string& pass, const std::string& field) {
  if (field.compare(0, pass.size(), pass) == 0 &&
      (field.size() == pass.size() || field[pass.size()] == '.'))
    return field.substr(pass.size());
  return "";
}

void check_input_files(const Recipe& recipe, RecipeProblems& problems) {
  auto check = [&](const std::string& field, const std::string& path, const std::string& shown) {
    const std::string problem = unreadable_file(path);
    if (!problem.empty()) problems.add(recipe.location_of(field), shown, problem);
  };
  auto check_list = [&](const std::string& list, const std::vector<std::string>& paths) {
    for (size_t i = 0; i < paths.size(); ++i) {
      const std::string field = list + "[" + std::to_string(i) + "]";
      check(field, paths[i], field);
    }
  };
  if (const auto& c = recipe.pipeline.calibration)
    for (size_t i = 0; i < c->sources.size(); ++i) {
      const std::string field = "calibration.sets[" + std::to_string(i) + "].path";
      check(field, c->sources[i].path, field);
    }
  if (recipe.eval) {
    check_list("eval.text", recipe.eval->text);
    check_list("eval.tasks", recipe.eval->tasks);
  }
  const auto& passes = recipe.pipeline.passes;
  for (size_t p = 0; p < passes.size(); ++p) {
    const PassInfo* info = find_pass(passes[p].name);
    if (!info) continue;
    for (const OptionSpec& spec : info->options) {
      if (spec.path != PathRole::kInput || !passes[p].options.has(spec.name)) continue;
      const std::string& path = passes[p].options.get_string(spec.name);
      const std::string field = "passes[" + std::to_string(p) + "]." + spec.name;
      if (!path.empty()) check(field, path, "passes." + passes[p].name + "." + spec.name);
    }
  }
}

}  // namespace

std::vector<PassProblem> check_passes(const std::string& model_dir,
                                      const std::vector<PassInstance>& passes) {
  const ModelSpec spec = load_model_spec(model_dir);
  const WeightStore store(model_dir);
  const ExpertLayout layout =
      detect_expert_layout(spec, [&](const std::string& n) { return store.contains(n); });
  // Passes after one that changes the structure (cmoe) see the spec it leaves (a second segment).
  ModelSpec now = spec;
  std::vector<ExpectedTensor> tensors = expected_tensors(spec, layout);
  std::vector<PassProblem> out;
  for (size_t i = 0; i < passes.size(); ++i) {
    std::vector<CheckProblem> problems;
    try {
      const PassInfo* info = find_pass(passes[i].name);
      if (!info) throw ConfigError("", passes[i].name, "unknown pass \"" + passes[i].name + "\"");
      const std::unique_ptr<Pass> pass = info->make(passes[i]);
      pass->check(CheckContext{now, tensors}, problems);
      if (problems.empty() && pass->changes_structure()) {
        now = pass->structure_after(now);
        tensors = expected_tensors(now, ExpertLayout::kPerExpert);
      }
    } catch (const Error& e) {
      problems.push_back({e.field().empty() ? passes[i].name : e.field(), e.message()});
    }
    for (auto& problem : problems) out.push_back({i, std::move(problem)});
  }
  return out;
}

void require_command_inputs(const std::string& model,
                            const std::vector<std::pair<std::string, std::string>>& files) {
  std::vector<std::string> problems;
  if (std::string p = unusable_model(model); !p.empty()) problems.push_back("model: " + p);
  for (const auto& [option, path] : files)
    if (std::string p = unreadable_file(path); !p.empty()) problems.push_back(option + ": " + p);
  if (problems.empty()) return;
  if (problems.size() == 1) throw ConfigError("", "", problems[0]);
  std::string message = std::to_string(problems.size()) + " unusable inputs";
  for (const auto& p : problems) message += "\n" + p;
  throw ConfigError("", "", message);
}

void preflight_recipe(Recipe& recipe, const ModelResolver& resolve_model) {
  RecipeProblems problems;
  check_input_files(recipe, problems);
  const std::string model_problem = unusable_model(recipe.model);
  if (!model_problem.empty()) {
    problems.add(recipe.location_of("model"), "model", model_problem);
  } else {
    try {
      if (resolve_model) recipe.model = resolve_model(recipe.model);
      for (const PassProblem& p : check_passes(recipe.model, recipe.pipeline.passes)) {
        const std::string& name = recipe.pipeline.passes[p.pass].name;
        const std::string suffix = option_suffix(name, p.problem.field);
        problems.add(recipe.location_of("passes[" + std::to_string(p.pass) + "]" + suffix),
                     "passes." + name + suffix, p.problem.message);
      }
    } catch (const Error& e) {
      problems.add(recipe.location_of("model"), "model", e.what());
    }
  }
  problems.throw_if_any(recipe.source);
}

}  // namespace lathe
