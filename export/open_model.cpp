#include "export/open_model.h"

#include "compressor/common/errors.h"
#include "export/quant_sidecar.h"
#include "export/quantized_checkpoint.h"

namespace fs = std::filesystem;

namespace lathe {

std::string ModelSource::describe() const {
  switch (kind) {
    case Kind::kHf: return "HF checkpoint " + model_dir.string();
    case Kind::kLatheOutput:
      return quantized ? "lathe output, quantized weights from " + quantized->describe()
                       : "lathe output " + model_dir.string() + " (no quantized tensors)";
    case Kind::kGptq:
    case Kind::kCompressedTensors: return quantized->describe();
  }
  return model_dir.string();
}

ModelSource resolve_model_source(const std::string& path) {
  const fs::path p(path);
  if (!fs::exists(p)) throw ResourceError(path, "", "no such file or directory");
  ModelSource s;
  if (fs::is_directory(p) && fs::exists(p / "lathe_manifest.json") &&
      fs::is_directory(p / "model")) {
    s.kind = ModelSource::Kind::kLatheOutput;
    s.model_dir = p / "model";
    s.quantized = open_quant_sidecar(path);
    return s;
  }
  s.model_dir = p;
  if (fs::is_directory(p) && fs::exists(p / "config.json")) {
    const std::string method = quantization_method(path);
    if (!method.empty()) {
      s.quantized = open_quantized_checkpoint(path);
      s.kind = method == "gptq" ? ModelSource::Kind::kGptq : ModelSource::Kind::kCompressedTensors;
    }
  }
  return s;
}

CausalLM open_model(const ModelSource& source, const ForwardOptions& options) {
  return CausalLM(source.model_dir, options, source.quantized);
}

CausalLM open_model(const std::string& path, const ForwardOptions& options) {
  return open_model(resolve_model_source(path), options);
}

}  // namespace lathe
