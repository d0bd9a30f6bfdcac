// The regexes of tokenizer.json files (Split and Replace patterns), matched by Oniguruma as the
// `tokenizers` library does: its `onig` crate compiles every pattern with onig_new in UTF-8,
// without options, in the crate's default syntax, which is Oniguruma's OnigDefaultSyntax, i.e.
// ONIG_SYNTAX_ONIGURUMA in Oniguruma 6.9 (the crate's documentation calls it Ruby syntax; the
// tokenizers wheel rejects Ruby's (?a) and accepts Oniguruma's (?W), so it is not). The whole of
// that syntax is available: Unicode properties and scripts (\p{L}, \p{Han}), lookahead and
// lookbehind, atomic groups, possessive and lazy quantifiers, backreferences, full case folding.
// Lathe links the system's Oniguruma (Debian 12: 6.9.8, Unicode 14.0 property data); tokenizers
// bundles a newer one (tokenizers 0.23.3: Unicode 16.0), so \p{L}, \w and the like do not match
// code points assigned after Unicode 14.0 here (U+1C89, U+1E030, U+2EBF0, ...) but do there. Before
// 6.9.9, [[:punct:]] means \p{P} rather than \p{P} + \p{S}: compile refuses it with an
// UnsupportedError rather than split text differently.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lathe::tok {

struct CompiledRegex;

/// A compiled pattern. Copies share the compiled Oniguruma regex; matching is thread-safe.
class Regex {
 public:
  /// Compiles `pattern`. A pattern Oniguruma rejects as malformed is a DataError(where, field, ...)
  /// whose message quotes the pattern and Oniguruma's reason; one beyond Oniguruma's limits (parse
  /// depth) or one with [[:punct:]] (above) an UnsupportedError, likewise.
  static Regex compile(std::string_view pattern, const std::string& where = "",
                       const std::string& field = "");

  /// Byte ranges [start, end) of the matches in `text` (valid UTF-8), in order, iterated the way
  /// the Rust `onig` crate does: each search starts where the previous match ended (lookbehind and
  /// \b still see the text before), and an empty match right at the end of the previous match is
  /// skipped by advancing one code point. Empty matches are reported (they split text in
  /// tokenizers' Split). A search that exceeds Oniguruma's retry limit (10 million backtracking
  /// steps, where tokenizers panics) is an UnsupportedError naming the pattern.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

  /// The source pattern.
  const std::string& pattern() const;

 private:
  std::shared_ptr<const CompiledRegex> compiled_;
};

}  // namespace lathe::tok
