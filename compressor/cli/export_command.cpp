// `lathe export OUT --format hf|gptq|compressed-tensors [--pad-experts] [--force]`: the exports of
// a lathe output directory, OUT/hf, OUT/gptq or OUT/ct (docs/export.md).
#include <CLI/CLI.hpp>

#include <iostream>

#include <fmt/format.h>

#include "compressor/cli/commands.h"
#include "export/output_lock.h"
#include "export/quant_export.h"

namespace lathe::cli {

void add_export_command(CLI::App& app) {
  struct Args {
    std::string out, format;
    bool force = false, pad_experts = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "export",
      "Write an HF (OUT/hf), packed GPTQ (OUT/gptq) or compressed-tensors (OUT/ct) "
      "checkpoint of a lathe output directory");
  cmd->add_option("out", args->out, "lathe output directory (lathe_manifest.json, model/, quant/)")
      ->required();
  cmd->add_option("--format", args->format,
                  "hf, gptq, compressed-tensors or qwen2-moe (a cmoe carve of llama / qwen2)")
      ->required();
  cmd->add_flag("--pad-experts", args->pad_experts,
                "pad expert counts that differ between layers with never-selected dummy experts "
                "(routers with a "
                "selection bias only, e.g. DeepSeek-V3)");
  cmd->add_flag("--force", args->force, "replace an existing export directory");
  cmd->callback([args] {
    const ExportFormat format = parse_export_format(args->format, "", "--format");
    ExportOptions options;
    options.force = args->force;
    options.pad_experts = args->pad_experts;
    const OutputLock lock(args->out);  // the output directory the export adds to
    const ExportResult r = export_checkpoint(args->out, format, options);
    for (const auto& line : r.log) std::cerr << "[export] " << line << "\n";
    if (format == ExportFormat::kHf || format == ExportFormat::kQwen2Moe) {
      std::cerr << fmt::format("[export] {}: {} quantized modules stored dequantized; {:.2f} MB\n",
                               r.dir, r.unpacked_modules, r.bytes / 1e6);
    } else {
      std::cerr << fmt::format(
          "[export] {}: {} modules packed, {} stored dequantized{}; {:.2f} MB\n", r.dir,
          r.packed_modules, r.unpacked_modules, sparse24_note(r), r.bytes / 1e6);
    }
  });
}

}  // namespace lathe::cli
