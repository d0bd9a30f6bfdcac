#include "calibrate/tokenizer/pieces.h"

namespace lathe::tok {

std::vector<Span> spans_from_matches(const std::vector<std::pair<size_t, size_t>>& matches,
                                     size_t length) {
  if (length == 0) return {{0, 0, false}};
  std::vector<Span> spans;
  spans.reserve(matches.size() * 2 + 1);
  size_t prev = 0;
  for (auto [start, end] : matches) {
    if (prev != start) spans.push_back({prev, start, false});
    spans.push_back({start, end, true});
    prev = end;
  }
  if (prev != length) spans.push_back({prev, length, false});
  return spans;
}

namespace {

// The spans that survive `behavior`, merged as tokenizers' NormalizedString::split merges them
// (Removed drops the matches).
std::vector<Span> merge_spans(const std::vector<Span>& spans, SplitBehavior behavior) {
  std::vector<Span> out;
  out.reserve(spans.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated: return spans;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.is_match) out.push_back(s);
      }
      return out;
    case SplitBehavior::kContiguous:
      for (const Span& s : spans) {
        if (!out.empty() && s.is_match == previous_match) {
          out.back().end = s.end;
        } else {
          out.push_back(s);
        }
        previous_match = s.is_match;
      }
      return out;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !out.empty()) {
          out.back().end = s.end;
        } else {
          out.push_back(s);
        }
        previous_match = s.is_match;
      }
      return out;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) {
          out.back().start = it->start;
        } else {
          out.push_back(*it);
        }
        previous_match = it->is_match;
      }
      return std::vector<Span>(out.rbegin(), out.rend());
  }
  return out;
}

}  // namespace

void split_piece(const Piece& piece, const std::vector<Span>& spans, SplitBehavior behavior,
                 Pieces& out) {
  for (const Span& s : merge_spans(spans, behavior)) {
    if (s.end == s.start) continue;  // PreTokenizedString::split drops empty pieces
    Piece part;
    part.text = piece.text.substr(s.start, s.end - s.start);
    part.at_origin = piece.at_origin && s.start == 0;
    out.push_back(std::move(part));
  }
}

}  // namespace lathe::tok
