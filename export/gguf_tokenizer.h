// The tokenizer a GGUF file's metadata describes (tokenizer.ggml.*), written as the tokenizer.json
// and tokenizer_config.json that transformers builds from the same file
// (integrations/gguf/gguf_tokenizer_mapping.py), so that lathe's tokenizer and transformers give
// the same ids. Torch-free.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "export/gguf.h"

namespace lathe::gguf {

struct TokenizerFiles {
  nlohmann::ordered_json tokenizer;  ///< tokenizer.json
  nlohmann::ordered_json config;     ///< tokenizer_config.json
};

/// The tokenizer files of `h`. Gemma (general.architecture gemma3, tokenizer.ggml.model "llama"):
/// sentencepiece BPE with byte fallback; tokens of two or more spaces respelled with "▁"; the file
/// has no merges, so they are derived from the vocabulary, best first by the merged token's
/// position in the file (transformers' generate_merges); control tokens (token_type 3) special,
/// user-defined ones (4) plain added tokens; BOS / EOS added as tokenizer.ggml.add_bos_token /
/// add_eos_token say. UnsupportedError(label, "tokenizer.ggml.model") for other tokenizers;
/// DataError naming the key for missing or mistyped metadata or a token that is not UTF-8.
TokenizerFiles hf_tokenizer(const Header& h, const std::string& label);

}  // namespace lathe::gguf
