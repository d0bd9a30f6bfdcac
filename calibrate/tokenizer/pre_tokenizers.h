// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): ByteLevel, Split, Metaspace, Digits and
// Sequence (what the supported model families use), with tokenizers' semantics.
#pragma once

#include <memory>

#include "calibrate/tokenizer/json_reader.h"
#include "calibrate/tokenizer/pieces.h"

namespace lathe::tok {

/// Splits (and may rewrite) the pieces that are not added tokens.
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  /// Replaces `pieces` by their pre-tokenized parts; empty parts are dropped.
  virtual void pre_tokenize(Pieces& pieces) const = 0;
};

/// Builds the pre-tokenizer described by `json`. Throws DataError for malformed fields and
/// UnsupportedError for types or regex syntax lathe does not implement.
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const JsonReader& json);

}  // namespace lathe::tok
