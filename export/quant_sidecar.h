// lathe's own record of quantized tensors: out/quant/ beside out/model/ (docs/output.md
// "Quantized tensors"). out/model/ holds every quantized weight dequantized and rounded to the
// model dtype (a plain HF checkpoint); out/quant/ holds the codes, scales, zeros and g_idx that the
// exports pack and that `lathe eval` dequantizes exactly. One shard per decoder layer, named like
// the model shard of that layer, and an index (model.safetensors.index.json) over them.
//
// For a quantized tensor named N (the output checkpoint's name, e.g.
// "model.layers.0.self_attn.q_proj.weight", or a fused "...mlp.experts.gate_up_proj" with a leading
// expert dimension E):
//   N.codes    U8  [out, in]  ([E, out, in] fused)  codes in [0, 2^bits − 1], original column order
//   N.scales   F32 [out, G]   ([E, out, G])         G = in / group_size (1 for −1)
//   N.zeros    I32 [out, G]   ([E, out, G])         symmetric: 2^(bits−1); asymmetric: in [1,
//   2^bits − 1] N.g_idx    I32 [in]       ([E, in])             group of each input column
//   N.qparams  I32 [4]                              bits, group_size, sym (0/1), activation bits
//   (0/8)
// and the value is  W[.., r, c] = scales[.., r, g_idx[c]] · (codes[.., r, c] − zeros[.., r,
// g_idx[c]]) in fp32 (exact: a scale times a small integer).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "compressor/model/weight_source.h"
#include "compressor/quant/quant_record.h"
#include "export/safetensors_writer.h"

namespace lathe {

/// Appends the five tensors of `r` to `out` (views of contiguous CPU tensors that `keep` owns).
void append_quant_tensors(const QuantRecord& r, std::vector<TensorBytes>* out,
                          std::vector<at::Tensor>* keep);

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
