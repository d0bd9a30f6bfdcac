// The observe stage (DESIGN.md stage 1): calibration set → one layer-streaming forward with the
// statistics collectors attached → fingerprinted HDF5 statistics store. `lathe calibrate` and,
// later, `lathe run` call this; docs/calibrate.md describes the store it writes.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "calibrate/calibration_set.h"
#include "calibrate/collectors.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/streaming.h"

namespace lathe {

struct CalibrateRequest {
  std::string model_dir;
  std::string out;  ///< the statistics store (HDF5)
  CalibrationOptions calibration;
  CollectorOptions collectors;
  ForwardOptions forward;
  StreamingOptions streaming;
  bool force = false;       ///< replace a store computed from other inputs
  bool check_only = false;  ///< never compute: succeed when `out` is current, else throw
};

struct CalibrateResult {
  bool reused = false;         ///< `out` already held every statistic for these inputs
  int64_t layer_forwards = 0;  ///< decoder-layer forward calls this run made (0 when reused)
  int64_t statistics = 0;      ///< entries the store holds for this run
  int64_t samples = 0, tokens = 0;
  std::vector<std::string> removed_temporaries;  ///< files of killed runs that were deleted
};

/// Told after each decoder layer: (layer, layers, statistics written, seconds for the layer).
using CalibrateProgress = std::function<void(int64_t, int64_t, int64_t, double)>;

/// Runs the observe stage. When `out` exists and every statistic it must hold is current (same
/// weights upstream of each layer, same calibration fingerprint, same collector options), nothing
/// is computed (result.reused). When it exists but was made from other inputs: DataError
/// (where = out) listing each changed input ("calibration data changed: code.txt: content
/// changed", "model weights changed (first in decoder layer 2 …)", "collector options changed"),
/// unless `force`. check_only never writes: ResourceError when `out` does not exist. Otherwise the
/// store is written atomically (StatsStore) and `.tmp-<pid>` files of dead lathe processes for
/// `out` are removed first. Errors of the model, tokenizer, calibration files and HDF5 propagate.
CalibrateResult run_calibration(const CalibrateRequest& request,
                                const CalibrateProgress& progress = {});

}  // namespace lathe
