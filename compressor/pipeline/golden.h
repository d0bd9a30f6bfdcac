// Recording of the golden vectors (calibrate/golden_store.h, docs/verify.md) during the apply
// stage: a few real token rows are embedded once and carried through the layers as they are
// compressed (like the calibration stream, but only R rows, so it costs next to nothing); for each
// layer the recorder runs the compressed layer with lathe's exact dequantized weights, keeps the
// inputs every quantized or pruned linear sees and computes that linear's output act(x) · Wᵀ + b,
// plus the MoE block's output, then moves the rows on to the next layer.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "calibrate/golden_store.h"
#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"
#include "compressor/passes/context.h"
#include "compressor/quant/quant_record.h"

namespace lathe {

class WeightStore;

struct GoldenOptions {
  int64_t rows = 16;  ///< token rows per layer; 0 = no golden vectors
  int64_t experts =
      -1;  ///< routed experts recorded per MoE layer (the most routed among the rows); -1 = all
};

class GoldenRecorder {
 public:
  /// `hidden` [1, R, d]: the embedded rows (golden_rows). `source` says where they came from.
  GoldenRecorder(const ModelSpec& out_spec, ExpertLayout layout, GoldenOptions options,
                 at::Tensor hidden, std::string source);

  /// Layer `layer` after its passes: `tensors` hold the final (exact, dequantized) values,
  /// `quant` the records of the quantized ones and `records` the layer's manifest records (the
  /// pruned ones carry their sparsity). Returns the layer's golden vectors for its quantized or
  /// pruned linears (none when nothing in it is) and advances the rows through the layer.
  GoldenLayer record(int64_t layer, const std::vector<LayerTensor>& tensors,
                     const std::vector<QuantRecord>& quant,
                     const std::vector<TensorRecord>& records = {});

 private:
  const ModelSpec& spec_;
  ExpertLayout layout_;
  GoldenOptions options_;
  at::Tensor hidden_;
  std::string source_;
};

/// The golden rows' embeddings [1, R, d] (fp32): the first `rows` real tokens of the first
/// calibration sample when `calib_ids` is defined ([N, T] with `calib_valid`), else `rows` token
/// ids drawn from a fixed seed. `source` receives a description ("calibration sample 0, 16
/// tokens").
at::Tensor golden_rows(const ModelSpec& spec, const WeightStore& store, const at::Tensor& calib_ids,
                       const at::Tensor& calib_valid, int64_t rows, std::string* source);

}  // namespace lathe
