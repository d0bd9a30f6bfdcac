// Normalizers of tokenizer.json ("normalizer"): NFC, NFD, NFKC, NFKD, Lowercase, Strip, Prepend,
// Replace (String or Regex pattern), ByteLevel and Sequence, with tokenizers' semantics.
#pragma once

#include <memory>
#include <string>

#include "calibrate/tokenizer/json_reader.h"

namespace lathe::tok {

/// Rewrites the text of one piece.
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  /// Normalises `text` (valid UTF-8) in place; the result is valid UTF-8.
  virtual void normalize(std::string& text) const = 0;
};

/// Builds the normalizer described by `json` (an object with a "type"). Throws DataError for
/// malformed fields and UnsupportedError for types lathe does not implement (Precompiled,
/// BertNormalizer, Nmt, StripAccents, ...).
std::unique_ptr<Normalizer> parse_normalizer(const JsonReader& json);

}  // namespace lathe::tok
