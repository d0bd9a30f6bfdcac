// The decide and apply stages (DESIGN.md stages 2 and 3) and the output directory they fill
// (DESIGN.md "Output directory"; docs/plan.md, docs/output.md).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "calibrate/calibration_set.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/streaming.h"
#include "compressor/passes/context.h"
#include "compressor/passes/pass.h"
#include "compressor/passes/plan.h"
#include "compressor/pipeline/golden.h"
#include "compressor/pipeline/instrument.h"

namespace lathe {

/// What decide passes that run the model themselves (naee, diep: Pass::decide_needs_model) need.
struct DecideRequest {
  std::optional<CalibrationOptions>
      calibration;  ///< required when such a pass runs (ConfigError otherwise)
  ForwardOptions forward;
  StreamingOptions streaming;
};

/// Runs every pass's decide hook in pipeline order on the model in `model_dir` (statistics from
/// `stats_path` when not empty) and returns the plan. `log` receives the passes' notes. When a pass
/// has decide_needs_model(), the model is opened and `data.calibration` tokenized for it.
CompressionPlan run_decide(const std::string& model_dir, const std::vector<PassInstance>& passes,
                           const std::string& pipeline, const std::string& stats_path,
                           std::vector<std::string>* log, const DecideRequest& data = {});

struct ApplyRequest {
  std::string model_dir;
  std::string out_dir;
  std::string pipeline;  ///< canonical pipeline string (manifest, resume check)
  std::vector<PassInstance> passes;
  CompressionPlan plan;
  /// FORMATS.md §7 weights fingerprint of `model_dir` when the caller already computed it (lathe
  /// run: decide just did); empty: computed here (it reads every weight).
  std::string weights_fingerprint;
  bool force = false;  ///< replace an existing finished output directory
  bool fresh = false;  ///< discard a partial run made from other inputs instead of refusing
  /// Rename `<out_dir>.partial` to `out_dir` at the end. `lathe run` sets false, adds evaluation
  /// and the report, then publishes itself (publish_output).
  bool publish = true;
  /// Called after layer i's shard is on disk and the resume state records it. (Tests also inject a
  /// SIGKILL there with the environment variable LATHE_FAULT_KILL_AFTER_LAYER=i, docs/output.md.)
  std::function<void(int64_t)> after_layer;
  /// Calibration data for passes that need the layers' inputs (gptq, smoothquant): the samples
  /// are embedded once and streamed through the layers as they are compressed (each layer's inputs
  /// are the outputs of the already-compressed layers before it). Required when such a pass runs
  /// (ConfigError otherwise); its fingerprint joins the resume check.
  std::optional<CalibrationOptions> calibration;
  ForwardOptions forward;      ///< working precision and device of those forwards
  StreamingOptions streaming;  ///< micro-batch and activation buffer of those forwards
  /// Golden vectors written to verify/ for `lathe verify` (compressor/pipeline/golden.h); rows 0:
  /// none.
  GoldenOptions golden;
  /// Hooks around each pass step of each layer (instrument.h); may be null.
  StageObserver* observer = nullptr;
};

struct ApplyResult {
  int64_t resumed_layers = 0;  ///< layers found finished in a partial run and skipped
  int64_t written_layers = 0;
  uint64_t bytes_before = 0, bytes_after = 0;
  std::vector<TensorRecord> records;  ///< every output tensor plus every removed one
  std::vector<StageTiming> timings;   ///< per pass step, in pipeline order (instrument.h)
  std::vector<std::string> warnings;
  std::vector<double> layer_seconds;
};

/// Applies `plan` layer by layer (one layer resident), writing `out_dir` (layout in
/// docs/output.md). The directory is built as `<out_dir>.partial` and renamed into place when
/// complete; a run killed at any point and started again with the same request resumes after the
/// last finished layer and produces byte-identical model files, plan and manifest. A partial run of
/// other inputs (pipeline, weights or plan) is refused with DataError naming what changed, unless
/// `fresh`. An existing `out_dir` is refused (ConfigError) unless `force`.
ApplyResult run_apply(const ApplyRequest& request,
                      const std::function<void(int64_t, int64_t)>& progress = {});

/// Renames `<out_dir>.partial` to `out_dir` (removing its resume state), replacing an existing
/// `out_dir` (callers check --force first).
void publish_output(const std::string& out_dir);

}  // namespace lathe
