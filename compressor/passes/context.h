// What passes see in the decide and apply stages.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"
#include "compressor/passes/plan.h"

namespace lathe {

class WeightStore;
class StatsStore;

struct DecideContext {
  const ModelSpec& spec;
  const WeightStore& store;
  ExpertLayout layout;
  const StatsStore* stats = nullptr;  ///< null when the pipeline collected none
  const std::vector<ExpectedTensor>& tensors;  ///< every tensor of the input checkpoint, model order
  std::vector<std::string>& log;               ///< decisions worth telling the user (overrides used, …)
};

/// One tensor of the layer being applied.
struct LayerTensor {
  std::string source;  ///< name in the input checkpoint
  std::string name;    ///< name in the output checkpoint (differs after expert renumbering)
  TensorRole role;
  int64_t expert = -1;  ///< expert id in the OUTPUT numbering (-1: not a routed expert tensor)
  at::Tensor value;     ///< stored dtype, CPU
};

/// What apply recorded about one output tensor (manifest and report).
struct TensorRecord {
  std::string name, source;
  std::string format;  ///< "bf16" / "f32" / "rtn-int4-g128-sym" / "removed"
  int64_t bits = 16;
  int64_t group_size = 0;
  bool sym = true;
  double rel_err = -1;  ///< ‖W − Ŵ‖² / ‖W‖² (−1: not quantized)
};

struct LayerApplyContext {
  const ModelSpec& spec;  ///< of the INPUT model
  ExpertLayout layout;
  int64_t layer = 0;
  const CompressionPlan& plan;
  std::vector<LayerTensor>& tensors;
  std::vector<TensorRecord>& records;  ///< apply appends records of what it changed (removed, quantized)
  std::vector<std::string>& warnings;
};

}  // namespace lathe
