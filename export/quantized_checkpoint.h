// Readers of packed checkpoints for evaluation: an HF directory whose config.json has a
// `quantization_config` of quant_method "gptq" (FORMATS.md §3, v1) or "compressed-tensors"
// (FORMATS.md §4, pack-quantized / int-quantized), as lathe exports them (docs/export.md) or as
// other tools write them within those layouts. Each is a DequantizedWeights: the forward engine
// asks it for `<module>.weight` and gets scale · (code − zero) in fp32, exactly as stored.
//
// The files are untrusted: a missing or mistyped config field is DataError(config.json,
// "quantization_config.<field>"); a tensor of the wrong dtype or shape, a g_idx value out of
// range or a non-finite scale is DataError(<shard file>, "<module>.<tensor>"). Valid settings
// lathe does not read (gptq_v2, quantized lm_head, float or activation schemes other than
// int8 per token, other compressed-tensors formats) are UnsupportedError naming the field.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "compressor/model/weight_source.h"

namespace lathe {

/// The reader for the checkpoint directory `dir` when its config.json has a quantization_config,
/// else nullptr. UnsupportedError(config.json, "quantization_config.quant_method") for a method
/// other than gptq and compressed-tensors; errors of the readers as described above.
std::shared_ptr<const DequantizedWeights> open_quantized_checkpoint(const std::string& dir);

/// config.json's quantization_config.quant_method of `dir`: "" when there is no
/// quantization_config; DataError when it is not an object or quant_method is missing / not a
/// string.
std::string quantization_method(const std::string& dir);

/// GPTQ v1 (`checkpoint_format` / `format` "gptq"): per-module bits, group size and sym from the
/// base settings and the first matching `dynamic` key (Python re.match semantics: anchored at the
/// start). A module that a `-:` key skips but that holds `qweight` is a DataError.
std::shared_ptr<const DequantizedWeights> open_gptq_checkpoint(const std::string& dir);

/// compressed-tensors (`quantization_status` "compressed"): each module holding weight_packed
/// (pack-quantized) or an int8 weight (int-quantized) must match exactly one config group
/// (exact name over `re:` regex over class name such as "Linear") and no ignore entry.
/// activation_bits is 8 for groups with int8 per-token dynamic input_activations.
/// `sparsity_config` format "sparse-24-bitmask" (compressed-tensors ≤ 0.14; docs/export.md): a
/// module holding `<m>.compressed`, `<m>.bitmask` and `<m>.shape` must be in the sparsity targets;
/// it decodes to its dense weight (DataError unless every group of 4 has exactly 2 bits and no
/// padding bit is set), which is int8 for an int-quantized module (then dequantized) and the
/// weight itself for an unquantized one (which no config group may target). A config with only
/// `quant_method` and `sparsity_config` (no quantization) is read too; format "dense" is
/// metadata.
std::shared_ptr<const DequantizedWeights> open_compressed_tensors_checkpoint(
    const std::string& dir);

/// One quantized module of a packed checkpoint exactly as stored, for code that computes from the
/// packed bytes themselves (the kernels of kernels/qlinear.h behind `lathe verify`).
struct PackedModule {
  std::string module;
  std::string format;  ///< "gptq", "ct-packed", "ct-int8" or "ct-sparse24" (unquantized, 2:4)
  int64_t bits = 0, group_size = -1;
  bool sym = true;
  int64_t act_bits = 0;
  int64_t out = 0, in = 0;
  /// By suffix, zero-copy views of the mapped shard: gptq "qweight", "qzeros", "scales", "g_idx";
  /// ct-packed "weight_packed", "weight_scale", "weight_shape" and, when stored,
  /// "weight_zero_point", "weight_g_idx"; ct-int8 "weight", "weight_scale"; ct-sparse24 "weight"
  /// (the decoded weight in its stored dtype). With sparse24 also "compressed", "bitmask", "shape",
  /// and "weight" is decoded from them (a new tensor: int8 for ct-int8).
  std::map<std::string, at::Tensor> tensors;
  std::string file;       ///< the shard that holds it
  bool sparse24 = false;  ///< stored as sparse-24-bitmask
};

class PackedCheckpoint {
 public:
  virtual ~PackedCheckpoint() = default;
  /// `module` as stored, checked as the dequantizing reader checks it (dtypes, shapes, index and
  /// scale values: DataError naming the shard and the tensor); nullopt when the checkpoint does not
  /// hold the module quantized.
  virtual std::optional<PackedModule> packed(const std::string& module) const = 0;
  virtual std::string describe() const = 0;
};

/// The packed view of checkpoint `dir` (gptq or compressed-tensors), or nullptr when its config has
/// no quantization_config. Errors as open_quantized_checkpoint.
std::shared_ptr<const PackedCheckpoint> open_packed_checkpoint(const std::string& dir);

}  // namespace lathe
