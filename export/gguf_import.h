// `lathe import FILE.gguf --out DIR` (docs/gguf.md): the Hugging Face checkpoint a GGUF file
// describes, written so that stock transformers loads it and lathe reads it like any HF directory:
// config.json, one safetensors shard per decoder layer plus one for embedding and final norm (bf16
// or float32), the index, tokenizer.json and tokenizer_config.json, and lathe_export.json. Tensors
// are dequantized one at a time, in row chunks, straight into the output dtype. Torch-free.
#pragma once

#include <cstdint>
#include <string>

namespace lathe {

struct ImportOptions {
  std::string dtype = "bf16";  ///< "bf16" or "f32" (f32 keeps the dequantized values exactly)
  bool force = false;          ///< replace an existing DIR
};

struct ImportResult {
  std::string dir;
  std::string architecture;  ///< general.architecture
  int64_t tensors = 0;
  uint64_t bytes = 0;  ///< tensor bytes written
};

/// Writes the HF checkpoint of `gguf_path` to `out_dir` (built as `out_dir.partial`, renamed when
/// complete). ConfigError for an existing `out_dir` without `force` or a bad dtype; the errors of
/// gguf::File, gguf::hf_model and gguf::hf_tokenizer (DataError / UnsupportedError naming the file
/// and the key or tensor) before anything is written; ResourceError when writing fails.
ImportResult import_gguf(const std::string& gguf_path, const std::string& out_dir,
                         const ImportOptions& options);

}  // namespace lathe
