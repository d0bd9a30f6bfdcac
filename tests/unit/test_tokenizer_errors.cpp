// Bad tokenizer files and bad inputs: each is refused with the right error kind, naming the file's
// JSON path (or the byte / id) that caused it.
#include <gtest/gtest.h>

#include <string>

#include "calibrate/tokenizer.h"
#include "calibrate/tokenizer/regex.h"
#include "test_tokenizer_helpers.h"

namespace lathe::test {
namespace {

using json = nlohmann::json;

Tokenizer load(const std::string& text) {
  return Tokenizer::from_json(text, "bad.json");
}

Tokenizer load(const json& root) {
  return load(root.dump());
}

json valid_root() {
  return json::parse(tokenizer_json(TokenizerParts{}));
}

TEST(TokenizerErrors, NotJsonAndDuplicateKeys) {
  const Error e = expect_error(ErrorKind::kData, "", [] { load(std::string("{\"model\": ")); });
  EXPECT_EQ(e.where(), "bad.json");
  expect_error(ErrorKind::kData, "type", [] {
    load(std::string(R"({"model": {"type": "BPE", "type": "BPE", "vocab": {}, "merges": []}})"));
  });
  expect_error(ErrorKind::kData, "", [] { load(std::string("[1, 2]")); });
}

TEST(TokenizerErrors, ModelTypeVocabAndMerges) {
  json root = valid_root();
  root["model"]["type"] = "WordPiece";
  expect_error(ErrorKind::kUnsupported, "model.type", [&] { load(root); });
  root = valid_root();
  root["model"].erase("vocab");
  expect_error(ErrorKind::kData, "model.vocab", [&] { load(root); });
  root = valid_root();
  root["model"]["vocab"]["zz"] = 0;  // id 0 is already " "
  expect_error(ErrorKind::kData, "model.vocab", [&] { load(root); });
  root = valid_root();
  root["model"]["vocab"]["neg"] = -5;
  expect_error(ErrorKind::kData, "model.vocab", [&] { load(root); });
  root = valid_root();
  root["model"]["vocab"]["ab"] = root["model"]["vocab"].size();
  root["model"]["merges"] = {"a b", "a \u00e9"};  // é is not in the vocab
  const Error e = expect_error(ErrorKind::kData, "model.merges[1]", [&] { load(root); });
  EXPECT_NE(e.message().find("\u00e9"), std::string::npos);
  root["model"]["merges"] = {"b a"};  // "ba" is not in the vocab
  expect_error(ErrorKind::kData, "model.merges[0]", [&] { load(root); });
  root["model"]["merges"] = {"a b c"};
  expect_error(ErrorKind::kData, "model.merges[0]", [&] { load(root); });
  root = valid_root();
  root["model"]["dropout"] = 0.1;
  expect_error(ErrorKind::kUnsupported, "model.dropout", [&] { load(root); });
  root["model"]["dropout"] = 0.0;  // no dropout is fine
  EXPECT_NO_THROW(load(root));
  root["model"]["unk_token"] = "<unk>";
  expect_error(ErrorKind::kData, "model.unk_token", [&] { load(root); });
}

TEST(TokenizerErrors, UnsupportedComponentsAndRegexNameTheirPath) {
  json root = valid_root();
  root["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}};
  expect_error(ErrorKind::kUnsupported, "normalizer.type", [&] { load(root); });
  root = valid_root();
  root["pre_tokenizer"] = {{"type", "Sequence"},
                           {"pretokenizers",
                            {{{"type", "Split"},
                              {"pattern", {{"String", "x"}}},
                              {"behavior", "Isolated"},
                              {"invert", false}},
                             {{"type", "Split"},
                              {"pattern", {{"Regex", "(?<=a)b"}}},
                              {"behavior", "Isolated"},
                              {"invert", false}}}}};
  EXPECT_NO_THROW(load(root));  // lookbehind is Oniguruma syntax, as in tokenizers
  root["pre_tokenizer"]["pretokenizers"][1]["pattern"]["Regex"] = "(?<=a";
  const Error e = expect_error(ErrorKind::kData, "pre_tokenizer.pretokenizers[1].pattern.Regex",
                               [&] { load(root); });
  EXPECT_EQ(e.where(), "bad.json");
  EXPECT_NE(e.message().find("(?<=a"), std::string::npos);
  root["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_error(ErrorKind::kUnsupported, "pre_tokenizer.type", [&] { load(root); });
  root = valid_root();
  root["pre_tokenizer"] = {{"type", "Split"},
                           {"pattern", {{"Regex", "x"}}},
                           {"behavior", "Sideways"},
                           {"invert", false}};
  expect_error(ErrorKind::kData, "pre_tokenizer.behavior", [&] { load(root); });
  root = valid_root();
  root["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}};
  expect_error(ErrorKind::kUnsupported, "decoder.type", [&] { load(root); });
  root = valid_root();
  root["decoder"] = {{"type", "Strip"}, {"content", "ab"}, {"start", 1}, {"stop", 0}};
  expect_error(ErrorKind::kData, "decoder.content", [&] { load(root); });
  root = valid_root();
  root["post_processor"] = {{"type", "TemplateProcessing"},
                            {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}}},
                            {"special_tokens", json::object()}};
  expect_error(ErrorKind::kData, "post_processor.single[0]", [&] { load(root); });
  root = valid_root();
  root["version"] = "2.0";
  expect_error(ErrorKind::kUnsupported, "version", [&] { load(root); });
}

TEST(TokenizerErrors, AddedTokenWithAnIdTokenizersWouldNotGiveIt) {
  json root = valid_root();
  const int next = static_cast<int>(root["model"]["vocab"].size());
  root["added_tokens"] = {added_token(next + 5, "<pad>", true)};
  const Error e = expect_error(ErrorKind::kData, "added_tokens[0].id", [&] { load(root); });
  EXPECT_NE(e.message().find(std::to_string(next)), std::string::npos) << e.what();
  root["added_tokens"] = {added_token(next, "<pad>", true)};
  EXPECT_EQ(load(root).token_to_id("<pad>"), next);
}

TEST(TokenizerErrors, InvalidUtf8InputNamesTheByteOffset) {
  const Tokenizer tokenizer = make_tokenizer(TokenizerParts{});
  const Error e = expect_error(ErrorKind::kData, "byte 3", [&] {
    tokenizer.encode(std::string("abc\xff"
                                 "def"),
                     false);
  });
  EXPECT_NE(e.message().find("0xFF"), std::string::npos);
  expect_error(ErrorKind::kData, "byte 1",
               [&] { tokenizer.encode(std::string("a\xe2\x82"), false); });
}

TEST(TokenizerErrors, DecodingAnUnknownIdNamesIt) {
  const Tokenizer tokenizer = make_tokenizer(TokenizerParts{});
  const int32_t limit = static_cast<int32_t>(tokenizer.id_limit());
  expect_error(ErrorKind::kConfig, "id " + std::to_string(limit), [&] {
    tokenizer.decode({0, limit}, false);
  });
  expect_error(ErrorKind::kConfig, "id -1", [&] { tokenizer.decode({-1}, false); });
  EXPECT_EQ(tokenizer.decode({limit - 1}, false), "<0xFF>");
}

TEST(TokenizerErrors, HostilePatternsFailInsteadOfHangingOrOverflowing) {
  // Exponential backtracking: stopped by Oniguruma's retry limit, naming the pattern. (Without a
  // 'b' in the text Oniguruma's search optimisation rejects it at once, hence the "cb".)
  const tok::Regex regex = tok::Regex::compile("(?:a|a)*b");
  expect_error(ErrorKind::kUnsupported, "(?:a|a)*b",
               [&] { regex.find_all(std::string(60, 'a') + "cb"); });
  EXPECT_TRUE(regex.find_all(std::string(60, 'a')).empty());
  const std::string deep = std::string(5000, '(') + "a" + std::string(5000, ')');
  expect_error(ErrorKind::kUnsupported, "pre_tokenizer.pattern.Regex",
               [&] { tok::Regex::compile(deep, "bad.json", "pre_tokenizer.pattern.Regex"); });
}

TEST(TokenizerErrors, SparseIdsAreAcceptedWithoutATableOfEveryId) {
  json root = valid_root();
  root["model"]["vocab"]["far"] = 2000000000;
  const Tokenizer tokenizer = load(root);
  EXPECT_EQ(tokenizer.id_limit(), 2000000001);
  EXPECT_EQ(tokenizer.decode({2000000000}, false), "far");
  expect_error(ErrorKind::kConfig, "id 1999999999", [&] { tokenizer.decode({1999999999}, false); });
}

TEST(TokenizerErrors, MissingFileIsAResourceError) {
  expect_error(ErrorKind::kResource, "",
               [] { Tokenizer::from_file("/nonexistent/tokenizer.json"); });
}

}  // namespace
}  // namespace lathe::test
