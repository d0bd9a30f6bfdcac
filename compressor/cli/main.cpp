// The `lathe` executable: parses the command line and maps exceptions to exit codes. This is the
// only place where an exception becomes an exit code (DESIGN.md, "Reliability rules").
#include <CLI/CLI.hpp>

#include <cstdlib>
#include <iostream>

#include "compressor/cli/commands.h"
#include "compressor/common/errors.h"
#include "compressor/common/threads.h"
#include "kernels/kernel_error.h"

int main(int argc, char** argv) {
  CLI::App app{"lathe: offline compression for dense and Mixture-of-Experts language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("lathe ") + LATHE_VERSION);
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads for LibTorch and OpenMP (0: all cores)")
      ->envname("LATHE_THREADS")
      ->check(CLI::NonNegativeNumber);
  app.parse_complete_callback([&threads] { lathe::configure_threads(threads); });
  lathe::cli::register_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : lathe::exit_code(lathe::ErrorKind::kConfig);
  } catch (const lathe::GateFailure& e) {
    std::cerr << "lathe: gate failed: " << e.what() << "\n";
    return 1;
  } catch (const lathe::Error& e) {
    std::cerr << "lathe: " << lathe::kind_name(e.kind()) << " error: " << e.what() << "\n";
    return lathe::exit_code(e.kind());
  } catch (const lathe::kernels::KernelError& e) {
    // kernels/ has its own error type (it includes nothing from compressor/): map its kinds.
    using Kind = lathe::kernels::KernelError::Kind;
    const lathe::ErrorKind kind = e.kind() == Kind::kUnsupported ? lathe::ErrorKind::kUnsupported
                                  : e.kind() == Kind::kRuntime   ? lathe::ErrorKind::kResource
                                                                 : lathe::ErrorKind::kInternal;
    std::cerr << "lathe: " << lathe::kind_name(kind) << " error: " << e.what() << "\n";
    return lathe::exit_code(kind);
  } catch (const std::bad_alloc&) {
    std::cerr << "lathe: resource error: out of memory\n";
    return lathe::exit_code(lathe::ErrorKind::kResource);
  } catch (const std::exception& e) {
    std::cerr << "lathe: internal error: " << e.what() << "\n";
    return lathe::exit_code(lathe::ErrorKind::kInternal);
  }
  return EXIT_SUCCESS;
}
