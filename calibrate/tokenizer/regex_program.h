// Internals of regex.h shared by the compiler (regex_compiler.cpp) and the matcher (regex.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lathe::tok {

/// A set of code points: ranges, general categories, White_Space, and nested sets (the negated
/// members of a class such as \S inside [...]), optionally negated as a whole.
struct CharSet {
  std::vector<std::pair<char32_t, char32_t>> ranges;  ///< inclusive, sorted and merged by finalize
  uint32_t categories = 0;                            ///< unicode::category_bit mask
  bool white_space = false;
  std::vector<CharSet> members;
  bool negate = false;
  uint64_t ascii[2] = {0, 0};  ///< the answer for code points below 128, filled by finalize

  /// Whether `cp` is in the set.
  bool matches(char32_t cp) const {
    if (cp < 128) return (ascii[cp >> 6] >> (cp & 63)) & 1;
    return contains(cp) != negate;
  }
  /// Membership before negation, any code point.
  bool contains(char32_t cp) const;
  /// Sorts and merges ranges and precomputes the ASCII bitmap; call once the set is complete.
  void finalize();
};

/// VM operations. A program is a list of instructions run by a backtracking matcher.
enum class Op : uint8_t {
  kSet,     ///< consume one code point in sets[a]
  kRun,     ///< consume min..max code points in sets[a]; mode: 0 greedy, 1 lazy, 2 possessive
  kSplit,   ///< try a, on failure b; when guard >= 0, a must start with a code point in sets[guard]
  kJmp,     ///< go to a
  kAssert,  ///< zero-width test; mode is an Assertion
  kLook,    ///< run the sub-program at a; mode: 0 (?=), 1 (?!), 2 (?>) atomic; continue at b
  kMatch,   ///< success (end of the program or of a sub-program)
};

/// Zero-width assertions (Ruby syntax: ^ and $ are line anchors).
enum class Assertion : uint8_t {
  kLineStart,
  kLineEnd,
  kTextStart,
  kTextEnd,
  kTextEndBeforeNewline,
  kWordBoundary,
  kNotWordBoundary,
};

/// One instruction.
struct Inst {
  Op op;
  uint8_t mode = 0;
  int32_t a = 0;
  int32_t b = 0;
  uint32_t min = 0;
  uint32_t max = 0;
  int32_t guard = -1;
};

/// Largest repetition count; also stands for "unbounded" in Inst::max.
constexpr uint32_t kUnbounded = 0xFFFFFFFFu;

/// A compiled pattern: instructions (entry at 0) and the character sets they refer to.
struct RegexProgram {
  std::string pattern;
  std::vector<Inst> code;
  std::vector<CharSet> sets;
  int32_t word_set = -1;  ///< index of \w in sets, for \b and \B
};

/// Parses and compiles `pattern` (regex_compiler.cpp); throws UnsupportedError(where, field, ...).
RegexProgram compile_regex(std::string_view pattern, const std::string& where,
                           const std::string& field);

}  // namespace lathe::tok
