// Unicode services (utf8proc) and the regexes (Oniguruma) behind the tokenizer.
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "calibrate/tokenizer/regex.h"
#include "calibrate/tokenizer/unicode.h"
#include "compressor/common/errors.h"
#include "test_tokenizer_helpers.h"

namespace lathe::tok {
namespace {

using unicode::Category;
using unicode::NormalForm;

TEST(TokenizerUnicode, GeneralCategories) {
  EXPECT_EQ(unicode::category(U'A'), Category::Lu);
  EXPECT_EQ(unicode::category(U'ß'), Category::Ll);
  EXPECT_EQ(unicode::category(U'٣'), Category::Nd);  // Arabic-Indic three
  EXPECT_EQ(unicode::category(U'Ⅻ'), Category::Nl);
  EXPECT_EQ(unicode::category(U'\u0301'), Category::Mn);
  EXPECT_EQ(unicode::category(U'€'), Category::Sc);
  EXPECT_EQ(unicode::category(0x1F600), Category::So);  // emoji
  EXPECT_EQ(unicode::category(U'\u3000'), Category::Zs);
  EXPECT_EQ(unicode::category(0x0378), Category::Cn);  // unassigned
  EXPECT_EQ(unicode::category(0x110000), Category::Cn);
  EXPECT_TRUE(unicode::is_white_space(0x85));
  EXPECT_FALSE(unicode::is_white_space(0x1C));  // str.isspace() says yes; White_Space says no
  EXPECT_FALSE(unicode::is_white_space(0x180E));
  EXPECT_STREQ(unicode::unicode_version(), "15.0.0");  // Debian 12's utf8proc 2.8.0
  EXPECT_EQ(unicode::combining_class(U'a'), 0);
  EXPECT_EQ(unicode::combining_class(U'\u0301'), 230);
  EXPECT_EQ(unicode::combining_class(U'\u0316'), 220);
}

TEST(TokenizerUnicode, NormalFormsDecomposeReorderAndCompose) {
  EXPECT_EQ(unicode::normalize("caf\u00e9", NormalForm::kNFD), "cafe\u0301");
  EXPECT_EQ(unicode::normalize("cafe\u0301", NormalForm::kNFC), "caf\u00e9");
  // Canonical reordering: below (220) before above (230), then composition skips the moved mark.
  EXPECT_EQ(unicode::normalize("a\u0301\u0316", NormalForm::kNFD), "a\u0316\u0301");
  EXPECT_EQ(unicode::normalize("a\u0316\u0301", NormalForm::kNFC), "\u00e1\u0316");
  EXPECT_EQ(unicode::normalize("\u212b", NormalForm::kNFC), "\u00c5");              // singleton
  EXPECT_EQ(unicode::normalize("\u0344", NormalForm::kNFC), "\u0308\u0301");        // excluded
  EXPECT_EQ(unicode::normalize("\u1100\u1161\u11a8", NormalForm::kNFC), "\uac01");  // Hangul LVT
  EXPECT_EQ(unicode::normalize("\uac01", NormalForm::kNFD), "\u1100\u1161\u11a8");
  EXPECT_EQ(unicode::normalize("\ufb01 x\u00b2", NormalForm::kNFKC), "fi x2");
  EXPECT_EQ(unicode::normalize("\u00bd", NormalForm::kNFKD), "1\u20442");
  EXPECT_EQ(unicode::normalize("\u00a0", NormalForm::kNFKC), " ");
  EXPECT_EQ(unicode::normalize("\u00a0", NormalForm::kNFC), "\u00a0");
  const std::string ascii = "plain ASCII text stays as it is";
  for (NormalForm form :
       {NormalForm::kNFD, NormalForm::kNFKD, NormalForm::kNFC, NormalForm::kNFKC}) {
    EXPECT_EQ(unicode::normalize(ascii, form), ascii);
  }
}

TEST(TokenizerUnicode, LowercaseIsFullPerCodePoint) {
  EXPECT_EQ(unicode::to_lower("HeLLo \u00c4\u00d6\u00dc"), "hello \u00e4\u00f6\u00fc");
  EXPECT_EQ(unicode::to_lower("\u0130"), "i\u0307");  // İ expands to two code points
  EXPECT_EQ(unicode::to_lower("\u03a3\u0391\u03a3"), "\u03c3\u03b1\u03c3");  // no final sigma
}

TEST(TokenizerUnicode, Utf8ValidationFindsTheFirstBadByte) {
  EXPECT_EQ(unicode::find_invalid_utf8("h\u00e9llo \U0001F600"), std::string_view::npos);
  EXPECT_EQ(unicode::find_invalid_utf8("ab\xc0\x80"), 2u);           // overlong
  EXPECT_EQ(unicode::find_invalid_utf8("abc\xed\xa0\x80"), 3u);      // surrogate
  EXPECT_EQ(unicode::find_invalid_utf8("\xf4\x90\x80\x80"), 0u);     // above U+10FFFF
  EXPECT_EQ(unicode::find_invalid_utf8("0123456789\xe2\x82"), 10u);  // truncated
  EXPECT_EQ(unicode::find_invalid_utf8("0123456789abcdef\x80"), 16u);
}

TEST(TokenizerUnicode, LossyConversionReplacesMaximalSubparts) {
  EXPECT_EQ(unicode::from_utf8_lossy("a\xf0\x9f\x98"
                                     "b"),
            "a\ufffd"
            "b");                                                   // one subpart
  EXPECT_EQ(unicode::from_utf8_lossy("\xc0\xaf"), "\ufffd\ufffd");  // two bad bytes
  EXPECT_EQ(unicode::from_utf8_lossy("ok \xe2\x82\xac"), "ok \u20ac");
}

std::vector<std::string> matches(const std::string& pattern, const std::string& text) {
  std::vector<std::string> out;
  for (auto [start, end] : Regex::compile(pattern).find_all(text)) {
    out.push_back(text.substr(start, end - start));
  }
  return out;
}

const char* const kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

TEST(TokenizerRegex, Gpt2PatternSplitsWordsNumbersPunctuationAndSpaces) {
  EXPECT_EQ(matches(kGpt2, "Hello world's  test123!!\n"),
            (std::vector<std::string>{"Hello", " world", "'s", " ", " test", "123", "!!", "\n"}));
  // \s+(?!\S) leaves the last space of a run to the next word.
  EXPECT_EQ(matches(kGpt2, "a   b"), (std::vector<std::string>{"a", "  ", " b"}));
  EXPECT_EQ(matches(kGpt2, "Grüße, 日本"), (std::vector<std::string>{"Grüße", ",", " 日本"}));
}

TEST(TokenizerRegex, CaseInsensitiveGroupsCountedRepeatsAndClasses) {
  const std::string llama3 = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|)"
                             R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  EXPECT_EQ(matches(llama3, "IT'S 12345"),
            (std::vector<std::string>{"IT", "'S", " ", "123", "45"}));
  EXPECT_EQ(matches("(?i:'s)", "'\u017f"), (std::vector<std::string>{"'\u017f"}));  // ſ folds to s
  EXPECT_EQ(matches("(?i)ab|c", "AB C"), (std::vector<std::string>{"AB", "C"}));
  EXPECT_EQ(matches(R"([\-\]a-c]+)", "x-]abcd"), (std::vector<std::string>{"-]abc"}));
  EXPECT_EQ(matches(R"(\x{41}\u0042\x43)", "ABC"), (std::vector<std::string>{"ABC"}));
  EXPECT_EQ(matches("a{2,3}", "aaaaaaa"), (std::vector<std::string>{"aaa", "aaa"}));
  EXPECT_EQ(matches("a{,2}b", "aaab"), (std::vector<std::string>{"aab"}));
  EXPECT_EQ(matches("a{x", "a{x"), (std::vector<std::string>{"a{x"}));  // not an interval: literal
}

TEST(TokenizerRegex, LazyPossessiveAtomicAndLookahead) {
  EXPECT_EQ(matches("a+?", "aaa"), (std::vector<std::string>{"a", "a", "a"}));
  EXPECT_EQ(matches("a*+a", "aaa"), std::vector<std::string>{});  // possessive gives nothing back
  EXPECT_EQ(matches("(?>a+)b|a", "aab"), (std::vector<std::string>{"aab"}));
  EXPECT_EQ(matches("\\d+(?=px)", "10px 20em"), (std::vector<std::string>{"10"}));
  EXPECT_EQ(matches("(?:ab)+", "ababa"), (std::vector<std::string>{"abab"}));
  EXPECT_EQ(matches("^a|b$", "a\na b\nb"), (std::vector<std::string>{"a", "a", "b", "b"}));
  EXPECT_EQ(matches("\\bis\\b", "this is"), (std::vector<std::string>{"is"}));
}

TEST(TokenizerRegex, EmptyMatchesAdvanceLikeOniguruma) {
  using Ranges = std::vector<std::pair<size_t, size_t>>;
  EXPECT_EQ(Regex::compile("x*").find_all("abc"), (Ranges{{0, 0}, {1, 1}, {2, 2}, {3, 3}}));
  // No empty match right where the previous match ended.
  EXPECT_EQ(Regex::compile("x*").find_all("xab"), (Ranges{{0, 1}, {2, 2}, {3, 3}}));
  EXPECT_EQ(Regex::compile("").find_all("\u00e9a"), (Ranges{{0, 0}, {2, 2}, {3, 3}}));
}

TEST(TokenizerRegex, MalformedPatternsAreDataErrorsNamingFileFieldPatternAndReason) {
  const std::pair<const char*, const char*> cases[] = {
      {"[z-a]", "empty range in char class"},
      {"(ab", "end pattern with unmatched parenthesis"},
      {"ab)", "unmatched close parenthesis"},
      {"\\k<x>", "undefined name <x> reference"},
      {"*a", "target of repeat operator is not specified"},
      {"\\p{NoSuchProperty}", "invalid character property name"},
      {"(?a)x", "undefined group option"},  // Ruby syntax's option; tokenizers rejects it too
  };
  for (const auto& [pattern, reason] : cases) {
    try {
      Regex::compile(pattern, "tokenizer.json", "pre_tokenizer.pattern.Regex");
      ADD_FAILURE() << "accepted " << pattern;
    } catch (const DataError& e) {
      EXPECT_EQ(e.where(), "tokenizer.json");
      EXPECT_EQ(e.field(), "pre_tokenizer.pattern.Regex");
      EXPECT_NE(e.message().find(pattern), std::string::npos) << e.what();
      EXPECT_NE(e.message().find(reason), std::string::npos) << e.what();
    }
  }
}

// Syntax the earlier hand-written engine refused. The expected matches are those of tokenizers
// 0.23.3 (a Split with invert=true and behavior "removed" keeps the non-empty matches).
TEST(TokenizerRegex, SyntaxBeyondTheGpt2PatternsMatchesTokenizers) {
  using Strings = std::vector<std::string>;
  EXPECT_EQ(matches("(?<=a)b", "ab bb cab"), (Strings{"b", "b"}));
  EXPECT_EQ(matches("(?<!a)\\p{L}+", "xab a bb"), (Strings{"xab", "a", "bb"}));
  // Lookbehind sees the text before the search start: empty matches at thousands separators.
  using Ranges = std::vector<std::pair<size_t, size_t>>;
  EXPECT_EQ(Regex::compile("(?<=\\d)(?=(?:\\d{3})+(?!\\d))").find_all("1234567 12"),
            (Ranges{{1, 1}, {4, 4}}));
  EXPECT_EQ(matches("(\\p{L})\\1+", "aabbbc xyyz"), (Strings{"aa", "bbb", "yy"}));
  EXPECT_EQ(matches("\\p{Han}+", "日本語のテキストと漢字、中文"),
            (Strings{"日本語", "漢字", "中文"}));
  EXPECT_EQ(matches("\\p{Greek}+|\\p{Cyrillic}+", "Ελληνικά и русский text"),
            (Strings{"Ελληνικά", "и", "русский"}));
  EXPECT_EQ(matches("[[:alpha:]]+", "abc123 Grüße!"), (Strings{"abc", "Grüße"}));
  EXPECT_EQ(matches("[a-z&&[^aeiou]]+", "programming"), (Strings{"pr", "gr", "mm", "ng"}));
  EXPECT_EQ(matches("(?x) \\p{Lu} \\p{Ll}+ # a capitalised word", "Hello big World"),
            (Strings{"Hello", "World"}));
  // Full case folding: ß matches ss.
  EXPECT_EQ(matches("(?i)straße", "STRASSE Strasse straße strasse"),
            (Strings{"STRASSE", "Strasse", "straße", "strasse"}));
  EXPECT_EQ(matches("(a*)*b", "aab b"), (Strings{"aab", "b"}));
  EXPECT_EQ(matches("\\X", "e\u0301\U0001F44D\U0001F3FD\U0001F1E9\U0001F1EA"),
            (Strings{"e\u0301", "\U0001F44D\U0001F3FD", "\U0001F1E9\U0001F1EA"}));
}

// tokenizers' Oniguruma reads [[:punct:]] as \p{P} + \p{S}; an older system Oniguruma (6.9.8) as
// \p{P}. Lathe either matches like tokenizers or refuses the pattern, never splits differently.
TEST(TokenizerRegex, PosixPunctMatchesTokenizersOrIsRefused) {
  for (const char* pattern : {"[[:punct:]]+", "[[:^punct:]]+"}) {
    try {
      Regex::compile(pattern, "tokenizer.json", "pre_tokenizer.pattern.Regex");
    } catch (const UnsupportedError& e) {
      EXPECT_EQ(e.field(), "pre_tokenizer.pattern.Regex");
      EXPECT_NE(e.message().find(pattern), std::string::npos) << e.what();
      EXPECT_NE(e.message().find("\\p{S}"), std::string::npos) << e.what();
      continue;
    }
    const std::vector<std::string> punct = {"=", ",\u20ac"}, other = {"a", "b"};
    EXPECT_EQ(matches(pattern, "a=b,\u20ac"), pattern[3] == '^' ? other : punct);
  }
}

// One compiled pattern serves every thread (calibration sets encode documents in parallel), and
// patterns may be compiled concurrently (tokenizers load on any thread).
TEST(TokenizerRegex, ConcurrentCompileAndSearchAgree) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "Grüße, 日本 IT'S 12345 x\u0301  y\n";
  const Regex shared = Regex::compile(kGpt2);
  const auto expected = shared.find_all(text);
  std::vector<std::thread> threads;
  std::vector<int> agreed(8, 0);
  for (size_t t = 0; t < agreed.size(); ++t) {
    threads.emplace_back([&, t] {
      const Regex own = Regex::compile(t % 2 ? kGpt2 : "(?<=\\p{L})\\p{N}+|\\p{Han}+");
      for (int k = 0; k < 20; ++k) {
        agreed[t] += shared.find_all(text) == expected;
        own.find_all(text);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(agreed, std::vector<int>(agreed.size(), 20));
}

}  // namespace
}  // namespace lathe::tok
