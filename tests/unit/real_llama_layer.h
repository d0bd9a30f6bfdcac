// Real calibration inputs for the weight-quantization and sparsity unit tests: layer 1 of the
// tiny llama (data/models/llama) on 16 × 128 tokens of prose, through lathe's tokenizer and
// forward.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace lathe {

struct LayerData {
  at::Tensor x;       // [N, in] real inputs of the linear
  at::Tensor weight;  // [out, in] f32
  at::Tensor sum;     // Σ x xᵀ, fp32
  int64_t tokens = 0;
  std::string name;
};

struct RealLayers {
  bool ok = false;  // false when the model or the corpus is missing
  LayerData gate, down;
};

/// Computed once per process.
const RealLayers& real_layers();

}  // namespace lathe
