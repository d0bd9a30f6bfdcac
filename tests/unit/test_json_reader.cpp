// compressor/common/json_reader.h: the one typed JSON reader. Errors carry the reader's kind, the
// file and the JSON path of the value at fault; null counts as absent; aliases; bounds.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/common/json_reader.h"

namespace lathe {
namespace {

using json = nlohmann::json;

/// The Error a call throws: kind, where, field and message.
template <typename F>
Error error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no error";
  return InternalError("", "", "");
}

const json kDoc = json::parse(R"({
  "n": 3, "neg": -2, "x": 2.5, "flag": true, "s": "text", "gone": null,
  "big": 18446744073709551615, "two": 2.0,
  "list": [1, 2, 3], "names": ["a", "b"],
  "layers": [{"rel_err": 0.1}, {"rel_err": "big"}],
  "nested": {"inner": {"k": 1}}, "ch": "é", "chs": "ab"
})");

TEST(JsonReader, TypedFieldsAndFallbacks) {
  const JsonReader r(kDoc, "f.json");
  EXPECT_EQ(r.int_at("n"), 3);
  EXPECT_EQ(r.int_at("n", 3), 3);
  EXPECT_DOUBLE_EQ(r.number_at("n"), 3.0);  // integers are numbers
  EXPECT_DOUBLE_EQ(r.number_at("x"), 2.5);
  EXPECT_TRUE(r.bool_at("flag"));
  EXPECT_EQ(r.string_at("s"), "text");
  EXPECT_EQ(r.int_or("missing", 7), 7);
  EXPECT_EQ(r.int_or("gone", 7), 7);  // null counts as absent
  EXPECT_FALSE(r.has("gone"));
  EXPECT_FALSE(r.optional_int("gone").has_value());
  EXPECT_EQ(r.string_or("s", "z"), "text");
  EXPECT_EQ(r.int_list("list"), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(r.string_list("names"), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(r.int_list("missing").empty());
  EXPECT_EQ(r.at("nested").at("inner").int_at("k"), 1);
  EXPECT_EQ(r.at("nested").at("inner").path(), "nested.inner");
  EXPECT_EQ(r.at("layers").element(1).path(), "layers[1]");
  EXPECT_EQ(r.at("ch").as_char(), "é");
}

TEST(JsonReader, AliasesReadTheFirstPresentAndNameTheFirstWhenAbsent) {
  const JsonReader r(kDoc, "config.json", "", ErrorKind::kConfig);
  EXPECT_EQ(r.int_at({"num_experts", "gone", "n"}), 3);
  EXPECT_EQ(r.find({"gone", "s"})->path(), "s");
  const Error e = error_of([&] { r.int_at({"num_experts", "n_routed_experts"}); });
  EXPECT_EQ(e.kind(), ErrorKind::kConfig);
  EXPECT_EQ(e.where(), "config.json");
  EXPECT_EQ(e.field(), "num_experts");
  EXPECT_EQ(e.message(), "required field is missing");
}

TEST(JsonReader, MistakesNameFileFieldExpectationAndFinding) {
  const JsonReader r(kDoc, "report.json");
  Error e = error_of([&] { r.at("layers").element(1).number_at("rel_err", 0.0); });
  EXPECT_EQ(e.kind(), ErrorKind::kData);
  EXPECT_EQ(e.field(), "layers[1].rel_err");
  EXPECT_EQ(e.message(), "expected a number, found string \"big\"");
  EXPECT_EQ(error_of([&] { r.int_at("two"); }).message(), "expected an integer, found number 2.0");
  EXPECT_EQ(error_of([&] { r.int_at("big"); }).message(),
            "integer 18446744073709551615 is too large");
  EXPECT_EQ(error_of([&] { r.int_at("neg", 0); }).message(), "expected an integer ≥ 0, found -2");
  EXPECT_EQ(error_of([&] { r.number_at("neg", 0.0); }).message(),
            "expected a finite number ≥ 0.0, found -2");
  EXPECT_EQ(error_of([&] { r.bool_at("s"); }).message(),
            "expected true or false, found string \"text\"");
  EXPECT_EQ(error_of([&] { r.int_list("names"); }).field(), "names[0]");
  EXPECT_EQ(error_of([&] { r.at("chs").as_char(); }).message(),
            "expected exactly one character, found \"ab\"");
  EXPECT_EQ(error_of([&] { r.object_at("s"); }).message(),
            "expected an object, found string \"text\"");
  EXPECT_EQ(error_of([&] { r.at("list").int_at("k"); }).message(),
            "expected an object, found array");
  EXPECT_EQ(error_of([&] { r.at("s").array_size(); }).field(), "s");
  e = error_of([&] { r.at("nested").fail("inner", "bad"); });
  EXPECT_EQ(std::string(e.what()), "report.json: nested.inner: bad");
  EXPECT_EQ(error_of([&] { r.at("s").unsupported("no"); }).kind(), ErrorKind::kUnsupported);
}

TEST(JsonReader, CheckKeysNamesTheFirstUnknownKey) {
  const JsonReader r(kDoc, "bank.json");
  r.at("nested").check_keys({"inner"});
  const Error e = error_of([&] { r.at("nested").check_keys({"outer"}); });
  EXPECT_EQ(e.field(), "nested.inner");
  EXPECT_EQ(e.message(), "unknown key");
}

TEST(JsonReader, LongValuesAreCutInMessages) {
  const json doc = {{"s", std::string(100, 'x')}};
  const Error e = error_of([&] { JsonReader(doc, "f").int_at("s"); });
  EXPECT_EQ(e.message(), "expected an integer, found string \"" + std::string(36, 'x') + "...");
}

TEST(JsonReader, FieldNamesTakeOneToFourNames) {
  EXPECT_THROW(FieldNames({"a", "b", "c", "d", "e"}), InternalError);
  const JsonReader r(kDoc, "f");
  EXPECT_EQ(r.int_at({"a", "b", "c", "n"}), 3);
}

}  // namespace
}  // namespace lathe
