// Unicode services for the tokenizer: UTF-8 coding (hand-written, below and in unicode.cpp),
// general categories, normalisation forms and lowercase from utf8proc (its Unicode version is
// unicode_version(): 15.0.0 for Debian 12's utf8proc 2.8.0), White_Space from a short list. HF
// `tokenizers` mixes Unicode versions (Oniguruma's regex classes, Rust's char methods, the
// unicode-normalization-alignments crate for NFC & co.), so code points assigned or re-classified
// in recent versions may be treated differently there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace lathe::unicode {

/// Unicode general categories.
enum class Category : uint8_t {
  Lu,
  Ll,
  Lt,
  Lm,
  Lo,
  Mn,
  Mc,
  Me,
  Nd,
  Nl,
  No,
  Pc,
  Pd,
  Ps,
  Pe,
  Pi,
  Pf,
  Po,
  Sm,
  Sc,
  Sk,
  So,
  Zs,
  Zl,
  Zp,
  Cc,
  Cf,
  Cs,
  Co,
  Cn,
};

/// The Unicode version of utf8proc's data, e.g. "15.0.0".
const char* unicode_version();

/// General category of a code point (Cn for unassigned and for cp > 0x10FFFF).
Category category(char32_t cp);

/// True for the White_Space property (Rust's char::is_whitespace, Oniguruma's Unicode \s).
bool is_white_space(char32_t cp);

/// True for general categories Nd, Nl, No (Rust's char::is_numeric).
bool is_numeric(char32_t cp);

/// Canonical combining class (0 for starters).
uint8_t combining_class(char32_t cp);

/// Byte offset of the first byte that does not start a well-formed UTF-8 sequence (overlong forms,
/// surrogates and code points above U+10FFFF are ill-formed), or std::string_view::npos.
size_t find_invalid_utf8(std::string_view bytes);

/// Decodes the code point at `s[i]` of valid UTF-8 and advances `i` past it.
inline char32_t next_code_point(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  auto cont = [&](size_t k) {
    return static_cast<char32_t>(static_cast<unsigned char>(s[i + k]) & 0x3F);
  };
  char32_t cp;
  if (b0 < 0xE0) {
    cp = ((b0 & 0x1F) << 6) | cont(1);
    i += 2;
  } else if (b0 < 0xF0) {
    cp = ((b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2);
    i += 3;
  } else {
    cp = ((b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3);
    i += 4;
  }
  return cp;
}

/// Byte length of the UTF-8 sequence starting with byte `b0` of valid UTF-8.
inline size_t utf8_length(unsigned char b0) {
  return b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
}

/// Appends the UTF-8 encoding of `cp` (must be a scalar value) to `out`.
void append_utf8(std::string& out, char32_t cp);

/// Converts bytes to UTF-8 the way Rust's String::from_utf8_lossy does: each maximal ill-formed
/// subpart becomes one U+FFFD.
std::string from_utf8_lossy(std::string_view bytes);

/// The four normalisation forms of UAX #15.
enum class NormalForm { kNFD, kNFKD, kNFC, kNFKC };

/// `text` (valid UTF-8) in normalisation form `form` (utf8proc_map; ASCII text is copied as is).
std::string normalize(std::string_view text, NormalForm form);

/// Full lowercase mapping, code point by code point (Rust's char::to_lowercase; no final-sigma
/// context rule): utf8proc's simple mapping plus the one unconditional multi-code-point mapping
/// of SpecialCasing.txt (U+0130 to "i\u0307").
std::string to_lower(std::string_view text);

}  // namespace lathe::unicode
