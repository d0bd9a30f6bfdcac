// `lathe eval MODEL [--text FILE]... [--tasks FILE]... [--seq-len N] [--json OUT]`: held-out
// perplexity and multiple-choice accuracy (docs/eval.md).
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include <nlohmann/json.hpp>

#include "compressor/cli/commands.h"
#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/eval/eval_report.h"
#include "compressor/model/causal_lm.h"
#include "export/gguf_model_cache.h"

namespace lathe::cli {
namespace {

struct EvalArgs {
  std::string model;
  std::vector<std::string> texts, tasks;
  WindowOptions windows;
  std::string reference, json_out, device = "cpu", dtype = "f32", bos = "auto";
  int64_t micro_batch = 8;
};

void run_eval(const EvalArgs& args) {
  if (args.texts.empty() && args.tasks.empty())
    throw ConfigError("", "--text/--tasks", "give at least one file to evaluate");
  EvalRequest req;
  req.model = model_directory(args.model);  // a .gguf: its imported directory (docs/gguf.md)
  req.reference = args.reference.empty() ? "" : model_directory(args.reference);
  req.texts = args.texts;
  req.tasks = args.tasks;
  req.windows = args.windows;
  req.bos = args.bos;
  req.micro_batch = args.micro_batch;
  req.forward = parse_forward_options(args.device, args.dtype, "");
  nlohmann::json report = evaluate_model(req);
  report["model"] = args.model;  // as given; model_dir: what was read
  report["model_dir"] = req.model;
  if (!args.reference.empty()) report["reference"] = args.reference;
  if (!args.json_out.empty()) write_file_atomically(args.json_out, report.dump(2) + "\n");
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand(
      "eval", "Perplexity on held-out text and accuracy on multiple-choice task files");
  cmd->add_option("model", args->model,
                  "HF model directory, lathe output directory (quantized weights from quant/), "
                  "GPTQ / compressed-tensors export, or .gguf file")
      ->required();
  cmd->add_option("--text", args->texts, "held-out text file (repeatable)");
  cmd->add_option("--tasks", args->tasks,
                  "JSONL task file {context, choices, answer} (repeatable)");
  cmd->add_option("--seq-len", args->windows.seq_len, "tokens per perplexity window")
      ->capture_default_str();
  cmd->add_option("--stride", args->windows.stride,
                  "sliding-window stride (default: seq-len, non-overlapping)");
  cmd->add_option(
         "--bos", args->bos,
         "a BOS token before each window and task context: auto (when tokenizer_config.json has "
         "add_bos_token: true), on or off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  cmd->add_option(
      "--reference", args->reference,
      "also measure each --text file's KL divergence and top-1 agreement against this model "
      "(e.g. the original of a compressed output)");
  cmd->add_option("--json", args->json_out, "write the report as JSON (docs/eval.md)");
  cmd->add_option("--device", args->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "working precision: f32 or bf16")->capture_default_str();
  cmd->add_option("--micro-batch", args->micro_batch, "sequences per layer call")
      ->capture_default_str();
  cmd->callback([args] { run_eval(*args); });
}

}  // namespace lathe::cli
