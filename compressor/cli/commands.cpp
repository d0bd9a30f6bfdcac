#include "compressor/cli/commands.h"

#include <CLI/CLI.hpp>

namespace lathe::cli {

void register_commands(CLI::App& app) {
  add_inspect_command(app);
  add_forward_command(app);
  add_eval_command(app);
  add_calibrate_command(app);
  add_tensors_command(app);
  add_tokenize_command(app);
  add_compare_command(app);
  add_pipeline_commands(app);
  add_export_command(app);
  add_import_command(app);
  add_verify_command(app);
  add_route_command(app);
}

}  // namespace lathe::cli
