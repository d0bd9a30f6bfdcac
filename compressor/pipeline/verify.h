// `lathe verify DIR` (DESIGN.md stage 5; docs/verify.md): replays the golden vectors that apply
// recorded (verify/layer_L.h5, calibrate/golden_store.h) through an export's packed files with the
// kernels of kernels/qlinear.h, on every available backend, and compares with lathe's outputs.
// The export is read as a deployment runtime would read it (the packed tensors of its shards and
// its quantization_config), never through lathe's own sidecar.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/qlinear.h"

namespace lathe {

struct VerifyOptions {
  std::vector<kernels::Backend> backends;  ///< empty: every available backend
  int threads = 0;                         ///< 0: the process default
};

/// One module (or MoE block) on one backend.
struct VerifyCheck {
  std::string backend;
  double nmse = 0, max_abs = 0, bound = 0;
  bool passed = false;
};

/// One golden entry of one export.
struct VerifyCase {
  std::string export_dir;
  int64_t layer = -1;
  std::string name;    ///< module, or "model.layers.L.moe" for a MoE block
  std::string format;  ///< e.g. "gptq-int4-g128", "ct-packed-int4-g32", "ct-int8-w8a8", "moe"
  std::string status;  ///< "ok", "fail" or "skip"
  std::string note;    ///< why it failed or was skipped
  std::vector<VerifyCheck> checks;
};

struct VerifyResult {
  std::vector<std::string> exports;
  std::vector<VerifyCase> cases;
  int64_t passed = 0, failed = 0, skipped = 0;
};

/// The normalised-MSE bound a backend must meet for a format: fp32 CPU kernels 1e-8 (MoE blocks
/// 1e-6), CUDA with fp16 activations 1e-5, CUDA int8 and fp32 paths 1e-8, CUDA MoE blocks and every
/// W8A8 MoE block ("moe-w8a8") 1e-4: re-quantizing recomputed expert activations to int8 may move a
/// rounding tie.
double verify_bound(kernels::Backend backend, const std::string& format);

/// Verifies `dir`: an export (config.json with a quantization_config; golden vectors in dir/verify)
/// or a lathe output directory holding exports (gptq/, ct/; golden vectors in their verify/ or in
/// dir/verify). `on_case` sees each case as it finishes. ConfigError when `dir` is neither or no
/// golden vectors are found; DataError for a malformed golden file or export config. A module
/// whose packed tensors are malformed, or whose shapes or activation scheme disagree with the
/// golden vectors, is a failed case (named), not an exception.
VerifyResult verify_exports(const std::string& dir, const VerifyOptions& options,
                            const std::function<void(const VerifyCase&)>& on_case = {});

}  // namespace lathe
