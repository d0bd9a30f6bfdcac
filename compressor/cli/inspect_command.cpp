// `lathe inspect MODEL [--json] [--samples N] [--seq-len T] [--check-finite]`
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "compressor/cli/commands.h"
#include "compressor/model/model_summary.h"
#include "export/gguf_model_cache.h"

namespace lathe::cli {

void add_inspect_command(CLI::App& app) {
  struct Args {
    std::string model;
    bool json = false;
    SummaryOptions options;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "inspect",
      "Describe a model directory: layout, experts per layer, parameters by category, "
      "bytes by dtype, memory a streaming run needs");
  cmd->add_option("model", args->model,
                  "HF model directory (config.json, *.safetensors) or .gguf file")
      ->required();
  cmd->add_flag("--json", args->json, "print the JSON report (docs/inspect.md) instead of text");
  cmd->add_option("--samples", args->options.samples,
                  "calibration sequences assumed by the memory estimate")
      ->capture_default_str();
  cmd->add_option("--seq-len", args->options.seq_len,
                  "tokens per sequence assumed by the memory estimate")
      ->capture_default_str();
  cmd->add_flag("--check-finite", args->options.check_finite,
                "scan every weight for NaN/Inf (reads all weights)");
  cmd->callback([args] {
    args->model = model_directory(args->model);
    const ModelSummary summary = summarize_model(args->model, args->options);
    if (args->json) {
      std::cout << summary_to_json(summary).dump(2) << "\n";
    } else {
      std::cout << summary_to_text(summary);
    }
  });
}

}  // namespace lathe::cli
