// lathe-kernels: the kernel verification harness and benchmarks (kernels/README.md).
//   lathe-kernels test [--backend B]... [--filter S] [--threads N]   exit 1 on any failure
//   lathe-kernels perf [--backend B]... [--filter S] [--threads N]   GB/s, TFLOP/s, copy fraction
//   lathe-kernels list                                               coverage matrix
#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "kernels/harness/harness.h"

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: lathe-kernels {test|perf|list} [--backend cpu-ref|cpu-fast|cuda]... "
               "[--filter SUBSTRING] [--threads N]\n");
  return 2;
}

bool parse_backend(const std::string& s, lathe::kernels::Backend* b) {
  using lathe::kernels::Backend;
  for (Backend c : {Backend::kCpuRef, Backend::kCpuFast, Backend::kCuda})
    if (s == lathe::kernels::backend_name(c)) {
      *b = c;
      return true;
    }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lathe::kernels::harness;
  if (argc < 2) return usage();
  const std::string mode = argv[1];
  Options opt;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) return usage();
    const std::string v = argv[++i];
    if (a == "--backend") {
      lathe::kernels::Backend b;
      if (!parse_backend(v, &b)) {
        std::fprintf(stderr, "unknown backend '%s' (cpu-ref, cpu-fast, cuda)\n", v.c_str());
        return 2;
      }
      opt.backends.push_back(b);
    } else if (a == "--filter") {
      opt.filter = v;
    } else if (a == "--threads") {
      opt.threads = std::atoi(v.c_str());
      if (opt.threads <= 0) return usage();
    } else {
      return usage();
    }
  }
  if (opt.threads > 0) omp_set_num_threads(opt.threads);
  try {
    if (mode == "test") return run_tests(opt) == 0 ? 0 : 1;
    if (mode == "perf") return run_perf(opt);
    if (mode == "list") return run_list(opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lathe-kernels: %s\n", e.what());
    return 1;
  }
  return usage();
}
