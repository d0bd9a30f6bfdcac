#include "calibrate/tokenizer/unicode.h"

#include <utf8proc.h>

#include <vector>

#include "compressor/common/errors.h"

namespace lathe::unicode {
namespace {

constexpr char32_t kMaxCodePoint = 0x10FFFF;

}  // namespace

const char* unicode_version() {
  return utf8proc_unicode_version();
}

Category category(char32_t cp) {
  // Category in utf8proc's order (Cn first, then Lu ... Co as in Category).
  static constexpr Category kFromUtf8proc[] = {
      Category::Cn, Category::Lu, Category::Ll, Category::Lt, Category::Lm, Category::Lo,
      Category::Mn, Category::Mc, Category::Me, Category::Nd, Category::Nl, Category::No,
      Category::Pc, Category::Pd, Category::Ps, Category::Pe, Category::Pi, Category::Pf,
      Category::Po, Category::Sm, Category::Sc, Category::Sk, Category::So, Category::Zs,
      Category::Zl, Category::Zp, Category::Cc, Category::Cf, Category::Cs, Category::Co};
  static_assert(sizeof(kFromUtf8proc) / sizeof(kFromUtf8proc[0]) == UTF8PROC_CATEGORY_CO + 1);
  if (cp > kMaxCodePoint) return Category::Cn;
  const int c = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return c >= 0 && c <= UTF8PROC_CATEGORY_CO ? kFromUtf8proc[c] : Category::Cn;
}

bool is_white_space(char32_t cp) {
  // The White_Space property (utf8proc has no accessor for it); unchanged since Unicode 6.3, when
  // U+180E left it.
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool is_numeric(char32_t cp) {
  const Category c = category(cp);
  return c == Category::Nd || c == Category::Nl || c == Category::No;
}

uint8_t combining_class(char32_t cp) {
  if (cp > kMaxCodePoint) return 0;
  return static_cast<uint8_t>(
      utf8proc_get_property(static_cast<utf8proc_int32_t>(cp))->combining_class);
}

namespace {

// Length of the well-formed UTF-8 sequence at `s[i]`, or the length of its maximal ill-formed
// subpart negated (The Unicode Standard, section 3.9, "U+FFFD Substitution of Maximal Subparts").
long utf8_sequence_at(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (size_t k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return -static_cast<long>(k);
    const auto b = static_cast<unsigned char>(s[i + k]);
    const unsigned char low = k == 1 ? lo : 0x80, high = k == 1 ? hi : 0xBF;
    if (b < low || b > high) return -static_cast<long>(k);
  }
  return static_cast<long>(need + 1);
}

}  // namespace

size_t find_invalid_utf8(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    // Fast path over ASCII, eight bytes at a time.
    while (i + 8 <= bytes.size()) {
      uint64_t word = 0;
      for (int k = 0; k < 8; ++k)
        word |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i + k])) << (8 * k);
      if (word & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= bytes.size()) break;
    const long n = utf8_sequence_at(bytes, i);
    if (n < 0) return i;
    i += static_cast<size_t>(n);
  }
  return std::string_view::npos;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string from_utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const long n = utf8_sequence_at(bytes, i);
    if (n > 0) {
      out.append(bytes.data() + i, static_cast<size_t>(n));
      i += static_cast<size_t>(n);
    } else {
      out.append("\xEF\xBF\xBD");
      i += static_cast<size_t>(-n);
    }
  }
  return out;
}

namespace {

utf8proc_option_t map_options(NormalForm form) {
  // The options of utf8proc_NFD/NFKD/NFC/NFKC, less UTF8PROC_NULLTERM (the text may hold NULs).
  int options = UTF8PROC_STABLE;
  options |=
      form == NormalForm::kNFC || form == NormalForm::kNFKC ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE;
  if (form == NormalForm::kNFKD || form == NormalForm::kNFKC) options |= UTF8PROC_COMPAT;
  return static_cast<utf8proc_option_t>(options);
}

bool is_ascii(char c) {
  return static_cast<unsigned char>(c) < 0x80;
}

// Appends the normal form of `segment` (valid UTF-8) to `out`: what utf8proc_map does, with
// `buffer` reused across segments instead of a malloc per call.
void normalize_segment(std::string_view segment, utf8proc_option_t options,
                       std::vector<utf8proc_int32_t>& buffer, std::string& out) {
  const auto* bytes = reinterpret_cast<const utf8proc_uint8_t*>(segment.data());
  const auto length = static_cast<utf8proc_ssize_t>(segment.size());
  utf8proc_ssize_t count = utf8proc_decompose(
      bytes, length, buffer.data(), static_cast<utf8proc_ssize_t>(buffer.size()), options);
  if (count > static_cast<utf8proc_ssize_t>(buffer.size())) {
    buffer.resize(static_cast<size_t>(count));
    count = utf8proc_decompose(bytes, length, buffer.data(), count, options);
  }
  // utf8proc_reencode composes (when asked) and writes UTF-8 over the code points in place.
  if (count >= 0) count = utf8proc_reencode(buffer.data(), count, options);
  if (count < 0) {
    const std::string message = std::string("utf8proc: ") + utf8proc_errmsg(count);
    if (count == UTF8PROC_ERROR_NOMEM || count == UTF8PROC_ERROR_OVERFLOW) {
      throw ResourceError("normalizer", "", message);
    }
    throw DataError("normalizer", "", message);  // invalid UTF-8, which callers rule out
  }
  out.append(reinterpret_cast<const char*>(buffer.data()), static_cast<size_t>(count));
}

// Full lowercase mappings (SpecialCasing.txt, no condition) that differ from the simple mapping
// utf8proc_tolower gives. U+0130 is the only one: Rust's char::to_lowercase (tokenizers' Lowercase)
// maps it to "i\u0307", utf8proc to "i". The other unconditional SpecialCasing entries change only
// uppercase and titlecase; the conditional ones (final sigma, Lithuanian, Turkish) Rust ignores.
struct LowercaseExpansion {
  char32_t cp;
  const char* lower;
};
constexpr LowercaseExpansion kLowercaseExpansions[] = {{0x0130, "i\u0307"}};

const char* lowercase_expansion(char32_t cp) {
  for (const LowercaseExpansion& e : kLowercaseExpansions) {
    if (e.cp == cp) return e.lower;
  }
  return nullptr;
}

}  // namespace

std::string normalize(std::string_view text, NormalForm form) {
  // ASCII is stable in every form: no decomposition, combining class 0, never the second of a
  // composition. So text splits before each ASCII character into pieces that normalise on their
  // own; only a run of non-ASCII code points and the ASCII character before it (which may compose
  // with the run, e + U+0301) go through utf8proc, the rest is copied.
  const utf8proc_option_t options = map_options(form);
  std::string out;
  out.reserve(text.size());
  std::vector<utf8proc_int32_t> buffer(256);
  size_t i = 0;
  while (i < text.size()) {
    size_t run = i;  // start of the next non-ASCII run
    while (run < text.size() && is_ascii(text[run])) ++run;
    if (run == text.size()) break;
    const size_t start = run > i ? run - 1 : run;
    size_t end = run;
    while (end < text.size() && !is_ascii(text[end])) ++end;
    out.append(text.data() + i, start - i);
    normalize_segment(text.substr(start, end - start), options, buffer, out);
    i = end;
  }
  out.append(text.data() + i, text.size() - i);
  return out;
}

std::string to_lower(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const auto b = static_cast<unsigned char>(text[i]);
    if (b < 0x80) {
      out.push_back(static_cast<char>(b >= 'A' && b <= 'Z' ? b + 32 : b));
      ++i;
      continue;
    }
    const char32_t cp = next_code_point(text, i);
    if (const char* expansion = lowercase_expansion(cp)) {
      out.append(expansion);
    } else {
      append_utf8(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))));
    }
  }
  return out;
}

}  // namespace lathe::unicode
