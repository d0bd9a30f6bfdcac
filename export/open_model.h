// Opening a model path for evaluation (`lathe eval`, `lathe forward`, `lathe run`'s eval after):
// the path may be a lathe output directory, a packed export, or a plain HF checkpoint, and the
// forward must measure the model as stored, quantized weights included (weight_source.h).
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "compressor/model/causal_lm.h"
#include "compressor/model/weight_source.h"

namespace lathe {

/// Where the weights of a model path come from.
struct ModelSource {
  enum class Kind {
    kHf,                 ///< a plain HF checkpoint
    kLatheOutput,        ///< a lathe output directory: out/model plus the sidecar out/quant
    kGptq,               ///< an HF directory with quantization_config.quant_method "gptq"
    kCompressedTensors,  ///< … "compressed-tensors"
  };
  Kind kind = Kind::kHf;
  std::filesystem::path model_dir;  ///< config.json, safetensors, tokenizer files
  /// Quantized weights that replace `.weight` tensors of model_dir (null: none).
  std::shared_ptr<const DequantizedWeights> quantized;
  /// "HF checkpoint", "lathe output (sidecar out/quant)", "GPTQ …", "compressed-tensors …".
  std::string describe() const;
};

/// Resolves `path`: a directory with lathe_manifest.json and model/ is a lathe output directory
/// (model_dir = path/model; quantized = open_quant_sidecar(path), null when it has no quant/);
/// otherwise an HF directory whose config.json's quantization_config names gptq or
/// compressed-tensors gets that reader; otherwise a plain HF directory. Throws like the readers
/// (DataError naming file and field or tensor; UnsupportedError for another quant_method) and
/// ResourceError when `path` does not exist.
ModelSource resolve_model_source(const std::string& path);

/// CausalLM(source.model_dir, options, source.quantized).
CausalLM open_model(const ModelSource& source, const ForwardOptions& options);

/// open_model(resolve_model_source(path), options).
CausalLM open_model(const std::string& path, const ForwardOptions& options);

}  // namespace lathe
