// Tokenizer for Hugging Face `tokenizer.json` files, reproducing what the `tokenizers` library does
// for the BPE tokenizers of the families lathe supports: byte-level BPE with regex splits (GPT-2,
// Llama 3, Qwen2/3, DeepSeek-V3, OLMoE) and SentencePiece-converted BPE with byte fallback
// (Llama 1/2, Mistral, Mixtral). Torch-free.
//
// Pipeline, as in tokenizers: added tokens are cut out of the raw text (normalized=false tokens),
// each remaining piece is normalised and searched for normalized=true tokens, pre-tokenized, run
// through the BPE model, and the post-processor adds special tokens. Supported components are
// listed in calibrate/tokenizer/{normalizers,pre_tokenizers,decoders,post_processors}.h; anything
// else is refused at load time with an UnsupportedError naming the JSON path. Split and Replace
// regexes run on Oniguruma in tokenizers' syntax (calibrate/tokenizer/regex.h); normalisation,
// lowercase and general categories come from utf8proc (calibrate/tokenizer/unicode.h).
//
// Choices where lathe differs from tokenizers:
//   - invalid UTF-8 input is a DataError naming the byte offset (the Python library cannot even
//     receive it; Rust callers cannot build a &str from it);
//   - decoding an id that is neither in the vocab nor an added token is a ConfigError naming the id
//     (tokenizers silently drops it);
//   - an added token whose declared id differs from the id tokenizers assigns is a DataError
//     (tokenizers warns and uses its own id);
//   - "truncation" and "padding" of the file are ignored: lathe cuts and packs samples itself;
//   - Unicode data is utf8proc's (15.0 on Debian 12; see calibrate/tokenizer/unicode.h for the
//     caveat) and regex classes are those of the system's Oniguruma (6.9.8 on Debian 12).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lathe {

namespace tok {
struct TokenizerPipeline;
}

/// An immutable tokenizer loaded from a tokenizer.json. Copies share the loaded data; `encode` and
/// `decode` are thread-safe.
class Tokenizer {
 public:
  /// Loads a tokenizer.json file, or `path`/tokenizer.json when `path` is a directory (then as
  /// from_model_dir). Throws ResourceError when the file cannot be read, DataError for malformed
  /// JSON or inconsistent contents (naming the JSON path), UnsupportedError for components or
  /// regex syntax lathe does not implement.
  static Tokenizer from_file(const std::string& path);

  /// Loads `dir`/tokenizer.json and reads bos/eos/pad token names from `dir`/tokenizer_config.json
  /// when present (strings or {"content": ...} objects). Errors as from_file.
  static Tokenizer from_model_dir(const std::string& dir);

  /// Parses tokenizer.json text; `where` names it in errors.
  static Tokenizer from_json(std::string_view json_text, const std::string& where);

  /// Token ids of `text` (UTF-8). With `add_special_tokens` the post-processor adds its special
  /// tokens (Llama's BOS, for example). Throws DataError(where = "input text", field = "byte N")
  /// when `text` is not valid UTF-8.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;

  /// Text of `ids` through the file's decoder (tokens joined by spaces when it has none). With
  /// `skip_special_tokens` special added tokens are left out. Throws ConfigError(field = "id N")
  /// for an id that is neither in the vocab nor an added token.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;

  /// Number of distinct ids: vocab entries plus added tokens outside the vocab (tokenizers'
  /// get_vocab_size(with_added_tokens=True), Python's len(tokenizer)).
  int64_t vocab_size() const;
  /// One past the largest id any token has (the embedding rows a model needs at least).
  int64_t id_limit() const;

  /// Id of a token string (added tokens first, then the vocab).
  std::optional<int32_t> token_to_id(std::string_view token) const;
  /// Token string of an id (an added token's content, else the vocab entry).
  std::optional<std::string> id_to_token(int32_t id) const;
  /// True when `id` is a special added token.
  bool is_special(int32_t id) const;

  /// Ids of tokenizer_config.json's bos_token / eos_token / pad_token (from_model_dir only).
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  std::optional<int32_t> pad_id() const;
  /// tokenizer_config.json's add_bos_token (from_model_dir only): false when absent or null;
  /// DataError naming the file and the key when it is not a boolean.
  bool adds_bos() const;

  /// Where the tokenizer was loaded from.
  const std::string& source() const;

 private:
  explicit Tokenizer(std::shared_ptr<const tok::TokenizerPipeline> pipeline);
  std::shared_ptr<const tok::TokenizerPipeline> pipeline_;
};

}  // namespace lathe
