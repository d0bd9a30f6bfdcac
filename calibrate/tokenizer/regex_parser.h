// Parser of the regex subset described in regex.h: pattern text to a node tree plus the character
// sets the tree refers to (regex_compiler.cpp turns the tree into VM code).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "calibrate/tokenizer/regex_program.h"

namespace lathe::tok {

/// A parsed pattern before code generation.
struct RegexNode {
  enum class Kind { kEmpty, kSet, kConcat, kAlt, kRepeat, kLook, kAssert };
  Kind kind = Kind::kEmpty;
  int32_t set = -1;           ///< kSet: index into the sets
  uint32_t min = 0, max = 0;  ///< kRepeat bounds (max kUnbounded for none)
  uint8_t mode = 0;  ///< kRepeat: 0 greedy, 1 lazy, 2 possessive; kLook, kAssert: as in Inst
  std::vector<RegexNode> children;
};

/// Parses `pattern`, appending its character sets to `sets`. Throws UnsupportedError(where, field)
/// for syntax outside the subset and for malformed patterns (see regex_error).
RegexNode parse_regex(std::string_view pattern, const std::string& where, const std::string& field,
                      std::vector<CharSet>& sets);

/// The UnsupportedError for `pattern`: its message quotes the pattern, says `what` and the byte
/// offset.
[[noreturn]] void regex_error(std::string_view pattern, const std::string& where,
                              const std::string& field, size_t offset, const std::string& what);

/// General-category mask of Oniguruma's Unicode \w (for \b and \B).
uint32_t regex_word_categories();

}  // namespace lathe::tok
