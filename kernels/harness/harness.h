// The kernel verification harness (STYLE.md "The kernel harness", test-backend-ops style): each
// case declares its parameters and a seed, builds random packed inputs, runs on every selected
// backend, compares with cpu-ref by NMSE against a per-format-and-backend bound, fails on NaN or a
// mismatched Inf, and checks guard values around every output buffer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/harness/packer.h"
#include "kernels/qlinear.h"

namespace lathe::kernels::harness {

/// One qlinear case: y[m, out] = act(x[m, in]) · Wᵀ + bias.
struct LinearCase {
  WeightParams weight;
  int64_t m = 1;
  uint64_t seed = 1;
};

/// One MoE-block case: `experts` routed experts gate/up [inter, hidden], down [hidden, inter] in
/// `weight`'s format (its out/in are ignored), routing as given, optional shared expert and gate.
struct MoeCase {
  WeightParams weight;
  int64_t m = 1, hidden = 0, inter = 0, experts = 0;
  MoeRouting routing;  ///< selection_bias is filled by the harness when `selection_bias`
  bool selection_bias = false;
  bool shared = false, shared_gate = false;
  uint64_t seed = 1;
};

struct Case {
  bool is_moe = false;
  LinearCase linear;
  MoeCase moe;
  /// "gptq b4 g128 sym" etc.: the aligned description printed on every line.
  std::string describe() const;
  /// "GEMV" (m = 1) or "GEMM".
  const char* shape_kind() const;
  /// Coverage key: format and bits ("gptq-b4", "ct-int8-w8a8", "moe", ...).
  std::string coverage_key() const;
};

/// The test cases: every exported format × {GEMV, GEMM}, odd shapes, group −1, act-order g_idx,
/// scale dtypes, the MoE block (softmax top-2 renorm; sigmoid with bias and groups; shared expert
/// with gate).
std::vector<Case> test_cases();
/// The perf cases: large GEMV / GEMM (weights well beyond the L3).
std::vector<Case> perf_cases();

/// NMSE bound of `backend` against cpu-ref for a case (documented in kernels/README.md).
double nmse_bound(const Case& c, Backend backend);

struct Options {
  std::vector<Backend> backends;  ///< empty = every backend compiled in
  std::string filter;             ///< substring of the description; empty = all
  int threads = 0;                ///< 0 = OpenMP default
};

/// Runs the test cases; prints one line per case and backend and a summary. Returns failures.
int run_tests(const Options& opt);
/// Times the perf cases (and the copy kernels) and prints GB/s, TFLOP/s and the copy fraction.
int run_perf(const Options& opt);
/// Prints the coverage matrix: format × {GEMV, GEMM} × backend, and which have no case.
int run_list(const Options& opt);

}  // namespace lathe::kernels::harness
