// lathe's own record of quantized tensors: out/quant/ beside out/model/ (docs/output.md
// "Quantized tensors"). out/model/ holds every quantized weight dequantized and rounded to the model
// dtype (a plain HF checkpoint); out/quant/ holds the codes, scales, zeros and g_idx that the
// exports pack and that `lathe eval` dequantizes exactly. One shard per decoder layer, named like
// the model shard of that layer, and an index (model.safetensors.index.json) over them.
//
// For a quantized tensor named N (the output checkpoint's name, e.g.
// "model.layers.0.self_attn.q_proj.weight", or a fused "...mlp.experts.gate_up_proj" with a leading
// expert dimension E):
//   N.codes    U8  [out, in]  ([E, out, in] fused)  codes in [0, 2^bits − 1], original column order
//   N.scales   F32 [out, G]   ([E, out, G])         G = in / group_size (1 for −1)
//   N.zeros    I32 [out, G]   ([E, out, G])         symmetric: 2^(bits−1); asymmetric: in [1, 2^bits − 1]
//   N.g_idx    I32 [in]       ([E, in])             group of each input column
//   N.qparams  I32 [4]                              bits, group_size, sym (0/1), activation bits (0/8)
// and the value is  W[.., r, c] = scales[.., r, g_idx[c]] · (codes[.., r, c] − zeros[.., r, g_idx[c]])
// in fp32 (exact: a scale times a small integer).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "compressor/model/weight_source.h"
#include "compressor/quant/quantizer.h"
#include "export/safetensors_writer.h"

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
QuantRecord make_quant_record(const std::string& name, const QuantizedWeight& q, const at::Tensor& g_idx,
                              int64_t act_bits = 0);
/// The records of the experts of one fused tensor, stacked along a new leading dimension.
QuantRecord stack_quant_records(const std::string& name, const std::vector<QuantRecord>& experts);

/// Appends the five tensors of `r` to `out` (views of contiguous CPU tensors that `keep` owns).
void append_quant_tensors(const QuantRecord& r, std::vector<TensorBytes>* out, std::vector<at::Tensor>* keep);

/// Reads out/quant/ (or any directory with such an index): the DequantizedWeights the engine uses
/// for a lathe output directory, and the source of the exports.
class QuantSidecar : public DequantizedWeights {
 public:
  /// Opens `dir`; ResourceError when it has no index, DataError for malformed shards.
  explicit QuantSidecar(const std::string& dir);
  ~QuantSidecar() override;
  bool has(const std::string& name) const override;
  at::Tensor load(const std::string& name) const override;
  int64_t activation_bits(const std::string& name) const override;
  void release(const std::vector<std::string>& names) const override;
  std::string describe() const override;
  /// The record of `name`, every tensor checked (dtype, shapes, value ranges): DataError naming
  /// the file and the tensor otherwise.
  QuantRecord record(const std::string& name) const;
  /// Every quantized tensor's name, sorted.
  std::vector<std::string> names() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The sidecar of a lathe output directory `dir` (dir/quant), or nullptr when it has none.
std::shared_ptr<const QuantSidecar> open_quant_sidecar(const std::string& out_dir);

}  // namespace lathe
