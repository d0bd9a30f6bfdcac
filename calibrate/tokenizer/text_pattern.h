// The patterns of Split, Replace and the Replace decoder: {"String": s} or {"Regex": r}.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "calibrate/tokenizer/json_reader.h"
#include "calibrate/tokenizer/regex.h"

namespace lathe::tok {

/// A literal string or a regex, matched the way tokenizers matches them (both go through
/// Oniguruma there: a literal is an escaped regex).
class TextPattern {
 public:
  /// Reads {"String": s} or {"Regex": r}; throws DataError for other shapes and
  /// UnsupportedError for regex syntax the engine does not implement.
  static TextPattern parse(const JsonReader& json);
  /// A literal pattern.
  static TextPattern literal(std::string text);

  /// Byte ranges of the non-overlapping matches in `text`, in order (see Regex::find_all).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

 private:
  std::string literal_;
  std::optional<Regex> regex_;  // set for regex patterns and the empty literal
};

/// `text` with every match of `pattern` replaced by `content` (empty matches insert `content`).
std::string replace_all(std::string_view text, const TextPattern& pattern,
                        const std::string& content);

}  // namespace lathe::tok
