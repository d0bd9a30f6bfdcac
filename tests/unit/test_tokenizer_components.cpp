// The tokenizer's components, each on a small hand-written tokenizer.json. Expected values follow
// what the `tokenizers` library returns for the same files (tests/python/test_tokenizer_parity.py
// compares the two on real text).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "calibrate/tokenizer.h"
#include "safetensors_builder.h"
#include "test_tokenizer_helpers.h"

namespace lathe::test {
namespace {

using json = nlohmann::json;
using Strings = std::vector<std::string>;

json pattern(const char* kind, const std::string& value) {
  return {{kind, value}};
}

json split(const json& pat, const char* behavior, bool invert = false) {
  return {{"type", "Split"}, {"pattern", pat}, {"behavior", behavior}, {"invert", invert}};
}

// Words in the vocab and ignore_merges make every pre-token that is a vocab entry one token, so
// the token strings show where the pre-tokenizer cut.
TokenizerParts whole_words(std::vector<std::string> words) {
  TokenizerParts parts;
  parts.extra_tokens = std::move(words);
  parts.model_options = {{"ignore_merges", true}};
  return parts;
}

TEST(TokenizerBpe, MergesApplyByRankInBothFileForms) {
  TokenizerParts parts;
  parts.extra_tokens = {"ab", "bc", "abc"};
  parts.merges = {"b c", "a b"};  // "b c" ranks first, so "abc" cannot form from "ab" + "c"
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "abc"), (Strings{"a", "bc"}));
  parts.merges = json::array({json::array({"a", "b"}), json::array({"ab", "c"})});
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "abcab"), (Strings{"abc", "ab"}));
  parts.merges = {"#version: 0.2", "a b", "ab c"};  // a merges.txt header line is skipped
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "abc"), (Strings{"abc"}));
}

TEST(TokenizerBpe, EqualRanksMergeLeftmostFirstThenByRank) {
  // All four "a a" pairs rank first; the leftmost merges, then the next free pair; only then
  // does "aa a" (rank 1) apply, to the right-hand "aa a" ("aa aa" is no merge).
  TokenizerParts parts;
  parts.extra_tokens = {"aa", "aaa"};
  parts.merges = {"a a", "aa a"};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "aaaaa"), (Strings{"aa", "aaa"}));
}

TEST(TokenizerBpe, ByteFallbackUnkAndFuseUnk) {
  TokenizerParts parts;
  parts.model_options = {{"byte_fallback", true}, {"unk_token", "<unk>"}};
  parts.extra_tokens = {"<unk>"};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "a\u00e9"), (Strings{"a", "<0xC3>", "<0xA9>"}));
  parts.model_options = {{"byte_fallback", false}, {"unk_token", "<unk>"}, {"fuse_unk", false}};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "\u00e9\u00e9a\u00e9"),
            (Strings{"<unk>", "<unk>", "a", "<unk>"}));
  parts.model_options["fuse_unk"] = true;
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "\u00e9\u00e9a\u00e9"),
            (Strings{"<unk>", "a", "<unk>"}));
  parts.model_options = json::object();  // no unk_token: unknown characters vanish
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "\u00e9a"), (Strings{"a"}));
}

TEST(TokenizerBpe, IgnoreMergesTakesAVocabWordWhole) {
  TokenizerParts parts;
  parts.extra_tokens = {"ab", "abc"};  // no merge builds "abc"
  parts.merges = {"a b"};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "abc"), (Strings{"ab", "c"}));
  parts.model_options = {{"ignore_merges", true}};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "abc"), (Strings{"abc"}));
}

TEST(TokenizerBpe, ContinuingSubwordPrefixAndEndOfWordSuffix) {
  TokenizerParts parts;
  parts.model_options = {{"continuing_subword_prefix", "##"}, {"end_of_word_suffix", "</w>"}};
  parts.extra_tokens = {"##b", "##c</w>", "ab", "abc</w>"};
  parts.merges = {"a ##b", "ab ##c</w>"};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "abc"), (Strings{"abc</w>"}));
  // "b" ends the word, so it is looked up as "##b</w>": not in the vocab, and without an
  // unk_token it vanishes.
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "ab"), (Strings{"a"}));
}

TEST(TokenizerNormalizers, UnicodeFormsLowercaseStripPrependReplace) {
  TokenizerParts parts;
  parts.extra_tokens = {"\u00e9", "\u0301", "fi"};
  parts.normalizer = {{"type", "NFC"}};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "e\u0301"), (Strings{"\u00e9"}));
  parts.normalizer = {{"type", "NFD"}};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "\u00e9"), (Strings{"e", "\u0301"}));
  parts.normalizer = {{"type", "NFKC"}};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "\ufb01"), (Strings{"f", "i"}));
  parts.normalizer = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Lowercase"}},
        {{"type", "Strip"}, {"strip_left", true}, {"strip_right", false}},
        {{"type", "Replace"}, {"pattern", pattern("Regex", " {2,}")}, {"content", "_"}},
        {{"type", "Prepend"}, {"prepend", "\u2581"}}}}};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "  A  B "), (Strings{"\u2581", "a", "_", "b", " "}));
  EXPECT_TRUE(make_tokenizer(parts).encode("   ", false).empty());  // Prepend skips empty text
}

TEST(TokenizerPreTokenizers, SplitBehaviorsOnTheFinalCountdown) {
  // The example of tokenizers' NormalizedString::split documentation.
  TokenizerParts parts =
      whole_words({"the", "final", "countdown", "--", "the-", "final-", "-final", "-countdown"});
  auto cut = [&](const char* behavior, bool invert = false) {
    parts.pre_tokenizer = split(pattern("String", "-"), behavior, invert);
    return tokens_of(make_tokenizer(parts), "the-final--countdown");
  };
  EXPECT_EQ(cut("Removed"), (Strings{"the", "final", "countdown"}));
  EXPECT_EQ(cut("Isolated"), (Strings{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(cut("MergedWithPrevious"), (Strings{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(cut("MergedWithNext"), (Strings{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(cut("Contiguous"), (Strings{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(cut("Removed", true), (Strings{"-", "-", "-"}));
}

TEST(TokenizerPreTokenizers, RegexSplitDigitsAndSequence) {
  TokenizerParts parts = whole_words({"12", "123", "ab"});
  parts.pre_tokenizer = split(pattern("Regex", "\\p{N}{1,3}"), "Isolated");
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "ab12345"), (Strings{"ab", "123", "4", "5"}));
  parts.pre_tokenizer = {{"type", "Digits"}, {"individual_digits", false}};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "ab12"), (Strings{"ab", "12"}));
  parts.pre_tokenizer = {{"type", "Sequence"},
                         {"pretokenizers",
                          {split(pattern("String", " "), "Removed"),
                           {{"type", "Digits"}, {"individual_digits", true}}}}};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "ab 12"), (Strings{"ab", "1", "2"}));
}

TEST(TokenizerPreTokenizers, ByteLevelMapsBytesAndAddsPrefixSpaces) {
  TokenizerParts parts = whole_words({"\u0120hi", "\u0120", "\u00c3", "\u00a9", "\u0120\u0120"});
  parts.pre_tokenizer = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  // The prefix space makes " hi"; "é" is the bytes C3 A9, shown as the characters Ã ©.
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "hi \u00e9"),
            (Strings{"\u0120hi", "\u0120", "\u00c3", "\u00a9"}));
  parts.pre_tokenizer["add_prefix_space"] = false;
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "hi   hi"),
            (Strings{"h", "i", "\u0120\u0120", "\u0120hi"}));
}

TEST(TokenizerPreTokenizers, MetaspacePrependSchemes) {
  TokenizerParts parts = whole_words({"\u2581hi", "\u2581there", "hi", "<s>"});
  parts.added_tokens = {added_token(next_free_id(parts), "<x>", true)};
  parts.pre_tokenizer = {{"type", "Metaspace"},
                         {"replacement", "\u2581"},
                         {"prepend_scheme", "always"},
                         {"split", true}};
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "hi there"), (Strings{"\u2581hi", "\u2581there"}));
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "<x>hi"), (Strings{"<x>", "\u2581hi"}));
  parts.pre_tokenizer["prepend_scheme"] = "first";  // only text at the very start gets "▁"
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "hi"), (Strings{"\u2581hi"}));
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "<x>hi there"), (Strings{"<x>", "hi", "\u2581there"}));
  parts.pre_tokenizer["prepend_scheme"] = "never";
  parts.pre_tokenizer["split"] = false;
  EXPECT_EQ(tokens_of(make_tokenizer(parts), "hi"), (Strings{"hi"}));
}

TEST(TokenizerAddedTokens, LongestMatchFlagsAndNormalizedMatching) {
  TokenizerParts parts;
  const int first = next_free_id(parts);
  parts.normalizer = {{"type", "Lowercase"}};
  parts.added_tokens = {
      added_token(first, "<a>", true),
      added_token(first + 1, "<ab>", true),
      added_token(first + 2, "[L]", true, {{"lstrip", true}}),
      added_token(first + 3, "[R]", true, {{"rstrip", true}}),
      added_token(first + 4, "cat", false, {{"single_word", true}}),
      added_token(first + 5, "dog", false),  // normalized: matches "DOG" after lowercasing
  };
  const Tokenizer tokenizer = make_tokenizer(parts);
  EXPECT_EQ(tokens_of(tokenizer, "x<ab>y<a>"), (Strings{"x", "<ab>", "y", "<a>"}));
  EXPECT_EQ(tokens_of(tokenizer, "a  [L]  [R]  b"), (Strings{"a", "[L]", " ", " ", "[R]", "b"}));
  EXPECT_EQ(tokens_of(tokenizer, "cat concat"),
            (Strings{"cat", " ", "c", "o", "n", "c", "a", "t"}));
  EXPECT_EQ(tokens_of(tokenizer, "HotDOG"), (Strings{"h", "o", "t", "dog"}));
  EXPECT_EQ(tokenizer.token_to_id("<ab>"), first + 1);
  EXPECT_TRUE(tokenizer.is_special(first));
  EXPECT_FALSE(tokenizer.is_special(first + 4));
  EXPECT_EQ(tokenizer.vocab_size(), first + 6);
  EXPECT_EQ(tokenizer.id_limit(), first + 6);
  // A special token whose content is in the vocab takes the vocab id.
  TokenizerParts reuse;
  reuse.added_tokens = {added_token(0, " ", true)};
  EXPECT_EQ(make_tokenizer(reuse).vocab_size(), next_free_id(reuse));
}

TEST(TokenizerPostProcessor, TemplateAddsBosOnlyWithSpecialTokens) {
  TokenizerParts parts;
  parts.extra_tokens = {"<s>"};
  const int bos = next_free_id(parts) - 1;
  parts.added_tokens = {added_token(bos, "<s>", true)};
  parts.post_processor = {
      {"type", "Sequence"},
      {"processors",
       {{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}},
        {{"type", "TemplateProcessing"},
         {"single",
          {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
           {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
         {"pair", json::array()},
         {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {bos}}, {"tokens", {"<s>"}}}}}}}}}};
  const Tokenizer tokenizer = make_tokenizer(parts);
  EXPECT_EQ(tokenizer.encode("a", true), (std::vector<int32_t>{bos, 'a' - ' '}));
  EXPECT_EQ(tokenizer.encode("a", false), (std::vector<int32_t>{'a' - ' '}));
  EXPECT_EQ(tokenizer.encode("", true), (std::vector<int32_t>{bos}));
}

TEST(TokenizerDecoders, Llama2ChainRestoresTextAndSkipsSpecials) {
  TokenizerParts parts;
  parts.extra_tokens = {"<s>", "\u2581hello"};
  parts.merges = json::array();
  parts.model_options = {{"byte_fallback", true}, {"ignore_merges", true}};
  parts.added_tokens = {added_token(next_free_id(parts) - 2, "<s>", true)};
  parts.normalizer = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", "\u2581"}},
        {{"type", "Replace"}, {"pattern", pattern("String", " ")}, {"content", "\u2581"}}}}};
  parts.decoder = {
      {"type", "Sequence"},
      {"decoders",
       {{{"type", "Replace"}, {"pattern", pattern("String", "\u2581")}, {"content", " "}},
        {{"type", "ByteFallback"}},
        {{"type", "Fuse"}},
        {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  const Tokenizer tokenizer = make_tokenizer(parts);
  const std::string text = "x  \u00e9\u65e5!";
  EXPECT_EQ(tokenizer.decode(tokenizer.encode(text, false), false), text);
  std::vector<int32_t> ids = tokenizer.encode("<s>hello", false);
  EXPECT_EQ(tokens_of(tokenizer, "<s>hello"), (Strings{"<s>", "\u2581hello"}));
  EXPECT_EQ(tokenizer.decode(ids, false), "<s> hello");
  EXPECT_EQ(tokenizer.decode(ids, true), "hello");
  // A lone continuation byte is not UTF-8: one U+FFFD per byte token.
  EXPECT_EQ(tokenizer.decode({*tokenizer.token_to_id("<0xA9>"), 'a' - ' '}, false), "\ufffda");
}

TEST(TokenizerDecoders, ByteLevelMetaspaceAndNoDecoder) {
  TokenizerParts parts;
  parts.pre_tokenizer = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  parts.extra_tokens = {"\u0120", "\u00c3", "\u00a9"};
  parts.decoder = {{"type", "ByteLevel"}};
  const Tokenizer byte_level = make_tokenizer(parts);
  EXPECT_EQ(byte_level.decode(byte_level.encode("h\u00e9 !", false), false), "h\u00e9 !");
  // A cut UTF-8 sequence decodes to U+FFFD, as Rust's from_utf8_lossy does.
  EXPECT_EQ(byte_level.decode({*byte_level.token_to_id("\u00c3")}, false), "\ufffd");

  TokenizerParts meta;
  meta.decoder = {{"type", "Metaspace"},
                  {"replacement", "\u2581"},
                  {"prepend_scheme", "always"},
                  {"split", true}};
  const Tokenizer metaspace = make_tokenizer(meta);
  const int32_t bar = *metaspace.token_to_id("\u2581");
  EXPECT_EQ(metaspace.decode({bar, 'a' - ' ', bar, 'b' - ' '}, false), "a b");

  const Tokenizer plain = make_tokenizer(TokenizerParts{});
  EXPECT_EQ(plain.decode({'a' - ' ', 'b' - ' '}, false), "a b");  // joined by spaces
}

TEST(TokenizerModelDir, ReadsSpecialTokenNamesFromTokenizerConfig) {
  const lathe::testing::TempDir temp;  // its own directory: concurrent suites never share it
  const std::string dir = temp.path();
  TokenizerParts parts;
  parts.extra_tokens = {"<s>", "</s>"};
  {
    std::ofstream(dir + "/tokenizer.json") << tokenizer_json(parts);
    std::ofstream(dir + "/tokenizer_config.json")
        << R"({"bos_token": "<s>", "eos_token": {"content": "</s>", "special": true},)"
        << R"( "pad_token": null})";
  }
  const Tokenizer tokenizer = Tokenizer::from_file(dir);
  EXPECT_EQ(tokenizer.bos_id(), tokenizer.token_to_id("<s>"));
  EXPECT_EQ(tokenizer.eos_id(), tokenizer.token_to_id("</s>"));
  EXPECT_FALSE(tokenizer.pad_id().has_value());
  EXPECT_EQ(tokenizer.source(), dir + "/tokenizer.json");
  EXPECT_FALSE(tokenizer.adds_bos());  // no add_bos_token
}

TEST(TokenizerModelDir, AddBosTokenIsABooleanCheckedWhenAsked) {
  const lathe::testing::TempDir temp;
  const std::string dir = temp.path();
  std::ofstream(dir + "/tokenizer.json") << tokenizer_json(TokenizerParts{});
  auto with_config = [&](const std::string& json) {
    std::ofstream(dir + "/tokenizer_config.json") << json;
    return Tokenizer::from_file(dir);
  };
  EXPECT_TRUE(with_config(R"({"add_bos_token": true})").adds_bos());
  EXPECT_FALSE(with_config(R"({"add_bos_token": false})").adds_bos());
  EXPECT_FALSE(with_config(R"({"add_bos_token": null})").adds_bos());
  const Tokenizer odd =
      with_config(R"({"add_bos_token": "yes"})");  // loads: only adds_bos() needs it
  try {
    odd.adds_bos();
    FAIL() << "a string add_bos_token was accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("add_bos_token"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lathe::test
