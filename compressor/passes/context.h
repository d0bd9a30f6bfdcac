// What passes see in the decide and apply stages.
#pragma once

#include <ATen/core/Tensor.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"
#include "compressor/passes/plan.h"
#include "compressor/quant/quant_record.h"

namespace lathe {

class WeightStore;
class StatsStore;
class TapObserver;
class CausalLM;
struct CalibrationSet;
struct StreamingOptions;

/// What a pass with decide_needs_model() gets: the opened model (layer-streaming; working dtype and
/// device as the recipe says) and the calibration set, already tokenized.
struct DecideModel {
  const CausalLM& model;
  const CalibrationSet& calibration;
  const StreamingOptions& streaming;
};

struct DecideContext {
  const ModelSpec& spec;
  const WeightStore& store;
  ExpertLayout layout;
  const StatsStore* stats = nullptr;  ///< null when the pipeline collected none
  const std::vector<ExpectedTensor>&
      tensors;                    ///< every tensor of the input checkpoint, model order
  std::vector<std::string>& log;  ///< decisions worth telling the user (overrides used, …)
  /// upstream_weight_fingerprints of the input, per decoder layer: what statistics are checked
  /// against (computed once, with the plan's weights fingerprint, from one read of the weights).
  const std::vector<std::string>& upstream_weights;
  /// Set only when some pass has decide_needs_model() (null otherwise).
  const DecideModel* model = nullptr;
};

/// One tensor of the layer being applied.
struct LayerTensor {
  std::string source;  ///< name in the input checkpoint
  std::string name;    ///< name in the output checkpoint (differs after expert renumbering)
  TensorRole role;
  int64_t expert = -1;  ///< expert id in the OUTPUT numbering (-1: not a routed expert tensor)
  /// CPU. Loaded in the stored dtype; a pass may replace it by an fp32 tensor (a quantizing pass
  /// puts the exact dequantized value here, which later passes and the next layer's inputs see).
  /// The shard gets it converted to `stored`.
  at::Tensor value;
  at::ScalarType stored = at::kBFloat16;  ///< dtype in the input checkpoint (and the output shard)
};

/// What apply recorded about one output tensor (manifest and report).
struct TensorRecord {
  std::string name, source;
  /// "BF16" / "F32" / "rtn-int4-g128-sym" / "gptq-int4-g128-sym" / "removed"; empty: the stored
  /// dtype's, filled in by the apply stage (a pruned tensor, stored dense)
  std::string format;
  int64_t bits = 16;
  int64_t group_size = 0;
  bool sym = true;
  double rel_err = -1;  ///< ‖W − Ŵ‖² / ‖W‖² (−1: not quantized)
  /// Calibration-aware methods (gptq): extra facts for the manifest and report, e.g.
  /// {"tokens": n, "h_source": "routed", "rule": "n_e ≥ max(256, 0.5% of tokens)", "damp": 0.01,
  ///  "retries": 0, "fallback": false, "loss_per_token": …, "h_rel_err": …}. Null otherwise.
  nlohmann::json details;
  /// A sparsity pass zeroed weights of it (docs/sparsity.md): {"method", "pattern", "ratio",
  /// "zeros" (the fraction now zero), "rel_err" (of the pruning alone), …}. Null: dense. A later
  /// quantization keeps it.
  nlohmann::json sparsity;
};

/// The calibration inputs of the layer being applied, for passes with needs_activations(). `run`
/// replays the layer AS IT IS NOW (ctx.tensors, including what earlier passes and earlier steps of
/// this pass changed) on every calibration sequence, reporting taps (with layer = ctx.layer) to
/// `observer`. Each call gives what one full forward of the layer over the calibration set would;
/// it resumes from values an earlier call computed when no tensor upstream of them changed since
/// (compressor/pipeline/layer_replay.h). So a pass changes a tensor only by assigning LayerTensor::
/// value or with ATen in-place ops (which bump its version counter), never by writing through
/// data_ptr(), which that check cannot see.
struct LayerActivations {
  std::function<void(TapObserver& observer)> run;
  int64_t sequences = 0;  ///< calibration sequences
  int64_t tokens = 0;     ///< real (unpadded) calibration tokens
};

struct LayerApplyContext {
  const ModelSpec& spec;  ///< of the INPUT model
  ExpertLayout layout;
  int64_t layer = 0;
  const CompressionPlan& plan;
  std::vector<LayerTensor>& tensors;
  std::vector<TensorRecord>&
      records;  ///< apply appends records of what it changed (removed, quantized)
  std::vector<std::string>& warnings;
  /// Codes, scales, zeros of every tensor a pass quantized (written to out/quant/); a pass that
  /// quantizes `name` appends its QuantRecord here (replacing an earlier one of the same name).
  std::vector<QuantRecord>& quant;
  /// Null unless some pass of the pipeline needs activations and calibration data was given.
  const LayerActivations* activations = nullptr;
  /// The model spec of the OUTPUT for this layer (expert counts after surgery) — what `run` uses.
  const ModelSpec* out_spec = nullptr;
};

}  // namespace lathe
