// Registration of every `lathe` subcommand. Each command lives in its own file under
// compressor/cli.
#pragma once

namespace CLI {
class App;
}

#include <string>

#include "calibrate/calibration_set.h"

namespace lathe::cli {

/// Adds every subcommand to `app`. A subcommand's callback runs during `app.parse()` and reports
/// failure by throwing a lathe::Error; only main() turns exceptions into exit codes.
void register_commands(CLI::App& app);

/// `lathe inspect MODEL [--json] [--tensors]` (inspect_command.cpp).
void add_inspect_command(CLI::App& app);

/// `lathe tensors MODEL [--json] [--sha256] [--as f32]` (tensors_command.cpp).
void add_tensors_command(CLI::App& app);

/// `lathe tokenize TOKENIZER [--text S | --file F | --jsonl F] [--decode] [--json]`
/// (tokenize_command.cpp).
void add_tokenize_command(CLI::App& app);

/// `lathe forward MODEL --tokens F --out LOGITS` (forward_command.cpp).
void add_forward_command(CLI::App& app);

/// `lathe eval MODEL [--text F]... [--tasks F]...` (eval_command.cpp).
void add_eval_command(CLI::App& app);

/// `lathe calibrate MODEL --data TASK=PATH... --out STATS` and `lathe coverage STATS`
/// (calibrate_command.cpp).
void add_calibrate_command(CLI::App& app);

/// `lathe compare A B [--max-ppl-increase 3%] [--max-acc-drop 1] [--json OUT]` and
/// `lathe report DIR_OR_REPORT_JSON` (compare_command.cpp).
void add_compare_command(CLI::App& app);

/// `lathe export OUT --format gptq|compressed-tensors [--force]` (export_command.cpp).
void add_export_command(CLI::App& app);

/// `lathe import FILE.gguf --out DIR [--dtype bf16|f32] [--force]` (import_command.cpp;
/// docs/gguf.md).
void add_import_command(CLI::App& app);

/// `lathe verify DIR [--backend ...] [--json FILE]` (verify_command.cpp).
void add_verify_command(CLI::App& app);

/// `lathe route MODEL --bank BANK (--prompt TEXT | --prompts FILE) [--out DIR]` (route_command.cpp;
/// docs/tcess.md).
void add_route_command(CLI::App& app);

/// `lathe passes` and `lathe apply MODEL --plan PLAN --out DIR` (pipeline_commands.cpp).
void add_pipeline_commands(CLI::App& app);

/// "--data TASK=PATH" or "--data PATH.jsonl" (tasks from the records) as a calibration source
/// (calibrate_command.cpp; `lathe calibrate` and `lathe apply` share it). ConfigError otherwise.
CalibrationSource parse_data_option(const std::string& spec);

}  // namespace lathe::cli
