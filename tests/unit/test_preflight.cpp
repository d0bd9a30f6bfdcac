// The recipe check before anything runs (compressor/pipeline/preflight.h): missing input files,
// an unusable model, and pass options the model cannot take are all reported at once, each at the
// recipe position of the value at fault.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "compressor/common/errors.h"
#include "compressor/pipeline/preflight.h"
#include "compressor/pipeline/recipe.h"
#include "tests/unit/safetensors_builder.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

const std::string kModels = (fs::path(LATHE_SOURCE_DIR) / "data/models").string();
const std::string kProse = (fs::path(LATHE_SOURCE_DIR) / "data/corpora/prose/train.txt").string();

/// The problem lines preflight_recipe reports for `yaml` (written to dir/r.yaml), with the recipe
/// path shortened to "r.yaml"; empty when it accepts the recipe.
std::vector<std::string> preflight_lines(const std::string& yaml,
                                         const std::vector<std::string>& sets = {}) {
  TempDir dir;
  const std::string path = dir.write("r.yaml", yaml);
  Recipe recipe = load_recipe(path, sets);
  try {
    preflight_recipe(recipe);
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.where(), path);
    std::vector<std::string> lines;
    std::istringstream in(e.what());
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      if (line.compare(0, path.size(), path) == 0) line = "r.yaml" + line.substr(path.size());
      lines.push_back(line);
    }
    return lines;
  }
  return {};
}

// The new-user case: before, these surfaced one run at a time (group-size at decide, then
// bits, then the missing file after calibration had started).
TEST(Preflight, EveryMistakeIsReportedAtOnceAtItsPosition) {
  const std::string yaml =
      "model: " + kModels +
      "/llama\n"                                                                    // 1
      "output: out\n"                                                               // 2
      "calibration:\n"                                                              // 3
      "  sets:\n"                                                                   // 4
      "    - {task: prose, path: missing.txt}\n"                                    // 5
      "passes:\n"                                                                   // 6
      "  - gptq: {bits: 5, group-size: 33}\n"                                       // 7
      "    overrides:\n"                                                            // 8
      "      - {match: 'model\\.layers\\.9\\..*', bits: 8}\n"                       // 9
      "      - {match: 'model\\.layers\\.0\\.mlp\\.down_proj', group-size: 256}\n"  // 10
      "eval:\n"                                                                     // 11
      "  text: [" +
      kProse + ", nope.txt]\n";  // 12
  const auto lines = preflight_lines(yaml);
  ASSERT_EQ(lines.size(), 6u) << ::testing::PrintToString(lines);
  EXPECT_EQ(lines[0].rfind("r.yaml:5:27: calibration.sets[0].path: no such file: ", 0), 0u)
      << lines[0];
  EXPECT_EQ(lines[1],
            "r.yaml:7:18: passes.gptq.bits: 5 bits: GPTQ checkpoints pack 2, 3, 4 or 8 bits (use "
            "rtn for other widths inside lathe only)");
  // 7 linears in each of 4 layers, layer 0's down_proj taken by the second override.
  EXPECT_EQ(lines[2],
            "r.yaml:7:33: passes.gptq.group-size: 33 does not divide the input width 128 of "
            "model.layers.0.self_attn.q_proj.weight (and 26 more tensors); use a divisor or -1");
  EXPECT_EQ(
      lines[3].rfind("r.yaml:9:17: passes.gptq.overrides[0].match: \"model\\.layers\\.9\\..*\" "
                     "matches no quantizable tensor",
                     0),
      0u)
      << lines[3];
  EXPECT_EQ(lines[4],
            "r.yaml:10:65: passes.gptq.overrides[1].group-size: 256 does not divide the input "
            "width 384 of model.layers.0.mlp.down_proj.weight; use a divisor or -1");
  EXPECT_EQ(lines[5].rfind("r.yaml:12:", 0), 0u) << lines[5];
  EXPECT_NE(lines[5].find("eval.text[1]: no such file: "), std::string::npos) << lines[5];
}

TEST(Preflight, AValidRecipePasses) {
  EXPECT_TRUE(preflight_lines("model: " + kModels +
                              "/llama\noutput: out\ncalibration:\n"
                              "  sets: [{task: prose, path: " +
                              kProse +
                              "}]\n"
                              "passes:\n  - gptq: {bits: 4, group-size: 32}\n"
                              "eval: {text: [" +
                              kProse + "]}\n")
                  .empty());
}

TEST(Preflight, AnUnusableModelIsReportedAtTheModelKey) {
  TempDir dir;
  const std::string empty_dir = dir.file("empty");
  fs::create_directories(empty_dir);
  const std::string text_file = dir.write("weights.bin", "x");
  EXPECT_EQ(preflight_lines("model: " + empty_dir + "\noutput: out\n"),
            std::vector<std::string>{"r.yaml:1:8: model: not a Hugging Face model directory (no "
                                     "config.json): " +
                                     empty_dir});
  EXPECT_EQ(preflight_lines("model: " + text_file + "\noutput: out\n"),
            std::vector<std::string>{"r.yaml:1:8: model: expected a model directory (config.json, "
                                     "*.safetensors) or a .gguf file, found the file " +
                                     text_file});
  const auto missing = preflight_lines("model: " + dir.file("nothing") + "\noutput: out\n" +
                                       "calibration: {sets: [{task: a, path: gone.txt}]}\n");
  ASSERT_EQ(missing.size(), 2u) << ::testing::PrintToString(missing);  // files are still checked
  EXPECT_EQ(missing[0],
            "r.yaml:1:8: model: no such model directory or .gguf file: " + dir.file("nothing"));
  EXPECT_EQ(missing[1].rfind("r.yaml:3:38: calibration.sets[0].path: no such file: ", 0), 0u)
      << missing[1];
}

TEST(Preflight, PassChecksAgainstTheModelNameThePassByPosition) {
  // llama is dense: an expert-pruning pass cannot run on it, and the second rtn's group size is
  // what is wrong, not the first's.
  const auto lines = preflight_lines("model: " + kModels +
                                     "/llama\noutput: out\npasses:\n"
                                     "  - rtn: {bits: 4, group-size: 32}\n"
                                     "  - drop-experts: {keep: [0, 1]}\n"
                                     "  - rtn: {bits: 4, group-size: 100}\n");
  ASSERT_EQ(lines.size(), 2u) << ::testing::PrintToString(lines);
  EXPECT_EQ(lines[0].rfind("r.yaml:5:5: passes.drop-experts: ", 0), 0u) << lines[0];
  EXPECT_EQ(lines[1].rfind("r.yaml:6:32: passes.rtn.group-size: 100 does not divide", 0), 0u)
      << lines[1];
}

TEST(Preflight, InputFilesOfPassesAndSetOverridesAreChecked) {
  TempDir dir;
  const auto lines = preflight_lines("model: " + kModels +
                                         "/mixtral\noutput: out\npasses:\n"
                                         "  - drop-experts: {map: " +
                                         dir.file("map.json") + "}\n",
                                     {"eval.text=[" + dir.file("held.txt") + "]"});
  ASSERT_EQ(lines.size(), 2u) << ::testing::PrintToString(lines);
  EXPECT_EQ(lines[0],
            "r.yaml:4:25: passes.drop-experts.map: no such file: " + dir.file("map.json"));
  EXPECT_EQ(lines[1], "--set eval.text=[" + dir.file("held.txt") +
                          "]: eval.text[0]: no such file: " + dir.file("held.txt"));
  // An output path (tcess's bank) need not exist.
  EXPECT_TRUE(preflight_lines("model: " + kModels +
                              "/mixtral\noutput: out\ncalibration: "
                              "{sets: [{task: prose, path: " +
                              kProse +
                              "}]}\npasses:\n"
                              "  - tcess: {keep-count: 4, bank: " +
                              dir.file("bank.json") + "}\n")
                  .empty());
}

TEST(Preflight, LocationOfFallsBackToTheEnclosingField) {
  Recipe recipe;
  recipe.source = "r.yaml";
  recipe.locations["passes[0]"] = {0, 4, 5, "r.yaml:4:5"};
  EXPECT_EQ(recipe.location_of("passes[0].overrides[2].bits").prefix, "r.yaml:4:5");
  EXPECT_EQ(recipe.location_of("passes[1].bits").prefix, "r.yaml");
  EXPECT_EQ(recipe.location_of("passes[1].bits").rank, 1);
}

}  // namespace
}  // namespace lathe
