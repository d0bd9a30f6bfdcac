#include "calibrate/tokenizer/pre_tokenizers.h"

#include <string>
#include <vector>

#include "calibrate/tokenizer/byte_level.h"
#include "calibrate/tokenizer/regex.h"
#include "calibrate/tokenizer/text_pattern.h"
#include "calibrate/tokenizer/unicode.h"

namespace lathe::tok {
namespace {

// Spans of single code points that satisfy `is_delimiter` (tokenizers' Pattern for Fn(char)).
template <typename Predicate>
std::vector<Span> char_spans(const std::string& text, Predicate&& is_delimiter) {
  std::vector<std::pair<size_t, size_t>> matches;
  for (size_t i = 0; i < text.size();) {
    const size_t start = i;
    if (is_delimiter(unicode::next_code_point(text, i))) matches.push_back({start, i});
  }
  return spans_from_matches(matches, text.size());
}

class ByteLevel : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space) {
    if (use_regex) regex_ = Regex::compile(kGpt2SplitPattern);
  }

  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](Piece& piece, Pieces& out) {
      // tokenizers adds the space to every piece it sees, not only to the first one.
      if (add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' ')) {
        piece.text.insert(0, " ");
      }
      const size_t first = out.size();
      if (regex_) {
        split_piece(piece, spans_from_matches(regex_->find_all(piece.text), piece.text.size()),
                    SplitBehavior::kIsolated, out);
      } else if (!piece.text.empty()) {
        out.push_back(std::move(piece));
      }
      for (size_t i = first; i < out.size(); ++i) out[i].text = to_byte_level(out[i].text);
    });
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> regex_;
};

class Split : public PreTokenizer {
 public:
  Split(TextPattern pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}

  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](Piece& piece, Pieces& out) {
      std::vector<Span> spans =
          spans_from_matches(pattern_.find_all(piece.text), piece.text.size());
      if (invert_) {
        for (Span& s : spans) s.is_match = !s.is_match;
      }
      split_piece(piece, spans, behavior_, out);
    });
  }

 private:
  TextPattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class Metaspace : public PreTokenizer {
 public:
  Metaspace(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {
    size_t i = 0;
    replacement_cp_ = unicode::next_code_point(replacement_, i);
  }

  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](Piece& piece, Pieces& out) {
      std::string text;
      text.reserve(piece.text.size() + replacement_.size());
      for (char c : piece.text) {
        if (c == ' ') {
          text.append(replacement_);
        } else {
          text.push_back(c);
        }
      }
      const bool starts_with = text.compare(0, replacement_.size(), replacement_) == 0;
      if (!text.empty() && !starts_with &&
          (scheme_ == PrependScheme::kAlways ||
           (scheme_ == PrependScheme::kFirst && piece.at_origin))) {
        text.insert(0, replacement_);
      }
      piece.text = std::move(text);
      if (!split_) {
        if (!piece.text.empty()) out.push_back(std::move(piece));
        return;
      }
      const char32_t r = replacement_cp_;
      split_piece(piece, char_spans(piece.text, [r](char32_t cp) { return cp == r; }),
                  SplitBehavior::kMergedWithNext, out);
    });
  }

 private:
  std::string replacement_;
  char32_t replacement_cp_;
  PrependScheme scheme_;
  bool split_;
};

class Digits : public PreTokenizer {
 public:
  explicit Digits(bool individual) : individual_(individual) {}
  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](Piece& piece, Pieces& out) {
      split_piece(piece, char_spans(piece.text, unicode::is_numeric),
                  individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, out);
    });
  }

 private:
  bool individual_;
};

class Sequence : public PreTokenizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void pre_tokenize(Pieces& pieces) const override {
    for (const auto& step : steps_) step->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

SplitBehavior parse_behavior(const JsonReader& json) {
  const std::string name = json.as_string();
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  json.fail("unknown split behavior '" + name +
            "' (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)");
}

std::unique_ptr<PreTokenizer> parse_metaspace(const JsonReader& json) {
  PrependScheme scheme = PrependScheme::kAlways;
  if (auto field = json.find("prepend_scheme")) {
    const std::string name = field->as_string();
    if (name == "always") {
      scheme = PrependScheme::kAlways;
    } else if (name == "first") {
      scheme = PrependScheme::kFirst;
    } else if (name == "never") {
      scheme = PrependScheme::kNever;
    } else {
      field->fail("unknown prepend_scheme '" + name + "' (expected always, first or never)");
    }
  }
  // Files from before tokenizers 0.14 say add_prefix_space instead; false must agree with the
  // scheme.
  if (json.has("add_prefix_space") && !json.at("add_prefix_space").as_bool()) {
    if (scheme != PrependScheme::kNever) {
      json.at("add_prefix_space").fail("add_prefix_space false does not match prepend_scheme");
    }
  }
  return std::make_unique<Metaspace>(json.at("replacement").as_char(), scheme,
                                     json.bool_or("split", true));
}

}  // namespace

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const JsonReader& json) {
  const std::string type = json.type();
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevel>(json.bool_or("add_prefix_space", true),
                                       json.bool_or("use_regex", true));
  }
  if (type == "Split") {
    return std::make_unique<Split>(TextPattern::parse(json.at("pattern")),
                                   parse_behavior(json.at("behavior")),
                                   json.at("invert").as_bool());
  }
  if (type == "Metaspace") return parse_metaspace(json);
  if (type == "Digits") return std::make_unique<Digits>(json.bool_or("individual_digits", false));
  if (type == "Sequence") {
    const JsonReader list = json.at("pretokenizers");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list.array_size(); ++i) {
      steps.push_back(parse_pre_tokenizer(list.element(i)));
    }
    return std::make_unique<Sequence>(std::move(steps));
  }
  json.at("type").unsupported("pre-tokenizer type '" + type +
                              "' is not supported (lathe implements ByteLevel, Split, Metaspace, "
                              "Digits, Sequence)");
}

}  // namespace lathe::tok
