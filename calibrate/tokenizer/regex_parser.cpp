// Parser of the regex subset described in regex.h (Oniguruma's Ruby syntax).
#include "calibrate/tokenizer/regex_parser.h"

#include <algorithm>
#include <cctype>
#include <map>

#include "calibrate/tokenizer/unicode.h"
#include "compressor/common/errors.h"

namespace lathe::tok {
namespace {

using unicode::Category;

constexpr uint32_t bits(std::initializer_list<Category> cats) {
  uint32_t mask = 0;
  for (Category c : cats) mask |= unicode::category_bit(c);
  return mask;
}

constexpr uint32_t kLetters =
    bits({Category::Lu, Category::Ll, Category::Lt, Category::Lm, Category::Lo});
constexpr uint32_t kMarks = bits({Category::Mn, Category::Mc, Category::Me});
constexpr uint32_t kNumbers = bits({Category::Nd, Category::Nl, Category::No});
constexpr uint32_t kPunctuation = bits({Category::Pc, Category::Pd, Category::Ps, Category::Pe,
                                        Category::Pi, Category::Pf, Category::Po});
constexpr uint32_t kSymbols = bits({Category::Sm, Category::Sc, Category::Sk, Category::So});
constexpr uint32_t kSeparators = bits({Category::Zs, Category::Zl, Category::Zp});
constexpr uint32_t kOthers =
    bits({Category::Cc, Category::Cf, Category::Cs, Category::Co, Category::Cn});
// Oniguruma's Unicode \w: letters, marks, decimal digits, connector punctuation.
constexpr uint32_t kWord = kLetters | kMarks | bits({Category::Nd, Category::Pc});

// General-category names accepted by \p{...}, loosely matched (case, spaces, '_' and '-' ignored).
const std::map<std::string, uint32_t>& property_names() {
  static const std::map<std::string, uint32_t> names = [] {
    std::map<std::string, uint32_t> m;
    const char* short_names[] = {"lu", "ll", "lt", "lm", "lo", "mn", "mc", "me", "nd", "nl",
                                 "no", "pc", "pd", "ps", "pe", "pi", "pf", "po", "sm", "sc",
                                 "sk", "so", "zs", "zl", "zp", "cc", "cf", "cs", "co", "cn"};
    const char* long_names[] = {
        "uppercaseletter",    "lowercaseletter",  "titlecaseletter",  "modifierletter",
        "otherletter",        "nonspacingmark",   "spacingmark",      "enclosingmark",
        "decimalnumber",      "letternumber",     "othernumber",      "connectorpunctuation",
        "dashpunctuation",    "openpunctuation",  "closepunctuation", "initialpunctuation",
        "finalpunctuation",   "otherpunctuation", "mathsymbol",       "currencysymbol",
        "modifiersymbol",     "othersymbol",      "spaceseparator",   "lineseparator",
        "paragraphseparator", "control",          "format",           "surrogate",
        "privateuse",         "unassigned"};
    for (int i = 0; i < unicode::kCategoryCount; ++i) {
      m[short_names[i]] = 1u << i;
      m[long_names[i]] = 1u << i;
    }
    const uint32_t cased = bits({Category::Lu, Category::Ll, Category::Lt});
    for (auto [name, mask] : std::initializer_list<std::pair<const char*, uint32_t>>{
             {"l", kLetters},
             {"letter", kLetters},
             {"lc", cased},
             {"l&", cased},
             {"casedletter", cased},
             {"m", kMarks},
             {"mark", kMarks},
             {"combiningmark", kMarks},
             {"n", kNumbers},
             {"number", kNumbers},
             {"p", kPunctuation},
             {"punctuation", kPunctuation},
             {"s", kSymbols},
             {"symbol", kSymbols},
             {"z", kSeparators},
             {"separator", kSeparators},
             {"c", kOthers},
             {"other", kOthers},
             {"any", (1u << unicode::kCategoryCount) - 1}}) {
      m[name] = mask;
    }
    return m;
  }();
  return names;
}

// For case-insensitive matching: every code point with the same simple case folding.
std::vector<char32_t> case_variants(char32_t cp) {
  static const std::multimap<char32_t, char32_t> by_fold = [] {
    std::multimap<char32_t, char32_t> m;
    for (char32_t c = 0; c < 0x1F000; ++c) {
      const char32_t f = unicode::simple_fold(c);
      if (f != c) m.emplace(f, c);
    }
    return m;
  }();
  const char32_t fold = unicode::simple_fold(cp);
  std::vector<char32_t> out{fold};
  auto range = by_fold.equal_range(fold);
  for (auto it = range.first; it != range.second; ++it) out.push_back(it->second);
  return out;
}

class Parser {
 public:
  Parser(std::string_view pattern, const std::string& where, const std::string& field,
         std::vector<CharSet>& sets)
      : pattern_(pattern), where_(where), field_(field), sets_(sets) {}

  RegexNode parse() {
    RegexNode node = parse_alternation();
    if (!at_end()) fail("unbalanced ')'");
    return node;
  }

  [[noreturn]] void fail(const std::string& what) const { fail_at(pos_, what); }

  [[noreturn]] void fail_at(size_t offset, const std::string& what) const {
    regex_error(pattern_, where_, field_, offset, what);
  }

 private:
  bool at_end() const { return pos_ >= pattern_.size(); }
  char peek_byte() const { return at_end() ? '\0' : pattern_[pos_]; }
  bool lookahead(std::string_view s) const { return pattern_.substr(pos_, s.size()) == s; }
  char32_t next_char() {
    if (at_end()) fail("unexpected end of pattern");
    return unicode::next_code_point(pattern_, pos_);
  }

  RegexNode parse_alternation() {
    const bool saved_fold = fold_;  // (?i) lasts until the end of the enclosing group
    std::vector<RegexNode> alternatives{parse_concat()};
    while (peek_byte() == '|') {
      ++pos_;
      alternatives.push_back(parse_concat());
    }
    fold_ = saved_fold;
    if (alternatives.size() == 1) return std::move(alternatives[0]);
    RegexNode node;
    node.kind = RegexNode::Kind::kAlt;
    node.children = std::move(alternatives);
    return node;
  }

  RegexNode parse_concat() {
    RegexNode node;
    node.kind = RegexNode::Kind::kConcat;
    while (!at_end() && peek_byte() != '|' && peek_byte() != ')') {
      RegexNode item = parse_quantified();
      if (item.kind != RegexNode::Kind::kEmpty) node.children.push_back(std::move(item));
    }
    return node;
  }

  RegexNode parse_quantified() {
    const size_t atom_start = pos_;
    RegexNode atom = parse_atom();
    uint32_t min = 0, max = 0;
    if (!parse_quantifier(min, max)) return atom;
    if (atom.kind == RegexNode::Kind::kLook || atom.kind == RegexNode::Kind::kAssert ||
        atom.kind == RegexNode::Kind::kEmpty) {
      fail_at(atom_start, "quantifier on a zero-width item");
    }
    const bool interval = pattern_[pos_ - 1] == '}';
    RegexNode node;
    node.kind = RegexNode::Kind::kRepeat;
    node.min = min;
    node.max = max;
    if (peek_byte() == '?') {
      ++pos_;
      node.mode = 1;
    } else if (peek_byte() == '+') {
      // Ruby syntax: *+ ++ ?+ are possessive, but {n,m}+ is a repeated interval.
      if (interval) fail("quantifier after an interval");
      ++pos_;
      node.mode = 2;
    }
    if (!at_end() && (peek_byte() == '*' || peek_byte() == '+' || peek_byte() == '?' ||
                      (peek_byte() == '{' && looks_like_interval()))) {
      fail("nested quantifier");
    }
    node.children.push_back(std::move(atom));
    return node;
  }

  bool looks_like_interval() const {
    size_t p = pos_ + 1;
    bool digits = false, comma = false;
    while (p < pattern_.size()) {
      const char c = pattern_[p];
      if (c >= '0' && c <= '9') {
        digits = true;
      } else if (c == ',' && !comma) {
        comma = true;
      } else {
        return c == '}' && digits;
      }
      ++p;
    }
    return false;
  }

  // Reads a quantifier at pos_ into [min, max]; an invalid interval is a literal '{' (Oniguruma).
  bool parse_quantifier(uint32_t& min, uint32_t& max) {
    const char c = peek_byte();
    if (c == '*' || c == '+' || c == '?') {
      ++pos_;
      min = c == '+' ? 1 : 0;
      max = c == '?' ? 1 : kUnbounded;
      return true;
    }
    if (c != '{' || !looks_like_interval()) return false;
    ++pos_;
    auto number = [&](uint32_t fallback) {
      if (!(peek_byte() >= '0' && peek_byte() <= '9')) return fallback;
      uint64_t value = 0;
      while (peek_byte() >= '0' && peek_byte() <= '9') {
        value = value * 10 + static_cast<uint64_t>(peek_byte() - '0');
        if (value > 100000) fail("repetition count too large");
        ++pos_;
      }
      return static_cast<uint32_t>(value);
    };
    min = number(0);
    max = min;
    if (peek_byte() == ',') {
      ++pos_;
      max = number(kUnbounded);
    }
    ++pos_;  // '}'
    if (max < min) fail("interval {n,m} with m < n");
    return true;
  }

  RegexNode set_node(CharSet set) {
    set.finalize();
    sets_.push_back(std::move(set));
    RegexNode node;
    node.kind = RegexNode::Kind::kSet;
    node.set = static_cast<int32_t>(sets_.size() - 1);
    return node;
  }

  RegexNode literal_node(char32_t cp) {
    CharSet set;
    if (fold_) {
      for (char32_t v : case_variants(cp)) set.ranges.push_back({v, v});
    }
    set.ranges.push_back({cp, cp});
    return set_node(std::move(set));
  }

  RegexNode assert_node(Assertion a) {
    RegexNode node;
    node.kind = RegexNode::Kind::kAssert;
    node.mode = static_cast<uint8_t>(a);
    return node;
  }

  RegexNode parse_atom() {
    const char c = peek_byte();
    switch (c) {
      case '(': return parse_group();
      case '[': return set_node(parse_class());
      case '.': {
        ++pos_;
        CharSet set;
        set.ranges.push_back({'\n', '\n'});
        set.negate = true;
        return set_node(std::move(set));
      }
      case '^': ++pos_; return assert_node(Assertion::kLineStart);
      case '$': ++pos_; return assert_node(Assertion::kLineEnd);
      case '\\': return parse_escape();
      case '*':
      case '+':
      case '?': fail("nothing to repeat");
      default: return literal_node(next_char());
    }
  }

  RegexNode parse_group() {
    const size_t open = pos_;
    if (++depth_ > kMaxDepth) fail("groups nested more than 100 deep");
    ++pos_;
    RegexNode node;
    if (peek_byte() != '?') {
      node = parse_alternation();  // capturing group: captures are not reported
    } else {
      ++pos_;
      node = parse_group_extension(open);
      if (node.kind == RegexNode::Kind::kEmpty && pattern_[pos_ - 1] == ')') {  // (?i)
        --depth_;
        return node;
      }
    }
    if (peek_byte() != ')') fail_at(open, "unbalanced '('");
    ++pos_;
    --depth_;
    return node;
  }

  // After "(?": lookaround, atomic, non-capturing and flag groups. Returns an empty node for a
  // bare flag group "(?i)", which changes fold_ for the rest of the enclosing group.
  RegexNode parse_group_extension(size_t open) {
    const char c = peek_byte();
    if (c == ':') {
      ++pos_;
      return parse_alternation();
    }
    if (c == '=' || c == '!' || c == '>') {
      ++pos_;
      RegexNode node;
      node.kind = RegexNode::Kind::kLook;
      node.mode = c == '=' ? 0 : c == '!' ? 1 : 2;
      node.children.push_back(parse_alternation());
      return node;
    }
    if (lookahead("<=") || lookahead("<!")) fail_at(open, "lookbehind");
    if (c == '<' || c == '\'') {  // named group: treated as a plain group
      const char close = c == '<' ? '>' : '\'';
      const size_t end = pattern_.find(close, pos_ + 1);
      if (end == std::string_view::npos) fail_at(open, "unterminated group name");
      pos_ = end + 1;
      return parse_alternation();
    }
    if (c == '#') {
      const size_t end = pattern_.find(')', pos_);
      if (end == std::string_view::npos) fail_at(open, "unterminated comment");
      pos_ = end;
      return RegexNode{};
    }
    return parse_flags(open);
  }

  RegexNode parse_flags(size_t open) {
    bool on = true, fold = fold_;
    while (!at_end() && peek_byte() != ':' && peek_byte() != ')') {
      const char f = peek_byte();
      if (f == '-') {
        on = false;
      } else if (f == 'i') {
        fold = on;
      } else {
        fail_at(pos_, std::string("group option '") + f + "'");
      }
      ++pos_;
    }
    if (at_end()) fail_at(open, "unbalanced '('");
    if (peek_byte() == ')') {  // (?i): for the rest of the enclosing group
      fold_ = fold;
      ++pos_;
      return RegexNode{};
    }
    ++pos_;  // ':'
    const bool saved = fold_;
    fold_ = fold;
    RegexNode node = parse_alternation();
    fold_ = saved;
    return node;
  }

  RegexNode parse_escape() {
    const size_t start = pos_;
    ++pos_;
    const char32_t c = next_char();
    switch (c) {
      case 'A': return assert_node(Assertion::kTextStart);
      case 'z': return assert_node(Assertion::kTextEnd);
      case 'Z': return assert_node(Assertion::kTextEndBeforeNewline);
      case 'b': return assert_node(Assertion::kWordBoundary);
      case 'B': return assert_node(Assertion::kNotWordBoundary);
      default: break;
    }
    pos_ = start;
    CharSet set;
    char32_t literal = 0;
    if (parse_class_escape(set, literal)) return set_node(std::move(set));
    return literal_node(literal);
  }

  // Parses an escape at pos_ ('\\'). Class escapes (\s, \p{..}, ...) are added to `set` (true is
  // returned); a character escape is stored in `literal` (false is returned).
  bool parse_class_escape(CharSet& set, char32_t& literal) {
    const size_t start = pos_;
    ++pos_;
    const char32_t c = next_char();
    auto add_negatable = [&](CharSet member, bool negate) {
      if (negate) {
        member.negate = true;
        member.finalize();
        set.members.push_back(std::move(member));
      } else {
        set.ranges.insert(set.ranges.end(), member.ranges.begin(), member.ranges.end());
        set.categories |= member.categories;
        set.white_space |= member.white_space;
      }
      return true;
    };
    CharSet member;
    switch (c) {
      case 's':
      case 'S': member.white_space = true; return add_negatable(member, c == 'S');
      case 'd':
      case 'D':
        member.categories = unicode::category_bit(Category::Nd);
        return add_negatable(member, c == 'D');
      case 'w':
      case 'W': member.categories = kWord; return add_negatable(member, c == 'W');
      case 'h':
      case 'H':
        member.ranges = {{'0', '9'}, {'A', 'F'}, {'a', 'f'}};
        return add_negatable(member, c == 'H');
      case 'p':
      case 'P': {
        bool negate = c == 'P';
        member.categories = parse_property(start, negate);
        return add_negatable(member, negate);
      }
      default: break;
    }
    literal = parse_char_escape(c, start);
    return false;
  }

  uint32_t parse_property(size_t start, bool& negate) {
    if (peek_byte() != '{') fail_at(start, "\\p without {name}");
    const size_t end = pattern_.find('}', pos_);
    if (end == std::string_view::npos) fail_at(start, "unterminated \\p{");
    std::string_view raw = pattern_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    if (!raw.empty() && raw[0] == '^') {
      negate = !negate;
      raw.remove_prefix(1);
    }
    std::string name;
    for (char ch : raw) {
      if (ch == ' ' || ch == '_' || ch == '-') continue;
      name.push_back(static_cast<char>(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch));
    }
    const auto& names = property_names();
    auto it = names.find(name);
    if (it == names.end()) {
      fail_at(start, "Unicode property \\p{" + std::string(raw) +
                         "} (only general categories are supported)");
    }
    return it->second;
  }

  char32_t parse_hex(size_t start, size_t min_digits, size_t max_digits) {
    char32_t value = 0;
    size_t n = 0;
    while (n < max_digits && !at_end() && std::isxdigit(static_cast<unsigned char>(peek_byte()))) {
      const char h = peek_byte();
      value = value * 16 + static_cast<char32_t>(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
      ++pos_;
      ++n;
    }
    if (n < min_digits) fail_at(start, "malformed hexadecimal escape");
    return value;
  }

  char32_t parse_char_escape(char32_t c, size_t start) {
    switch (c) {
      case 't': return '\t';
      case 'n': return '\n';
      case 'r': return '\r';
      case 'f': return '\f';
      case 'v': return '\v';
      case 'a': return 0x07;
      case 'e': return 0x1B;
      case 'u': return parse_hex(start, 4, 4);
      case 'x': {
        if (peek_byte() != '{') return parse_hex(start, 1, 2);
        ++pos_;
        const char32_t v = parse_hex(start, 1, 8);
        if (peek_byte() != '}' || v > 0x10FFFF) fail_at(start, "malformed \\x{...}");
        ++pos_;
        return v;
      }
      default: break;
    }
    if (c < 128 && std::isalnum(static_cast<int>(c))) {
      fail_at(start, std::string("escape '\\") + static_cast<char>(c) + "'");
    }
    return c;  // escaped punctuation or a non-ASCII character stands for itself
  }

  CharSet parse_class() {
    const size_t open = pos_;
    ++pos_;
    CharSet set;
    if (peek_byte() == '^') {
      set.negate = true;
      ++pos_;
    }
    bool first = true;
    for (;;) {
      if (at_end()) fail_at(open, "unterminated character class");
      const char c = peek_byte();
      if (c == ']' && !first) break;
      first = false;
      if (c == '[') fail(lookahead("[:") ? "POSIX bracket expression" : "nested character class");
      if (lookahead("&&")) fail("character class intersection");
      char32_t lo = 0;
      if (c == '\\') {
        if (parse_class_escape_in_class(set, lo)) continue;
      } else {
        lo = next_char();
      }
      if (peek_byte() == '-' && pos_ + 1 < pattern_.size() && pattern_[pos_ + 1] != ']') {
        ++pos_;
        char32_t hi = 0;
        if (peek_byte() == '\\') {
          if (parse_class_escape_in_class(set, hi)) fail("class escape as a range end");
        } else if (peek_byte() == '[') {
          fail("nested character class");
        } else {
          hi = next_char();
        }
        if (hi < lo) fail("character range out of order");
        set.ranges.push_back({lo, hi});
      } else {
        set.ranges.push_back({lo, lo});
      }
    }
    ++pos_;  // ']'
    if (fold_) add_case_variants(set);
    return set;
  }

  // Inside a class "\b" is a backspace; everything else is as outside.
  bool parse_class_escape_in_class(CharSet& set, char32_t& literal) {
    if (lookahead("\\b")) {
      pos_ += 2;
      literal = 0x08;
      return false;
    }
    return parse_class_escape(set, literal);
  }

  // Case-insensitive classes: add every code point that folds like one already in the ranges.
  static void add_case_variants(CharSet& set) {
    std::vector<std::pair<char32_t, char32_t>> extra;
    for (char32_t cp = 0; cp < 0x1F000; ++cp) {
      const char32_t f = unicode::simple_fold(cp);
      if (f == cp) continue;
      for (auto [lo, hi] : set.ranges) {
        if ((cp >= lo && cp <= hi) || (f >= lo && f <= hi)) {
          for (char32_t v : case_variants(cp)) extra.push_back({v, v});
          break;
        }
      }
    }
    set.ranges.insert(set.ranges.end(), extra.begin(), extra.end());
  }

  std::string_view pattern_;
  const std::string& where_;
  const std::string& field_;
  std::vector<CharSet>& sets_;
  static constexpr int kMaxDepth = 100;
  size_t pos_ = 0;
  int depth_ = 0;
  bool fold_ = false;
};

}  // namespace

RegexNode parse_regex(std::string_view pattern, const std::string& where, const std::string& field,
                      std::vector<CharSet>& sets) {
  return Parser(pattern, where, field, sets).parse();
}

void regex_error(std::string_view pattern, const std::string& where, const std::string& field,
                 size_t offset, const std::string& what) {
  throw UnsupportedError(where, field,
                         "regex '" + std::string(pattern) + "': " + what + " at byte offset " +
                             std::to_string(offset) +
                             " (lathe supports the subset in calibrate/tokenizer/regex.h)");
}

uint32_t regex_word_categories() {
  return kWord;
}

}  // namespace lathe::tok
