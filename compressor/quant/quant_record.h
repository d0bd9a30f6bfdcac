// One quantized tensor as a pass produced it: codes, scales, zeros and g_idx with their bits,
// group size, symmetry and activation bits. What apply writes to out/quant/ (export/quant_sidecar.h
// holds that file format), what the exports pack and what `lathe eval` dequantizes exactly:
//   W[.., r, c] = scales[.., r, g_idx[c]] · (codes[.., r, c] − zeros[.., r, g_idx[c]])  in fp32.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "compressor/quant/quantizer.h"

namespace lathe {

/// One quantized tensor (2-D, or 3-D for fused experts).
struct QuantRecord {
  std::string name;
  int64_t bits = 4, group_size = 128;
  bool sym = true;
  int64_t act_bits = 0;  ///< 8 for W8A8 (inputs int8 per token, dynamic)
  at::Tensor codes, scales, zeros, g_idx;

  /// The fp32 value (see the file comment), same rank as codes.
  at::Tensor dequantize() const;
  /// Expert `e` of a fused record (or the record itself, e = −1, when 2-D) as a QuantizedWeight
  /// and its g_idx.
  QuantizedWeight slice(int64_t e, at::Tensor* g_idx) const;
};

/// A 2-D record from a QuantizedWeight and its g_idx (undefined = contiguous groups).
QuantRecord make_quant_record(const std::string& name, const QuantizedWeight& q,
                              const at::Tensor& g_idx, int64_t act_bits = 0);
/// The records of the experts of one fused tensor, stacked along a new leading dimension.
QuantRecord stack_quant_records(const std::string& name, const std::vector<QuantRecord>& experts);

}  // namespace lathe
