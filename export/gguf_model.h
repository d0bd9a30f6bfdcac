// The Hugging Face model a GGUF file describes (issue 18; FORMATS.md §5): the config.json its
// metadata implies, and for every HF tensor which GGUF tensor holds it and how to turn the stored
// values back into the HF ones (Gemma's norms are stored as 1 + w). Gemma 3 only so far; llama's
// q/k row permutation and stacked experts come with the other architectures. Written to agree with transformers' own GGUF loader
// (integrations/ggml.py, modeling_gguf_pytorch_utils.py), which is the reference the tests compare
// against. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "export/gguf.h"

namespace lathe::gguf {

class File;

/// How an HF tensor is made from the values of its GGUF tensor.
enum class Fix {
  kNone,
  kMinusOne,  ///< Gemma norms: the file stores 1 + w (float32 subtraction, as transformers)
};

struct HfTensor {
  std::string name;            ///< HF name, e.g. model.layers.0.self_attn.q_proj.weight
  std::string source;          ///< GGUF name, e.g. blk.0.attn_q.weight
  std::vector<int64_t> shape;  ///< HF shape (row-major)
  int64_t layer = -1;          ///< decoder layer, -1 for embedding, final norm and head
  Fix fix = Fix::kNone;
};

struct HfModel {
  std::string architecture;     ///< general.architecture
  nlohmann::json config;        ///< config.json
  std::vector<HfTensor> tensors;  ///< in model order: embedding, layers, final norm, head
};

/// Architectures hf_model() maps: "gemma3".
const std::vector<std::string>& importable_architectures();

/// The HF model `h` describes. UnsupportedError(label, "general.architecture") for an architecture
/// outside importable_architectures(); DataError(label, key) for a missing or mistyped metadata key;
/// DataError(label, tensor) for a missing tensor or one whose shape disagrees with the metadata.
HfModel hf_model(const Header& h, const std::string& label);

/// The float32 values of `t` in its HF shape, read and fixed from `file` (UnsupportedError naming
/// the tensor for a GGUF type gguf_quants.h does not read).
std::vector<float> hf_values(const File& file, const HfTensor& t);

}  // namespace lathe::gguf
