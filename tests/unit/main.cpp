// lathe_tests' entry point: GoogleTest's, after setting LibTorch's and OpenMP's thread count from
// LATHE_THREADS (default 1, like the Python tests: ctest runs two tests at once on two cores). The
// suite must pass at any count; `LATHE_THREADS=2 scripts/test.sh` runs it at two.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "compressor/common/threads.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  int threads = 1;
  if (const char* env = std::getenv("LATHE_THREADS"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (*end != '\0' || n < 1 || n > 1024) {
      std::fprintf(
          stderr, "lathe_tests: LATHE_THREADS: expected a whole number 1..1024, found '%s'\n", env);
      return 2;
    }
    threads = static_cast<int>(n);
  }
  lathe::configure_threads(threads);
  return RUN_ALL_TESTS();
}
