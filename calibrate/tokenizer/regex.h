// A small backtracking regex engine over code points for the patterns of tokenizer.json files.
// std::regex knows neither Unicode classes nor the lookahead the GPT-2 family relies on, and
// tokenizers runs these patterns through Oniguruma, so this engine follows Oniguruma's Ruby syntax
// and its leftmost-first (backtracking) semantics for the subset those patterns use:
//   alternation, (?:...), (...) (captures are not reported), (?i:...), (?i), (?-i), (?=...),
//   (?!...), (?>...), greedy/lazy/possessive * + ? {n} {n,} {n,m} {,m}, ., ^ $ \A \z \Z \b \B,
//   classes [...] [^...] with ranges and escapes, \s \S \d \D \w \W \h \H, \p{..} \P{..} \p{^..}
//   for general categories (L, Lu, Letter, Uppercase_Letter, ..., LC/L&, Any), \t \n \r \f \v \a
//   \e \xHH \x{H..} \uHHHH and escaped punctuation.
// Anything else (lookbehind, backreferences, scripts such as \p{Han}, nested or intersected
// classes, POSIX brackets, (?x), quantified sub-patterns that can match empty) is rejected with an
// UnsupportedError naming the pattern and the offset. Case-insensitive matching uses simple case
// folding (one code point to one): Oniguruma's multi-character folds (ß ~ ss) are not applied.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lathe::tok {

struct RegexProgram;

/// A compiled pattern. Copies share the immutable program; matching is thread-safe.
class Regex {
 public:
  /// Compiles `pattern`. Throws UnsupportedError(where, field, ...) for syntax outside the subset
  /// above and for malformed patterns; the message quotes the pattern and the byte offset.
  static Regex compile(std::string_view pattern, const std::string& where = "",
                       const std::string& field = "");

  /// Byte ranges [start, end) of the matches in `text` (valid UTF-8), in order, iterated the way
  /// the Rust `onig` crate does: each search starts where the previous match ended, and an empty
  /// match right at the end of the previous match is skipped by advancing one code point. Empty
  /// matches are reported (they split text in tokenizers' Split).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

  /// The source pattern.
  const std::string& pattern() const;

 private:
  std::shared_ptr<const RegexProgram> program_;
};

}  // namespace lathe::tok
