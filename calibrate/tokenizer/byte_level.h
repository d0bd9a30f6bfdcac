// GPT-2's reversible byte-to-character table, shared by the ByteLevel normalizer, pre-tokenizer
// and decoder: printable bytes map to themselves, the others to U+0100 and up.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace lathe::tok {

/// UTF-8 of the character that stands for `byte`.
const std::string& byte_level_char(uint8_t byte);

/// The byte a character stands for, or -1 when `cp` is not in the table.
int byte_level_byte(char32_t cp);

/// Every byte of `text` replaced by its character.
std::string to_byte_level(std::string_view text);

/// The regex of tokenizers' ByteLevel pre-tokenizer (use_regex), GPT-2's split pattern.
extern const char* const kGpt2SplitPattern;

}  // namespace lathe::tok
