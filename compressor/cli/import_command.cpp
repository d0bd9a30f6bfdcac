// `lathe import FILE.gguf --out DIR`: a GGUF model as a Hugging Face checkpoint
// (export/gguf_import.h, docs/gguf.md) that stock transformers and every lathe command read.
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include <fmt/format.h>

#include "compressor/cli/commands.h"
#include "export/gguf_import.h"
#include "export/output_lock.h"

namespace lathe::cli {

void add_import_command(CLI::App& app) {
  struct Args {
    std::string gguf, out;
    ImportOptions options;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "import", "Write the Hugging Face checkpoint a GGUF file describes (docs/gguf.md)");
  cmd->add_option("gguf", args->gguf, "the .gguf file")->required();
  cmd->add_option("--out", args->out, "output directory (appears when complete)")->required();
  cmd->add_option("--dtype", args->options.dtype,
                  "bf16, or f32 to keep the dequantized values exactly")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  cmd->add_flag("--force", args->options.force, "replace an existing output directory");
  cmd->callback([args] {
    const OutputLock lock(args->out);
    const ImportResult r = import_gguf(args->gguf, args->out, args->options);
    std::cerr << fmt::format("[import] {}: {} model, {} tensors, {:.1f} MB ({})\n", r.dir,
                             r.architecture, r.tensors, r.bytes / 1e6, args->options.dtype);
  });
}

}  // namespace lathe::cli
