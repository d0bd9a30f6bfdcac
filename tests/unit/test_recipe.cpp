// Recipes (compressor/pipeline/recipe.h) and the canonical pipeline string (pipeline_string.h):
// every mistake reported at its line and column, round trips, `--set`, defaults, path resolution,
// and the example recipes under recipes/.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <regex>
#include <sstream>

#include "compressor/common/errors.h"
#include "compressor/pipeline/pipeline_string.h"
#include "compressor/pipeline/recipe.h"
#include "tests/unit/safetensors_builder.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

/// The lines of a recipe ConfigError after its "invalid recipe (N errors)" head.
std::vector<std::string> error_lines(const std::string& what) {
  std::vector<std::string> lines;
  std::istringstream in(what);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

/// Loads `yaml` from dir/r.yaml expecting a ConfigError; returns its error lines.
std::vector<std::string> recipe_errors(const TempDir& dir, const std::string& yaml,
                                       const std::vector<std::string>& sets = {}) {
  std::string path = dir.write("r.yaml", yaml);
  try {
    load_recipe(path, sets);
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.where(), path);
    return error_lines(e.what());
  }
  ADD_FAILURE() << "recipe accepted:\n" << yaml;
  return {};
}

/// The only error of `yaml`, with the recipe path replaced by "r.yaml".
std::string only_error(const std::string& yaml, const std::vector<std::string>& sets = {}) {
  TempDir dir;
  auto lines = recipe_errors(dir, yaml, sets);
  EXPECT_EQ(lines.size(), 1u) << ::testing::PrintToString(lines);
  if (lines.empty()) return "";
  std::string line = lines[0];
  const std::string path = dir.file("r.yaml");
  if (line.compare(0, path.size(), path) == 0) line = "r.yaml" + line.substr(path.size());
  return line;
}

Recipe load(const TempDir& dir, const std::string& yaml,
            const std::vector<std::string>& sets = {}) {
  return load_recipe(dir.write("r.yaml", yaml), sets);
}

const char* kMinimal = "model: m\noutput: o\n";

// --- the issue's acceptance test
// -------------------------------------------------------------------

TEST(Recipe, FiveMistakesAreAllReportedWithTheirPositions) {
  TempDir dir;
  const std::string yaml =
      "model: m\n"                               // 1
      "output: out\n"                            // 2
      "device: gpu\n"                            // 3: bad enum value
      "calibration:\n"                           // 4
      "  seq_len: 512\n"                         // 5: unknown key
      "  sets:\n"                                // 6
      "    - {task: prose, path: a.txt}\n"       // 7
      "passes:\n"                                // 8
      "  - rtn: {bits: 9, group-size: 32}\n"     // 9: out of range
      "    overrides:\n"                         // 10
      "      - {match: 'layers.(0', bits: 8}\n"  // 11: bad regex
      "  - gtpq: {bits: 4}\n"                    // 12: unknown pass
      "export: [hf]\n";
  auto lines = recipe_errors(dir, yaml);
  const std::string f = dir.file("r.yaml");
  ASSERT_EQ(lines.size(), 5u) << ::testing::PrintToString(lines);
  EXPECT_EQ(lines[0], f + ":3:9: device: expected one of cpu, cuda, found \"gpu\"");
  EXPECT_EQ(lines[1],
            f + ":5:3: calibration.seq_len: unknown key \"seq_len\" (did you mean seq-len?); "
                "valid: seq-len, samples, seed, packing, sets");
  EXPECT_EQ(lines[2], f + ":9:17: passes.rtn.bits: expected an integer in [2, 8], found \"9\"");
  EXPECT_EQ(lines[3].rfind(f + ":11:17: passes.rtn.overrides[0].match: bad regex: ", 0), 0u)
      << lines[3];
  EXPECT_EQ(lines[4], f + ":12:5: passes[1]: unknown pass \"gtpq\"; known: rtn, gptq, "
                          "drop-experts, experts-frequency, experts-mass, experts-router-norm, "
                          "experts-random, experts-naee, diep, smoothquant, tcess, magnitude, "
                          "wanda, sparsegpt, cmoe");
  try {
    load_recipe(f);
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(f + ": invalid recipe (5 errors)\n", 0), 0u) << e.what();
  }
}

TEST(Recipe, ErrorsAreSortedByPositionAcrossSections) {
  TempDir dir;
  auto lines = recipe_errors(dir,
                             "gate: {max-acc-drop: -1}\n"
                             "eval: {text: [a.txt], seq-len: 0}\n"
                             "model: [m]\n"
                             "output: o\n"
                             "colour: blue\n");
  const std::string f = dir.file("r.yaml");
  ASSERT_EQ(lines.size(), 4u) << ::testing::PrintToString(lines);
  EXPECT_EQ(lines[0], f + ":1:22: gate.max-acc-drop: expected a number in [0, 100], found \"-1\"");
  EXPECT_EQ(lines[1], f + ":2:32: eval.seq-len: expected an integer in [1, 1048576], found \"0\"");
  EXPECT_EQ(lines[2], f + ":3:8: model: expected a string, found a list");
  EXPECT_EQ(lines[3],
            f + ":5:1: colour: unknown key \"colour\"; valid: model, output, device, dtype, "
                "calibration, passes, search, export, eval, gate");
}

// --- one message per kind of mistake
// ----------------------------------------------------------------

TEST(Recipe, StructureMistakes) {
  EXPECT_EQ(only_error(""), "r.yaml: the recipe is empty; it needs at least model and output");
  EXPECT_EQ(
      only_error("- model\n"),
      "r.yaml:1:1: expected a map of model, output, device, dtype, calibration, passes, search, "
      "export, eval, gate, found a list");
  EXPECT_EQ(only_error("output: o\n"), "r.yaml:1:1: missing required key model");
  EXPECT_EQ(only_error("model: m\nmodel: n\noutput: o\n"),
            "r.yaml:2:1: model: key model given twice (first at line 1)");
  EXPECT_EQ(only_error("model: m\noutput:\n"),
            "r.yaml:2:1: output: expected a string, found nothing");
  EXPECT_EQ(only_error("model: m\noutput: ''\n"),
            "r.yaml:2:9: output: expected a path, found an empty string");
  EXPECT_EQ(only_error("model: m\noutput: o\n---\nmodel: x\n"),
            "r.yaml:4:1: a recipe is one YAML document; found a second one");
  EXPECT_EQ(only_error("model: m\noutput: o\ndtype: fp16\n"),
            "r.yaml:3:8: dtype: expected one of f32, bf16, found \"fp16\"");
  EXPECT_EQ(only_error("model: m\noutput: o\n? [a]\n: 1\n"),
            "r.yaml:3:3: expected a key name, found a list");
}

TEST(Recipe, YamlSyntaxErrorsNameTheirPosition) {
  TempDir dir;
  std::string path = dir.write("r.yaml", "model: m\noutput: [o\ndevice: cpu\n");
  std::string what =
      testing::expect_error([&] { load_recipe(path); }, ErrorKind::kConfig, "", "YAML syntax");
  EXPECT_NE(what.find(path + ":3:7: YAML syntax: end of sequence flow not found"),
            std::string::npos)
      << what;
}

TEST(Recipe, MissingFileIsAResourceError) {
  TempDir dir;
  testing::expect_error([&] { load_recipe(dir.file("none.yaml")); }, ErrorKind::kResource, "",
                        "cannot read the recipe: No such file or directory");
}

TEST(Recipe, CalibrationMistakes) {
  std::string head = std::string(kMinimal) + "calibration:\n";
  EXPECT_EQ(only_error(head + "  samples: 64\n"),
            "r.yaml:4:3: calibration: missing required key sets in calibration");
  EXPECT_EQ(only_error(head + "  sets: []\n"),
            "r.yaml:4:9: calibration.sets: calibration needs at least one set");
  EXPECT_EQ(only_error(head + "  sets: a.txt\n"),
            "r.yaml:4:9: calibration.sets: expected a list of calibration sets {task, path, "
            "samples}, found \"a.txt\"");
  EXPECT_EQ(only_error(head + "  sets: [{path: a.txt}]\n"),
            "r.yaml:4:10: calibration.sets[0]: a text file needs a task (only a .jsonl set may "
            "name tasks per record)");
  EXPECT_EQ(only_error(head + "  sets: [{task: prose}]\n"),
            "r.yaml:4:10: calibration.sets[0]: missing required key path in calibration.sets[0]");
  EXPECT_EQ(only_error(head + "  sets: [{task: 'a b', path: a.txt}]\n"),
            "r.yaml:4:17: calibration.sets[0].task: a task name holds letters, digits and _.+- "
            "only, found \"a b\"");
  // The calibration set's own rule applies at validation: "all" names statistics over every task.
  EXPECT_EQ(only_error(head + "  sets: [{task: all, path: a.txt}]\n"),
            "r.yaml:4:17: calibration.sets[0].task: task label 'all' is reserved for statistics "
            "over every task");
  EXPECT_EQ(only_error(head + "  sets: [{task: p, path: a.txt, samples: \"64\"}]\n"),
            "r.yaml:4:42: calibration.sets[0].samples: expected an integer in [1, 16777216], found "
            "the string \"64\"");
  EXPECT_EQ(only_error(head + "  packing: packed\n  sets: [{task: p, path: a.txt}]\n"),
            "r.yaml:4:12: calibration.packing: expected one of pack, document, found \"packed\"");
  EXPECT_EQ(only_error(head + "  seed: -1\n  sets: [{task: p, path: a.txt}]\n"),
            "r.yaml:4:9: calibration.seed: expected an integer ≥ 0, found \"-1\"");
}

TEST(Recipe, PassMistakes) {
  std::string head = std::string(kMinimal) + "passes:\n";
  EXPECT_EQ(
      only_error(head + "  - rtn: {bitz: 4}\n"),
      "r.yaml:4:11: passes.rtn.bitz: unknown key \"bitz\"; valid: bits, group-size, sym, skip");
  EXPECT_EQ(only_error(head + "  - rtn: {sym: yes}\n"),
            "r.yaml:4:16: passes.rtn.sym: expected true or false, found \"yes\"");
  EXPECT_EQ(only_error(head + "  - rtn: {bits: '4'}\n"),
            "r.yaml:4:17: passes.rtn.bits: expected an integer in [2, 8], found the string \"4\"");
  EXPECT_EQ(only_error(head + "  - rtn: {bits: 4, bits: 3}\n"),
            "r.yaml:4:20: passes.rtn.bits: key bits given twice (first at line 4)");
  EXPECT_EQ(only_error(head + "  - rtn: 4\n"),
            "r.yaml:4:10: passes.rtn: expected a map of bits, group-size, sym, skip, found \"4\"");
  EXPECT_EQ(only_error(head + "  - rtn: {}\n    gptq: {}\n"),
            "r.yaml:4:5: passes[0]: one pass per list item, found rtn and gptq");
  EXPECT_EQ(only_error(head + "  - rtn\n"),
            "r.yaml:4:5: passes[0]: expected a pass such as - rtn: {bits: 4}, found \"rtn\"");
  EXPECT_EQ(only_error(head + "  - overrides: []\n"),
            "r.yaml:4:5: passes[0]: a pass entry names its pass, e.g. - rtn: {bits: 4}");
  EXPECT_EQ(
      only_error(head + "  - drop-experts: {keep: [0, x]}\n"),
      "r.yaml:4:30: passes.drop-experts.keep[1]: expected an integer in [0, 1048576], found \"x\"");
  EXPECT_EQ(only_error(head + "  - drop-experts: {keep: 0:1}\n"),
            "r.yaml:4:26: passes.drop-experts.keep: expected a list of integers in [0, 1048576], "
            "found \"0:1\"");
  EXPECT_EQ(
      only_error(head + "  - drop-experts: {keep: [0]}\n    overrides: [{match: x, keep: [1]}]\n"),
      "r.yaml:5:5: passes.drop-experts.overrides: pass drop-experts takes no per-tensor overrides");
  EXPECT_EQ(only_error(std::string(kMinimal) + "passes: {rtn: {}}\n"),
            "r.yaml:3:9: passes: expected a list of passes such as - rtn: {bits: 4}, found a map");
}

TEST(Recipe, OverrideMistakes) {
  std::string head = std::string(kMinimal) + "passes:\n  - rtn: {bits: 4}\n    overrides:\n";
  EXPECT_EQ(only_error(head + "      - {bits: 8}\n"),
            "r.yaml:6:9: passes.rtn.overrides[0]: an override needs match: REGEX");
  EXPECT_EQ(
      only_error(head + "      - {match: x}\n"),
      "r.yaml:6:9: passes.rtn.overrides[0]: an override sets at least one option besides match");
  EXPECT_EQ(
      only_error(head + "      - {match: x, bits: 1}\n"),
      "r.yaml:6:26: passes.rtn.overrides[0].bits: expected an integer in [2, 8], found \"1\"");
  EXPECT_EQ(only_error(head + "      - {match: x, size: 1}\n"),
            "r.yaml:6:20: passes.rtn.overrides[0].size: unknown key \"size\"; valid: match, bits, "
            "group-size, sym, skip");
  EXPECT_EQ(only_error(head + "      - {match: 'a[', bits: 8}\n")
                .rfind("r.yaml:6:17: passes.rtn.overrides[0].match: bad regex: ", 0),
            0u);
  EXPECT_EQ(
      only_error(head + "      - x\n"),
      "r.yaml:6:9: passes.rtn.overrides[0]: expected {match: REGEX, OPTION: VALUE}, found \"x\"");
}

TEST(Recipe, OtherSectionMistakes) {
  EXPECT_EQ(only_error(std::string(kMinimal) + "export: [hf, onnx]\n"),
            "r.yaml:3:14: export[1]: expected one of hf, gptq, compressed-tensors, qwen2-moe, "
            "gguf, found "
            "\"onnx\"");
  EXPECT_EQ(only_error(std::string(kMinimal) + "export: [hf, hf]\n"),
            "r.yaml:3:14: export[1]: format hf given twice");
  EXPECT_EQ(only_error(std::string(kMinimal) + "search: {}\n"),
            "r.yaml:3:9: search: a search budget sets bits and/or size-gb");
  EXPECT_EQ(only_error(std::string(kMinimal) + "search: {bits: 0.5}\n"),
            "r.yaml:3:16: search.bits: expected a number in [1, 32], found \"0.5\"");
  EXPECT_EQ(only_error(std::string(kMinimal) + "eval: {seq-len: 64}\n"),
            "r.yaml:3:7: eval: eval needs text and/or tasks files");
  EXPECT_EQ(only_error(std::string(kMinimal) + "eval: {text: a.txt}\n"),
            "r.yaml:3:14: eval.text: expected a list of paths, found \"a.txt\"");
  EXPECT_EQ(only_error(std::string(kMinimal) + "eval: {text: [a.txt], bos: maybe}\n"),
            "r.yaml:3:28: eval.bos: expected one of auto, on, off, found \"maybe\"");
  std::string with_eval = std::string(kMinimal) + "eval: {text: [a.txt]}\n";
  EXPECT_EQ(only_error(with_eval + "gate: {max-ppl-increase: 3}\n"),
            "r.yaml:4:26: gate.max-ppl-increase: expected a fraction in [0, 1] such as 0.03, or a "
            "percentage "
            "such as 3%, found \"3\"");
  EXPECT_EQ(only_error(with_eval + "gate: {max-ppl-increase: x%}\n"),
            "r.yaml:4:26: gate.max-ppl-increase: expected a fraction in [0, 1] such as 0.03, or a "
            "percentage "
            "such as 3%, found \"x%\"");
  EXPECT_EQ(only_error(with_eval + "gate: {}\n"),
            "r.yaml:4:7: gate: a gate sets max-ppl-increase, max-acc-drop and/or max-kl");
  EXPECT_EQ(only_error(std::string(kMinimal) + "gate: {max-acc-drop: 1}\n"),
            "r.yaml:3:1: gate: a gate compares evaluations: add an eval section");
}

// --- what a valid recipe becomes
// ----------------------------------------------------------------------

TEST(Recipe, DefaultsAreFilled) {
  TempDir dir;
  Recipe r = load(dir, std::string(kMinimal) +
                           "calibration: {sets: [{task: p, path: a.txt}]}\n"
                           "passes: [rtn: {}, rtn: ]\neval: {tasks: [t.jsonl]}\n");
  EXPECT_EQ(r.device, "cpu");
  EXPECT_EQ(r.dtype, "f32");
  ASSERT_TRUE(r.pipeline.calibration);
  EXPECT_EQ(r.pipeline.calibration->seq_len, 2048);
  EXPECT_EQ(r.pipeline.calibration->samples, 128);
  EXPECT_EQ(r.pipeline.calibration->seed, 0u);
  EXPECT_EQ(r.pipeline.calibration->packing, Packing::kPack);
  EXPECT_FALSE(r.pipeline.calibration->sources[0].samples);
  ASSERT_EQ(r.pipeline.passes.size(), 2u);
  for (const auto& pass : r.pipeline.passes) {
    EXPECT_EQ(pass.options.get_int("bits"), 4);
    EXPECT_EQ(pass.options.get_int("group-size"), 128);
    EXPECT_TRUE(pass.options.get_bool("sym"));
    EXPECT_FALSE(pass.options.get_bool("skip"));
  }
  ASSERT_TRUE(r.eval);
  EXPECT_EQ(r.eval->seq_len, 512);
  EXPECT_EQ(r.eval->bos, "auto");
  EXPECT_FALSE(r.search);
  EXPECT_FALSE(r.gate.max_acc_drop);
  EXPECT_TRUE(r.pipeline.export_formats.empty());
  EXPECT_EQ(recipe_pipeline_string(r),
            "calibrate{seq-len=2048,samples=128,seed=0,packing=pack,sets=\"p=" + dir.file("a.txt") +
                "\"},rtn{bits=4,group-size=128,sym=true,skip=false},rtn{bits=4,group-size=128,sym="
                "true,skip=false}");
}

TEST(Recipe, EverySectionIsRead) {
  TempDir dir;
  Recipe r =
      load(dir,
           "model: /models/m\noutput: out\ndevice: cuda\ndtype: bf16\n"
           "calibration:\n  seq-len: 256\n  samples: 16\n  seed: 7\n  packing: document\n"
           "  sets:\n    - {task: prose, path: p.txt, samples: 8}\n    - {path: mixed.jsonl}\n"
           "passes:\n  - drop-experts: {keep: [0, 1, 5]}\n  - rtn: {bits: 3, group-size: -1, sym: "
           "False}\n"
           "    overrides:\n      - {match: 'model\\.layers\\.0\\..*\\.w2', bits: 8}\n"
           "search: {bits: 3.5, size-gb: 12}\nexport: [hf, gguf]\n"
           "eval: {text: [h.txt], tasks: [t.jsonl], seq-len: 128, bos: off}\n"
           "gate: {max-ppl-increase: 5%, max-acc-drop: 1.5}\n");
  EXPECT_EQ(r.model, "/models/m");
  EXPECT_EQ(r.device, "cuda");
  EXPECT_EQ(r.dtype, "bf16");
  const auto& c = *r.pipeline.calibration;
  EXPECT_EQ(c.seq_len, 256);
  EXPECT_EQ(c.samples, 16);
  EXPECT_EQ(c.seed, 7u);
  EXPECT_EQ(c.packing, Packing::kDocument);
  ASSERT_EQ(c.sources.size(), 2u);
  EXPECT_EQ(c.sources[0].samples, 8);
  EXPECT_EQ(c.sources[1].task, "");
  EXPECT_EQ(r.pipeline.passes[0].options.get_int_list("keep"), (std::vector<int64_t>{0, 1, 5}));
  EXPECT_EQ(r.pipeline.passes[1].options.get_int("group-size"), -1);
  EXPECT_FALSE(r.pipeline.passes[1].options.get_bool("sym"));
  ASSERT_EQ(r.pipeline.passes[1].overrides.size(), 1u);
  EXPECT_EQ(r.pipeline.passes[1].overrides[0].match, "model\\.layers\\.0\\..*\\.w2");
  EXPECT_EQ(r.pipeline.passes[1].overrides[0].options.get_int("bits"), 8);
  EXPECT_FALSE(r.pipeline.passes[1].overrides[0].options.has("sym"));
  EXPECT_EQ(r.search->bits, 3.5);
  EXPECT_EQ(r.search->size_gb, 12.0);
  EXPECT_EQ(r.pipeline.export_formats, (std::vector<std::string>{"hf", "gguf"}));
  EXPECT_EQ(r.eval->seq_len, 128);
  EXPECT_EQ(r.eval->bos, "off");
  EXPECT_DOUBLE_EQ(*r.gate.max_ppl_increase, 0.05);
  EXPECT_EQ(*r.gate.max_acc_drop, 1.5);

  const std::string d = dir.path();
  EXPECT_EQ(
      recipe_pipeline_string(r),
      "calibrate{seq-len=256,samples=16,seed=7,packing=document,sets=\"prose#8=" + d +
          "/p.txt\":\"=" + d +
          "/mixed.jsonl\"},drop-experts{keep=0:1:5},rtn{bits=3,group-size=-1,sym=false,skip=false}"
          "[match=\"model\\\\.layers\\\\.0\\\\..*\\\\.w2\",bits=8],export{formats=hf:gguf}");
  EXPECT_EQ(parse_pipeline(recipe_pipeline_string(r)), r.pipeline);

  nlohmann::json j = recipe_to_json(r);
  EXPECT_EQ(j["pipeline"], recipe_pipeline_string(r));
  EXPECT_EQ(j["passes"][1]["options"]["bits"], 3);
  EXPECT_EQ(j["passes"][1]["options"]["sym"], false);
  EXPECT_EQ(j["passes"][0]["options"]["keep"], nlohmann::json({0, 1, 5}));
  EXPECT_EQ(j["passes"][1]["overrides"][0]["options"], nlohmann::json({{"bits", 8}}));
  EXPECT_EQ(j["calibration"]["sets"][0]["samples"], 8);
  EXPECT_TRUE(j["calibration"]["sets"][1]["samples"].is_null());
  EXPECT_DOUBLE_EQ(j["gate"]["max-ppl-increase"].get<double>(), 0.05);
  EXPECT_EQ(j["eval"]["text"][0], d + "/h.txt");
  EXPECT_EQ(j["source"], dir.file("r.yaml"));
}

TEST(Recipe, RelativePathsResolveAgainstTheRecipeDirectory) {
  TempDir dir;
  fs::create_directories(dir.file("recipes/sub"));
  std::string path = dir.write("recipes/sub/r.yaml",
                               "model: ../../models/m\noutput: ./out/x\n"
                               "calibration: {sets: [{task: p, path: ../data/p.txt}]}\n"
                               "eval: {text: [/abs/h.txt], tasks: [t/../t.jsonl]}\n");
  Recipe r = load_recipe(path);
  EXPECT_EQ(r.model, dir.file("models/m"));
  EXPECT_EQ(r.output, dir.file("recipes/sub/out/x"));
  EXPECT_EQ(r.pipeline.calibration->sources[0].path, dir.file("recipes/data/p.txt"));
  EXPECT_EQ(r.eval->text[0], "/abs/h.txt");
  EXPECT_EQ(r.eval->tasks[0], dir.file("recipes/sub/t.jsonl"));
  // A --set path is the user's shell talking: it resolves against the working directory.
  Recipe s = load_recipe(path, {"output=out2", "model=/m2"});
  EXPECT_EQ(s.output, (fs::current_path() / "out2").string());
  EXPECT_EQ(s.model, "/m2");
}

// --- --set
// ------------------------------------------------------------------------------------------

const char* kBase =
    "model: m\noutput: o\n"
    "calibration: {sets: [{task: p, path: a.txt}]}\n"
    "passes:\n  - drop-experts: {keep: [0, 1]}\n  - rtn: {bits: 4}\n"
    "eval: {text: [h.txt]}\n";

TEST(RecipeSet, ValidOverridesApplyBeforeValidation) {
  TempDir dir;
  Recipe r = load(dir, kBase,
                  {"passes.rtn.bits=3", "calibration.samples=64", "eval.seq-len=256",
                   "passes.drop-experts.keep=2:3", "passes.1.sym=false", "dtype=bf16",
                   "search.bits=3.25", "gate.max-acc-drop=2"});
  EXPECT_EQ(r.pipeline.passes[1].options.get_int("bits"), 3);
  EXPECT_FALSE(r.pipeline.passes[1].options.get_bool("sym"));
  EXPECT_EQ(r.pipeline.passes[0].options.get_int_list("keep"), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(r.pipeline.calibration->samples, 64);
  EXPECT_EQ(r.eval->seq_len, 256);
  EXPECT_EQ(r.dtype, "bf16");
  EXPECT_EQ(r.search->bits, 3.25);
  EXPECT_EQ(r.gate.max_acc_drop, 2.0);
  EXPECT_EQ(r.set_overrides.size(), 8u);

  // YAML flow values, overrides inside a pass, and options of a pass written without any.
  Recipe f =
      load(dir, "model: m\noutput: o\npasses:\n  - drop-experts:\n  - rtn:\n",
           {"passes.drop-experts.keep=[4, 5]", "passes.rtn.overrides=[{match: 'x\\..*', bits: 8}]",
            "passes.rtn.overrides.0.bits=6", "export=[hf]"});
  EXPECT_EQ(f.pipeline.passes[0].options.get_int_list("keep"), (std::vector<int64_t>{4, 5}));
  ASSERT_EQ(f.pipeline.passes[1].overrides.size(), 1u);
  EXPECT_EQ(f.pipeline.passes[1].overrides[0].match, "x\\..*");
  EXPECT_EQ(f.pipeline.passes[1].overrides[0].options.get_int("bits"), 6);
  EXPECT_EQ(f.pipeline.export_formats, std::vector<std::string>{"hf"});
}

TEST(RecipeSet, OverrideRepairsAnInvalidValue) {
  TempDir dir;
  std::string yaml = std::string(kMinimal) + "passes: [rtn: {bits: 9}]\n";
  EXPECT_EQ(recipe_errors(dir, yaml).size(), 1u);
  EXPECT_EQ(load(dir, yaml, {"passes.rtn.bits=8"}).pipeline.passes[0].options.get_int("bits"), 8);
}

TEST(RecipeSet, BadOverridesNameTheirText) {
  EXPECT_EQ(only_error(kBase, {"passes.gptq.bits=3"}),
            "--set passes.gptq.bits=3: no pass gptq in the recipe (passes: drop-experts, rtn)");
  EXPECT_EQ(only_error(kBase, {"passes.rtn.bits=x"}),
            "--set passes.rtn.bits=x: passes.rtn.bits: expected an integer in [2, 8], found \"x\"");
  EXPECT_EQ(only_error(kBase, {"passes.rtn.bitz=3"}),
            "--set passes.rtn.bitz=3: passes.rtn.bitz: unknown key \"bitz\"; valid: bits, "
            "group-size, sym, skip");
  EXPECT_EQ(only_error(kBase, {"passes.7.bits=3"}),
            "--set passes.7.bits=3: no single pass at index 7 (the recipe has 2 entries)");
  EXPECT_EQ(only_error(kBase, {"passes.rtn=3"}),
            "--set passes.rtn=3: name an option: passes.rtn.OPTION=VALUE");
  EXPECT_EQ(only_error(kBase, {"output"}),
            "--set output: expected KEY=VALUE with a dotted key, e.g. passes.rtn.bits=3");
  EXPECT_EQ(
      only_error(kBase, {"calibration..samples=3"}),
      "--set calibration..samples=3: expected KEY=VALUE with a dotted key, e.g. passes.rtn.bits=3");
  EXPECT_EQ(only_error(kBase, {"calibration.smaples=64"}),
            "--set calibration.smaples=64: calibration.smaples: unknown key \"smaples\"; valid: "
            "seq-len, samples, "
            "seed, packing, sets");
  EXPECT_EQ(only_error(kBase, {"model.name=x"}), "--set model.name=x: model is not a map");
  EXPECT_EQ(only_error(kBase, {"eval.text.3=x"}),
            "--set eval.text.3=x: eval.text is a list of 1 elements: expected an index below that, "
            "found \"3\"");
  EXPECT_EQ(only_error(kBase, {"passes.rtn.bits=[3"})
                .rfind("--set passes.rtn.bits=[3: the value is not valid YAML flow: ", 0),
            0u);
  EXPECT_EQ(only_error(kBase, {"calibration.samples=0"}),
            "--set calibration.samples=0: calibration.samples: expected an integer in [1, "
            "16777216], found \"0\"");
  EXPECT_EQ(
      only_error(std::string(kMinimal) + "passes: [rtn: {}, rtn: {}]\n", {"passes.rtn.bits=3"}),
      "--set passes.rtn.bits=3: 2 passes are named rtn; select one by its index, e.g. "
      "passes.0.OPTION=VALUE");
  EXPECT_EQ(only_error(kMinimal, {"passes.rtn.bits=3"}),
            "--set passes.rtn.bits=3: the recipe has no list of passes");
}

TEST(RecipeSet, SetErrorsFollowFileErrors) {
  TempDir dir;
  auto lines = recipe_errors(dir, "model: m\noutput: o\ndevice: tpu\n", {"dtype=f64"});
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0],
            dir.file("r.yaml") + ":3:9: device: expected one of cpu, cuda, found \"tpu\"");
  EXPECT_EQ(lines[1], "--set dtype=f64: dtype: expected one of f32, bf16, found \"f64\"");
}

// --- the pipeline string
// ------------------------------------------------------------------------------

Pipeline awkward_pipeline() {
  Pipeline p;
  CalibrationOptions c;
  c.seq_len = 512;
  c.samples = 3;
  c.seed = 42;
  c.packing = Packing::kDocument;
  c.sources = {{"/d/a b,c{d}[e]:f=g#2.txt", "prose", 5},
               {"data/q\"uote\\back.jsonl", "", std::nullopt},
               {"ünïcode/пример.txt", "code.v2", std::nullopt}};
  p.calibration = c;
  const PassInfo* drop = find_pass("drop-experts");
  PassInstance d{"drop-experts", OptionValues(drop->options), {}};
  d.options.set("keep", std::vector<int64_t>{0, 3, 7});
  d.options.set("map", std::string("maps/a map, \"quoted\".json"));
  const PassInfo* rtn = find_pass("rtn");
  PassInstance r{"rtn", OptionValues(rtn->options), {}};
  r.options.set("bits", int64_t{3});
  PassOverride first{R"(model\.layers\.(0|1)\..*"down_proj",{2}\])", OptionValues()};
  first.options.set("bits", int64_t{8});
  first.options.set("sym", false);
  PassOverride second{"lm_head", OptionValues()};
  second.options.set("skip", true);
  r.overrides = {first, second};
  p.passes = {d, r};
  p.export_formats = {"hf", "compressed-tensors"};
  return p;
}

TEST(Recipe, ExportStageOptionsAsAMap) {
  TempDir dir;
  Recipe r =
      load(dir, std::string(kMinimal) + "export: {formats: [hf, gptq], pad-experts: true}\n");
  EXPECT_EQ(r.pipeline.export_formats, (std::vector<std::string>{"hf", "gptq"}));
  EXPECT_TRUE(r.pipeline.pad_experts);
  EXPECT_EQ(canonical_pipeline(r.pipeline), "export{formats=hf:gptq,pad-experts=true}");
  EXPECT_EQ(parse_pipeline("export{formats=hf:gptq,pad-experts=true}"), r.pipeline);
  Recipe plain = load(dir, std::string(kMinimal) + "export: [hf]\n");
  EXPECT_FALSE(plain.pipeline.pad_experts);
  EXPECT_EQ(canonical_pipeline(plain.pipeline), "export{formats=hf}");
  EXPECT_NE(plain.pipeline, r.pipeline);
  // pad-experts=false is the default and not printed
  EXPECT_EQ(canonical_pipeline(parse_pipeline("export{formats=hf,pad-experts=false}")),
            "export{formats=hf}");
  EXPECT_NE(only_error(std::string(kMinimal) + "export: {pad-experts: true}\n")
                .find("missing required key formats"),
            std::string::npos);
  EXPECT_NE(only_error(std::string(kMinimal) + "export: {formats: [hf], pad-experts: 3}\n")
                .find("export.pad-experts"),
            std::string::npos);
  EXPECT_NE(only_error(std::string(kMinimal) + "export: {formats: [hf], pad: true}\n")
                .find("unknown key \"pad\""),
            std::string::npos);
}

TEST(PipelineString, CanonicalTextIsExact) {
  EXPECT_EQ(
      canonical_pipeline(awkward_pipeline()),
      R"(calibrate{seq-len=512,samples=3,seed=42,packing=document,sets="prose#5=/d/a b,c{d}[e]:f=g#2.txt":)"
      R"("=data/q\"uote\\back.jsonl":"code.v2=ünïcode/пример.txt"},)"
      R"(drop-experts{keep=0:3:7,map="maps/a map, \"quoted\".json"},)"
      R"(rtn{bits=3,group-size=128,sym=true,skip=false})"
      R"([match="model\\.layers\\.(0|1)\\..*\"down_proj\",{2}\\]",bits=8,sym=false][match=lm_head,skip=true],)"
      R"(export{formats=hf:compressed-tensors})");
}

TEST(PipelineString, RoundTrips) {
  Pipeline p = awkward_pipeline();
  std::string text = canonical_pipeline(p);
  Pipeline back = parse_pipeline(text);
  EXPECT_EQ(back, p);
  EXPECT_EQ(canonical_pipeline(back), text);

  Pipeline bare;  // one pass, no calibration, no export
  bare.passes.push_back({"rtn", OptionValues(find_pass("rtn")->options), {}});
  EXPECT_EQ(canonical_pipeline(bare), "rtn{bits=4,group-size=128,sym=true,skip=false}");
  EXPECT_EQ(parse_pipeline(canonical_pipeline(bare)), bare);

  Pipeline changed = p;
  changed.passes[1].overrides[0].options.set("bits", int64_t{6});
  EXPECT_NE(changed, p);
}

/// A string of `n` characters drawn from those the pipeline syntax gives meaning to, and others.
std::string awkward_string(std::mt19937& rng, size_t n) {
  static const std::vector<std::string> pieces = {
      "a", "Z", "0", "_", ".", "/", "-",  "%", "+", "\"", "\\", ",", ":", "=", "#",
      "{", "}", "[", "]", " ", "é", "\t", "(", ")", "*",  "?",  "|", "^", "$"};
  std::string out;
  for (size_t i = 0; i < n; ++i) out += pieces[rng() % pieces.size()];
  return out;
}

/// `text` as a regex that matches exactly `text`.
std::string regex_literal(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::string(".^$|()[]{}*+?\\").find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

TEST(PipelineString, RandomAwkwardStringsRoundTrip) {
  std::mt19937 rng(20240611);
  const PassInfo* rtn = find_pass("rtn");
  const PassInfo* drop = find_pass("drop-experts");
  for (int trial = 0; trial < 300; ++trial) {
    Pipeline p;
    CalibrationOptions c;
    c.seed = rng();
    for (size_t i = 0, n = 1 + rng() % 3; i < n; ++i)
      c.sources.push_back({awkward_string(rng, 1 + rng() % 12),
                           i == 0 ? "" : "t" + std::to_string(i),
                           rng() % 2 ? std::optional<int64_t>(1 + rng() % 100) : std::nullopt});
    p.calibration = c;
    PassInstance d{"drop-experts", OptionValues(drop->options), {}};
    d.options.set("map", awkward_string(rng, rng() % 10));
    PassInstance r{"rtn", OptionValues(rtn->options), {}};
    const std::string tensor = awkward_string(rng, rng() % 10);
    PassOverride o{regex_literal(tensor), OptionValues()};
    o.options.set("group-size", static_cast<int64_t>(rng() % 1000));
    r.overrides.push_back(o);
    p.passes = {d, r};
    std::string text = canonical_pipeline(p);
    Pipeline back = parse_pipeline(text);
    ASSERT_EQ(back, p) << text;
    ASSERT_EQ(canonical_pipeline(back), text);
    EXPECT_TRUE(std::regex_match(tensor, std::regex(back.passes[1].overrides[0].match))) << text;
  }
}

TEST(PipelineString, NonCanonicalTextParsesToCanonical) {
  Pipeline p = parse_pipeline(
      " rtn { bits = 3 } [ match = \"a\\\\.b\" , bits = 8 ] , drop-experts{map=\"m.json\"}");
  EXPECT_EQ(canonical_pipeline(p),
            "rtn{bits=3,group-size=128,sym=true,skip=false}[match=\"a\\\\.b\",bits=8],drop-experts{"
            "map=m.json}");
}

/// parse_pipeline's ConfigError message (field checked too) for `text`.
std::string pipeline_error(const std::string& text, const std::string& field) {
  try {
    parse_pipeline(text);
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.where(), "pipeline");
    EXPECT_EQ(e.field(), field) << e.what();
    return e.message();
  }
  ADD_FAILURE() << "accepted: " << text;
  return "";
}

TEST(PipelineString, MistakesNameTheirColumn) {
  EXPECT_EQ(pipeline_error("", ""),
            "column 1: empty pipeline: expected a stage such as rtn{bits=4}");
  EXPECT_EQ(pipeline_error("rtn{},gtpq{bits=4}", "gtpq"),
            "column 7: unknown stage \"gtpq\"; known: calibrate, rtn, gptq, drop-experts, "
            "experts-frequency, experts-mass, experts-router-norm, experts-random, experts-naee, "
            "diep, smoothquant, tcess, magnitude, wanda, sparsegpt, cmoe, export");
  EXPECT_EQ(pipeline_error("rtn{bitz=4}", "rtn.bitz"),
            "column 5: unknown option \"bitz\" of rtn; valid: bits, group-size, sym, skip");
  EXPECT_EQ(pipeline_error("rtn{bits=9}", "rtn.bits"),
            "column 10: expected an integer in [2, 8], found \"9\"");
  EXPECT_EQ(pipeline_error("rtn{bits=4:5}", "rtn.bits"),
            "column 10: expected a single value, found a ':'-separated list");
  EXPECT_EQ(pipeline_error("rtn{bits=4,bits=3}", "rtn.bits"), "column 12: option bits given twice");
  EXPECT_EQ(pipeline_error("rtn{bits=4", "rtn"), "column 11: expected '}', found the end");
  EXPECT_EQ(pipeline_error("rtn{bits=4 5}", "rtn"), "column 12: expected ',' or '}', found '5'");
  EXPECT_EQ(pipeline_error("rtn{bits}", "rtn.bits"),
            "column 9: expected '=' after bits, found '}'");
  EXPECT_EQ(pipeline_error("rtn bits", "rtn"), "column 5: expected '{' after rtn, found 'b'");
  EXPECT_EQ(pipeline_error("rtn{}drop-experts{}", ""),
            "column 6: expected ',' between stages or the end of the pipeline, found 'd'");
  EXPECT_EQ(pipeline_error("rtn{},", ""), "column 7: expected a stage name, found the end");
  EXPECT_EQ(pipeline_error("drop-experts{map=\"abc}", "drop-experts.map"),
            "column 18: a quoted string lacks its closing '\"'");
  EXPECT_EQ(pipeline_error("drop-experts{map=\"a\\qb\"}", "drop-experts.map"),
            "column 20: a quoted string escapes only \\\" and \\\\");
  EXPECT_EQ(pipeline_error("drop-experts{keep=1:}", "drop-experts.keep"),
            "column 21: expected a list element after ':', found '}'");
  EXPECT_EQ(pipeline_error("drop-experts{map=a b}", "drop-experts"),
            "column 20: expected ',' or '}', found 'b'");
  EXPECT_EQ(pipeline_error("drop-experts{keep=1}[match=x,keep=2]", "drop-experts"),
            "column 21: pass drop-experts takes no per-tensor overrides");
  EXPECT_EQ(pipeline_error("rtn{}[bits=8]", "rtn"),
            "column 7: an override starts with match=REGEX");
  EXPECT_EQ(pipeline_error("rtn{}[match=x]", "rtn"),
            "column 6: an override sets at least one option besides match");
  EXPECT_EQ(
      pipeline_error("rtn{}[match=\"(\",bits=8]", "rtn.match").rfind("column 13: bad regex: ", 0),
      0u);
  EXPECT_EQ(pipeline_error("rtn{}[match=a:b,bits=8]", "rtn.match"),
            "column 13: expected one regex (quoted unless bare)");
  EXPECT_EQ(pipeline_error("rtn{},calibrate{sets=\"p=a\"}", "calibrate"),
            "column 7: calibrate must be the first stage");
  EXPECT_EQ(pipeline_error("export{formats=hf},rtn{}", "rtn"),
            "column 20: export must be the last stage");
  EXPECT_EQ(
      pipeline_error("export{formats=hf:onnx}", "export.formats"),
      "column 8: unknown format \"onnx\"; known: hf, gptq, compressed-tensors, qwen2-moe, gguf");
  EXPECT_EQ(pipeline_error("export{formats=hf:hf}", "export.formats"),
            "column 8: format hf given twice");
  EXPECT_EQ(pipeline_error("export{}", "export.formats"), "column 1: export needs option formats");
  EXPECT_EQ(pipeline_error("calibrate{seq-len=8}", "calibrate.sets"),
            "column 1: calibrate needs option sets");
  EXPECT_EQ(pipeline_error("calibrate{sets=\"p\"}", "calibrate.sets"),
            "column 11: a calibration set is TASK[#SAMPLES]=PATH, found \"p\"");
  EXPECT_EQ(pipeline_error("calibrate{sets=\"p#0=a\"}", "calibrate.sets"),
            "column 11: calibration set \"p#0=a\": samples: expected an integer in [1, 16777216], "
            "found \"0\"");
  EXPECT_EQ(pipeline_error("calibrate{sets=\"a b=x\"}", "calibrate.sets"),
            "column 11: a task name holds letters, digits and _.+- only, found \"a b\"");
  EXPECT_EQ(pipeline_error("calibrate{packing=packed,sets=\"p=a\"}", "calibrate.packing"),
            "column 19: expected one of pack, document, found \"packed\"");
  // Columns count characters, not bytes.
  EXPECT_EQ(pipeline_error("drop-experts{map=\"é\",keep=x}", "drop-experts.keep"),
            "column 27: expected a list of integers in [0, 1048576] separated by ':', found \"x\"");
}

// --- the example recipes
// ------------------------------------------------------------------------------

TEST(ExampleRecipes, EveryRecipeValidatesAndRoundTrips) {
  const fs::path dir = fs::path(LATHE_SOURCE_DIR) / "recipes";
  int count = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    ++count;
    Recipe r = load_recipe(entry.path().string());
    EXPECT_EQ(parse_pipeline(recipe_pipeline_string(r)), r.pipeline);
    EXPECT_FALSE(r.model.empty());
  }
  EXPECT_GE(count, 1);
}

TEST(ExampleRecipes, TinyMixtralRecipeSaysWhatItsReadmeSays) {
  const fs::path recipes = fs::path(LATHE_SOURCE_DIR) / "recipes";
  Recipe r = load_recipe((recipes / "tiny-mixtral-rtn.yaml").string());
  const fs::path root = fs::path(LATHE_SOURCE_DIR).lexically_normal();
  EXPECT_EQ(fs::path(r.model), (root / "data/models/mixtral").lexically_normal());
  EXPECT_TRUE(fs::exists(fs::path(r.model) / "config.json"));
  ASSERT_TRUE(r.pipeline.calibration);
  for (const auto& s : r.pipeline.calibration->sources) EXPECT_TRUE(fs::exists(s.path)) << s.path;
  for (const auto& t : r.eval->text) EXPECT_TRUE(fs::exists(t)) << t;
  for (const auto& t : r.eval->tasks) EXPECT_TRUE(fs::exists(t)) << t;
  ASSERT_EQ(r.pipeline.passes.size(), 2u);
  EXPECT_EQ(r.pipeline.passes[0].name, "drop-experts");
  EXPECT_EQ(r.pipeline.passes[1].options.get_int("bits"), 4);
  EXPECT_EQ(r.pipeline.passes[1].options.get_int("group-size"), 32);
  ASSERT_EQ(r.pipeline.passes[1].overrides.size(), 1u);
  std::regex match(r.pipeline.passes[1].overrides[0].match);
  EXPECT_TRUE(std::regex_match("model.layers.0.block_sparse_moe.experts.3.w2", match));
  EXPECT_FALSE(std::regex_match("model.layers.1.block_sparse_moe.experts.3.w2", match));
  EXPECT_FALSE(std::regex_match("model.layers.0.block_sparse_moe.experts.3.w1", match));
}

}  // namespace
}  // namespace lathe
