#include "calibrate/tokenizer/byte_level.h"

#include <array>

#include "calibrate/tokenizer/unicode.h"

namespace lathe::tok {
namespace {

// bytes_char() of tokenizers' byte_level.rs: '!'..'~', 0xA1..0xAC, 0xAE..0xFF keep their value;
// the remaining bytes get 256, 257, ... in byte order.
struct ByteTable {
  std::array<std::string, 256> chars;
  std::array<int, 512> bytes;
  ByteTable() {
    bytes.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const int cp = keep ? b : next++;
      unicode::append_utf8(chars[static_cast<size_t>(b)], static_cast<char32_t>(cp));
      bytes[static_cast<size_t>(cp)] = b;
    }
  }
};

const ByteTable& table() {
  static const ByteTable t;
  return t;
}

}  // namespace

const char* const kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

const std::string& byte_level_char(uint8_t byte) {
  return table().chars[byte];
}

int byte_level_byte(char32_t cp) {
  return cp < 512 ? table().bytes[cp] : -1;
}

std::string to_byte_level(std::string_view text) {
  const ByteTable& t = table();
  std::string out;
  out.reserve(text.size() * 2);
  for (char c : text) out.append(t.chars[static_cast<unsigned char>(c)]);
  return out;
}

}  // namespace lathe::tok
