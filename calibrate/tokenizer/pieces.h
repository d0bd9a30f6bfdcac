// The text pieces a tokenizer pipeline passes along, and the ways tokenizers splits them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lathe::tok {

/// A part of the input on its way through normalisation and pre-tokenization.
struct Piece {
  std::string text;
  /// >= 0 when the piece is an added token that was matched whole: it is final, later stages skip
  /// it.
  int32_t token_id = -1;
  /// True when the piece starts at the first byte of the input text. Metaspace's
  /// prepend_scheme "first" uses it (tokenizers: offsets_original().0 == 0). It is tracked through
  /// splits, not through normalizers that delete leading text (a Strip normalizer).
  bool at_origin = false;
};

/// A list of pieces in input order.
using Pieces = std::vector<Piece>;

/// Byte range of a piece of text and whether a pattern matched it (tokenizers' find_matches).
struct Span {
  size_t start;
  size_t end;
  bool is_match;
};

/// What a split does with the matched delimiters (tokenizers' SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

/// Spans covering `length` bytes from ordered, non-overlapping matches (empty ones included):
/// the text between matches becomes non-matching spans. Empty text gives one empty span.
std::vector<Span> spans_from_matches(const std::vector<std::pair<size_t, size_t>>& matches,
                                     size_t length);

/// Applies `behavior` to `spans` as tokenizers' NormalizedString::split does and appends the
/// resulting non-empty pieces of `piece` to `out` (the one starting at byte 0 keeps at_origin).
void split_piece(const Piece& piece, const std::vector<Span>& spans, SplitBehavior behavior,
                 Pieces& out);

/// Runs `split` on every piece that is not an added token; keeps added tokens as they are.
template <typename SplitFn>
void split_each(Pieces& pieces, SplitFn&& split) {
  Pieces out;
  out.reserve(pieces.size());
  for (Piece& piece : pieces) {
    if (piece.token_id >= 0) {
      out.push_back(std::move(piece));
    } else {
      split(piece, out);
    }
  }
  pieces = std::move(out);
}

}  // namespace lathe::tok
