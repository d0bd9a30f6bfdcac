// lathe_assign: balanced_assignment (compressor/quant/balanced_assignment.h) over stdin, for the
// Python tests. Reads `R k capacity` and then R·k costs (whitespace separated, row-major) and
// writes the bin of each row, one per line. A lathe::Error prints `error: <what>` to stderr and
// exits with its kind's code (config 2, data 3).
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include "compressor/common/errors.h"
#include "compressor/quant/balanced_assignment.h"

namespace {

constexpr const char* kWhere = "stdin";

int64_t read_size(const char* field) {
  std::string token;
  if (!(std::cin >> token)) throw lathe::ConfigError(kWhere, field, "missing from the header");
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(token.c_str(), &end, 10);
  if (errno != 0 || end == token.c_str() || *end != '\0') {
    throw lathe::ConfigError(kWhere, field, "expected a whole number, got '" + token + "'");
  }
  return static_cast<int64_t>(value);
}

int run() {
  const int64_t rows = read_size("R");
  const int64_t bins = read_size("k");
  const int64_t capacity = read_size("capacity");
  std::vector<double> cost;
  std::string token;
  while (std::cin >> token) {
    char* end = nullptr;
    const double value = std::strtod(token.c_str(), &end);
    if (end == token.c_str() || *end != '\0') {
      throw lathe::DataError(
          kWhere, "cost",
          "value " + std::to_string(cost.size()) + " ('" + token + "') is not a number");
    }
    cost.push_back(value);
  }
  // Sizes out of range are balanced_assignment's to reject; here only the count of the costs.
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (rows >= 1 && bins >= 1 && rows <= kMax && bins <= kMax &&
      static_cast<int64_t>(cost.size()) != rows * bins) {
    throw lathe::DataError(kWhere, "cost",
                           "expected R*k = " + std::to_string(rows * bins) +
                               " costs after the header, got " + std::to_string(cost.size()));
  }
  const std::vector<int32_t> bin_of = lathe::balanced_assignment(cost, rows, bins, capacity);
  std::string out;
  out.reserve(bin_of.size() * 4);
  for (const int32_t b : bin_of) out += std::to_string(b) + '\n';
  std::fwrite(out.data(), 1, out.size(), stdout);
  return std::fflush(stdout) == 0 ? 0 : lathe::exit_code(lathe::ErrorKind::kResource);
}

}  // namespace

int main() {
  std::ios::sync_with_stdio(false);
  try {
    return run();
  } catch (const lathe::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return lathe::exit_code(e.kind());
  }
}
