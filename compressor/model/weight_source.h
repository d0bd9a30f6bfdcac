// Weights a checkpoint holds in another form than `<p>.weight` in its model dtype: quantized
// tensors of lathe's own sidecar (out/quant/, docs/output.md) or of an exported GPTQ /
// compressed-tensors directory. The forward engine asks a DequantizedWeights for each tensor
// before the WeightStore, so `lathe eval` measures the compressed model, dequantized on the fly
// one layer at a time (issue 6, item 3).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace lathe {

/// Supplies the dequantized value of the tensors it holds (by HF tensor name, e.g.
/// "model.layers.0.self_attn.q_proj.weight" or a fused "...mlp.experts.gate_up_proj").
/// Implementations are read-only after construction and safe to call from several threads.
class DequantizedWeights {
 public:
  virtual ~DequantizedWeights() = default;
  /// True when `name` is stored quantized here (the WeightStore need not hold it).
  virtual bool has(const std::string& name) const = 0;
  /// The tensor as float32 on the CPU, in the shape config.json implies for `name`: exactly
  /// scale · (code − zero) of the stored codes (no rounding to the model dtype). DataError naming
  /// the file and tensor for malformed data.
  virtual at::Tensor load(const std::string& name) const = 0;
  /// Activation bits the format prescribes for the input of this linear: 0 (weights only) or 8
  /// (int8, symmetric, per token, dynamic: W8A8).
  virtual int64_t activation_bits(const std::string& name) const = 0;
  /// Tell the source that the layer holding `names` is done (release mapped pages).
  virtual void release(const std::vector<std::string>& names) const = 0;
  /// A short description for messages: "lathe sidecar out/quant", "GPTQ 4-bit export".
  virtual std::string describe() const = 0;
};

}  // namespace lathe
