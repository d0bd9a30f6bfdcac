#include "calibrate/tokenizer/unicode.h"

#include <algorithm>
#include <vector>

#include "calibrate/tokenizer/unicode_tables.h"

namespace lathe::unicode {
namespace {

namespace data = lathe::unicode_data;

constexpr char32_t kMaxCodePoint = 0x10FFFF;

// Hangul syllables are composed and decomposed arithmetically (Unicode 14.0, section 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr char32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

uint8_t two_stage(const uint16_t* stage1, const uint8_t* stage2, char32_t cp) {
  if (cp > kMaxCodePoint) return 0;
  return stage2[static_cast<size_t>(stage1[cp >> 7]) * 128 + (cp & 0x7F)];
}

// Index of `cp` in a sorted key array, or -1.
long find_key(const uint32_t* keys, size_t count, char32_t cp) {
  const uint32_t* end = keys + count;
  const uint32_t* it = std::lower_bound(keys, end, static_cast<uint32_t>(cp));
  return it != end && *it == cp ? static_cast<long>(it - keys) : -1;
}

uint8_t unstable_bit(NormalForm form) {
  switch (form) {
    case NormalForm::kNFD: return 1;
    case NormalForm::kNFKD: return 2;
    case NormalForm::kNFC: return 4;
    case NormalForm::kNFKC: return 8;
  }
  return 15;
}

bool is_compatibility(NormalForm form) {
  return form == NormalForm::kNFKD || form == NormalForm::kNFKC;
}

bool is_composing(NormalForm form) {
  return form == NormalForm::kNFC || form == NormalForm::kNFKC;
}

// Appends the full decomposition of `cp` to `out` (the tables hold full, recursive decompositions).
void decompose(char32_t cp, bool compatibility, std::vector<char32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const uint32_t* keys = compatibility ? data::kCompatibilityKeys : data::kCanonicalKeys;
  const size_t count = compatibility ? data::kCompatibilityCount : data::kCanonicalCount;
  const long index = find_key(keys, count, cp);
  if (index < 0) {
    out.push_back(cp);
    return;
  }
  const uint32_t* offsets = compatibility ? data::kCompatibilityOffsets : data::kCanonicalOffsets;
  const uint32_t* pool = compatibility ? data::kCompatibilityPool : data::kCanonicalPool;
  out.insert(out.end(), pool + offsets[index], pool + offsets[index + 1]);
}

// Canonical ordering: a stable sort of each run of non-starters by combining class.
void reorder(std::vector<char32_t>& cps) {
  size_t i = 0;
  while (i < cps.size()) {
    if (combining_class(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < cps.size() && combining_class(cps[end]) != 0) ++end;
    std::stable_sort(
        cps.begin() + static_cast<long>(i), cps.begin() + static_cast<long>(end),
        [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = end;
  }
}

// The primary composite of (first, second), or 0.
char32_t compose_pair(char32_t first, char32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase &&
      second < kVBase + kVCount) {
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  }
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 &&
      second > kTBase && second < kTBase + kTCount) {
    return first + (second - kTBase);
  }
  const uint32_t* begin = data::kCompositionFirst;
  const uint32_t* end = begin + data::kCompositionCount;
  auto range = std::equal_range(begin, end, static_cast<uint32_t>(first));
  for (auto it = range.first; it != range.second; ++it) {
    const size_t k = static_cast<size_t>(it - begin);
    if (data::kCompositionSecond[k] == second) return data::kCompositionResult[k];
  }
  return 0;
}

// Canonical composition algorithm (UAX #15, section 1.3) on decomposed, reordered code points. In
// canonical order the last non-starter after the current starter has the highest class, so a
// code point is unblocked when it directly follows the starter or has a higher class than it.
void compose(std::vector<char32_t>& cps) {
  size_t out = 0;
  long starter = -1;  // index in the output of the last starter
  int last_class = 0;
  for (char32_t cp : cps) {
    const int cls = combining_class(cp);
    if (starter >= 0) {
      const bool adjacent = static_cast<long>(out) - 1 == starter;
      if (adjacent || (last_class != 0 && last_class < cls)) {
        const char32_t composite = compose_pair(cps[static_cast<size_t>(starter)], cp);
        if (composite != 0) {
          cps[static_cast<size_t>(starter)] = composite;
          continue;
        }
      }
    }
    if (cls == 0) {
      starter = static_cast<long>(out);
      last_class = 0;
    } else {
      last_class = cls;
    }
    cps[out++] = cp;
  }
  cps.resize(out);
}

// Normalises one segment that starts at a stable code point (or the text start) and ends before
// the next one: decompose, reorder, and compose when the form asks for it.
void normalize_segment(std::string_view segment, NormalForm form, std::string& out) {
  std::vector<char32_t> cps;
  size_t i = 0;
  while (i < segment.size()) decompose(next_code_point(segment, i), is_compatibility(form), cps);
  reorder(cps);
  if (is_composing(form)) compose(cps);
  for (char32_t cp : cps) append_utf8(out, cp);
}

bool is_unstable(char32_t cp, uint8_t bit) {
  return (two_stage(data::kNormalizationFlags_stage1, data::kNormalizationFlags_stage2, cp) &
          bit) != 0;
}

}  // namespace

const char* unicode_version() {
  return data::kUnicodeVersion;
}

Category category(char32_t cp) {
  if (cp > kMaxCodePoint) return Category::Cn;
  return static_cast<Category>(two_stage(data::kCategory_stage1, data::kCategory_stage2, cp));
}

bool is_white_space(char32_t cp) {
  // The White_Space property; unchanged since Unicode 6.3 (U+180E left it then).
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
  if (cp < 0x300) return 0;
  return two_stage(data::kCombiningClass_stage1, data::kCombiningClass_stage2, cp);
}

char32_t simple_fold(char32_t cp) {
  const long index = find_key(data::kSimpleFoldKeys, data::kSimpleFoldCount, cp);
  return index < 0 ? cp : data::kSimpleFoldValues[index];
}

namespace {

// Length of the well-formed UTF-8 sequence at `s[i]`, or the length of its maximal ill-formed
// subpart negated (Unicode 14.0, section 3.9, "U+FFFD Substitution of Maximal Subparts").
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

std::string normalize(std::string_view text, NormalForm form) {
  const uint8_t bit = unstable_bit(form);
  std::string out;
  out.reserve(text.size());
  size_t copied = 0;  // text[0, copied) is already in `out`
  size_t i = 0;
  size_t last_stable = 0;  // start of the last stable code point not yet copied, or `copied`
  while (i < text.size()) {
    const size_t start = i;
    if (static_cast<unsigned char>(text[i]) < 0x80) {  // ASCII is stable in every form
      last_stable = i++;
      continue;
    }
    const char32_t cp = next_code_point(text, i);
    if (!is_unstable(cp, bit)) {
      last_stable = start;
      continue;
    }
    // A segment runs from the last stable code point (which may compose with what follows) to the
    // next stable one; segments never interact, so each is normalised on its own.
    size_t end = i;
    while (end < text.size()) {
      size_t next = end;
      if (!is_unstable(next_code_point(text, next), bit)) break;
      end = next;
    }
    const size_t seg_start = std::max(last_stable, copied);
    out.append(text.data() + copied, seg_start - copied);
    normalize_segment(text.substr(seg_start, end - seg_start), form, out);
    copied = end;
    last_stable = end;
    i = end;
  }
  out.append(text.data() + copied, text.size() - copied);
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
    const size_t start = i;
    const char32_t cp = next_code_point(text, i);
    const long index = find_key(data::kLowercaseKeys, data::kLowercaseCount, cp);
    if (index < 0) {
      out.append(text.data() + start, i - start);
      continue;
    }
    for (uint32_t k = data::kLowercaseOffsets[index]; k < data::kLowercaseOffsets[index + 1]; ++k) {
      append_utf8(out, data::kLowercasePool[k]);
    }
  }
  return out;
}

}  // namespace lathe::unicode
