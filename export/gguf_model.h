// The Hugging Face model a GGUF file describes (issue 18; FORMATS.md §5): the config.json its
// metadata implies, and for every HF tensor which GGUF tensor holds it and how to turn the stored
// values back into the HF ones: llama.cpp's q/k row interleave undone (arch llama), one expert's
// slice of a stacked `ffn_*_exps` tensor, Gemma's norms stored as 1 + w. Architectures: gemma3,
// llama (also Mistral and Mixtral, which llama.cpp writes as llama), qwen2, qwen2moe, qwen3moe,
// olmoe. Written to agree with transformers' own GGUF loader (integrations/ggml.py,
// modeling_gguf_pytorch_utils.py), which is the reference the tests compare against. Torch-free.
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
  int64_t expert = -1;         ///< slice `expert` of a stacked [experts, ...] tensor; -1: all of it
  /// llama.cpp stores llama's q/k rows of each of this many heads interleaved (FORMATS.md §5,
  /// "q/k permutation"); 0: rows in HF order.
  int64_t interleaved_heads = 0;
  Fix fix = Fix::kNone;
};

struct HfModel {
  std::string architecture;       ///< general.architecture
  nlohmann::json config;          ///< config.json
  std::vector<HfTensor> tensors;  ///< in model order: embedding, layers, final norm, head
};

/// Architectures hf_model() maps (general.architecture values).
const std::vector<std::string>& importable_architectures();

/// The HF model `h` describes. UnsupportedError(label, "general.architecture") for an architecture
/// outside importable_architectures() and UnsupportedError naming the key for metadata lathe
/// cannot honour (RoPE scaling); DataError(label, key) for a missing or mistyped metadata key;
/// DataError(label, tensor) for a missing tensor, one whose shape disagrees with the metadata (a
/// stacked expert tensor with another expert count included) or one the model has no place for.
HfModel hf_model(const Header& h, const std::string& label);

/// Rows of `t` in the HF sense: shape[0] for a matrix, 1 for a vector.
uint64_t hf_rows(const HfTensor& t);
/// Values per row of `t` (numel / hf_rows).
uint64_t hf_row_length(const HfTensor& t);

/// Writes HF rows [first, first + count) of `t` as float32 to `out` (count × hf_row_length values):
/// dequantized from `file` (UnsupportedError naming the tensor for a type gguf_quants.h does not
/// read), in HF row order, fixed. Releases the mapped pages it read.
void read_hf_rows(const File& file, const HfTensor& t, uint64_t first, uint64_t count, float* out);

}  // namespace lathe::gguf
