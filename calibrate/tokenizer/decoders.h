// Decoders of tokenizer.json ("decoder"): ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace
// and Sequence, each a step of tokenizers' decode_chain over the token strings.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "calibrate/tokenizer/json_reader.h"

namespace lathe::tok {

/// One step of the decode chain.
class Decoder {
 public:
  virtual ~Decoder() = default;
  /// Rewrites the token strings; the final text is their concatenation.
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

/// Builds the decoder described by `json`; DataError for malformed fields, UnsupportedError for
/// types lathe does not implement (WordPiece, CTC, BPEDecoder).
std::unique_ptr<Decoder> parse_decoder(const JsonReader& json);

}  // namespace lathe::tok
