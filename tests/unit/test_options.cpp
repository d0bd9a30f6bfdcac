// Typed pass options (compressor/passes/options.h): canonical text, parsing, checks and wording.
#include <gtest/gtest.h>

#include <cmath>

#include "compressor/common/errors.h"
#include "compressor/passes/options.h"
#include "compressor/passes/pass.h"
#include "tests/unit/safetensors_builder.h"

namespace lathe {
namespace {

OptionSpec spec(OptionType type, std::optional<double> min = {}, std::optional<double> max = {},
                std::vector<std::string> choices = {}) {
  return {"opt", type, "", "", std::move(choices), min, max};
}

/// parse_option's error for `text`, or "" when it parsed.
std::string parse_error(const OptionSpec& s, const std::string& text) {
  std::string error;
  auto value = parse_option(s, text, &error);
  EXPECT_EQ(value.has_value(), error.empty()) << text;
  return value ? "" : error;
}

/// format(parse(text)), failing the test when text does not parse.
std::string reformat(const OptionSpec& s, const std::string& text) {
  std::string error;
  auto value = parse_option(s, text, &error);
  EXPECT_TRUE(value) << text << ": " << error;
  return value ? format_option(s, *value) : "<error>";
}

TEST(Options, TypeNames) {
  EXPECT_STREQ(option_type_name(OptionType::kInt), "int");
  EXPECT_STREQ(option_type_name(OptionType::kIntList), "int-list");
  EXPECT_STREQ(option_type_name(OptionType::kStringList), "string-list");
}

TEST(Options, IntegersAreDecimal) {
  auto s = spec(OptionType::kInt);
  EXPECT_EQ(reformat(s, "128"), "128");
  EXPECT_EQ(reformat(s, "-1"), "-1");
  EXPECT_EQ(reformat(s, "007"), "7");
  EXPECT_EQ(std::get<int64_t>(*parse_option(s, "-9223372036854775808", nullptr)), INT64_MIN);
  EXPECT_EQ(parse_error(s, "4.0"), "expected an integer, found \"4.0\"");
  EXPECT_EQ(parse_error(s, "+4"), "expected an integer, found \"+4\"");
  EXPECT_EQ(parse_error(s, "0x10"), "expected an integer, found \"0x10\"");
  EXPECT_EQ(parse_error(s, ""), "expected an integer, found \"\"");
  EXPECT_EQ(parse_error(s, "9223372036854775808"),
            "expected an integer, found \"9223372036854775808\"");
}

TEST(Options, IntegerBoundsAreWorded) {
  EXPECT_EQ(parse_error(spec(OptionType::kInt, 2, 8), "9"),
            "expected an integer in [2, 8], found \"9\"");
  EXPECT_EQ(parse_error(spec(OptionType::kInt, 2, 8), "1"),
            "expected an integer in [2, 8], found \"1\"");
  EXPECT_EQ(parse_error(spec(OptionType::kInt, 2, 8), "x"),
            "expected an integer in [2, 8], found \"x\"");
  EXPECT_EQ(parse_error(spec(OptionType::kInt, 1), "0"), "expected an integer ≥ 1, found \"0\"");
  EXPECT_EQ(parse_error(spec(OptionType::kInt, {}, 7), "8"),
            "expected an integer ≤ 7, found \"8\"");
  EXPECT_EQ(parse_error(spec(OptionType::kInt, 2, 8), "2"), "");
  EXPECT_EQ(parse_error(spec(OptionType::kInt, 2, 8), "8"), "");
}

TEST(Options, FloatsAreShortestRoundTrip) {
  auto s = spec(OptionType::kFloat);
  EXPECT_EQ(reformat(s, "0.25"), "0.25");
  EXPECT_EQ(reformat(s, "0.250"), "0.25");
  EXPECT_EQ(reformat(s, "3"), "3");
  EXPECT_EQ(reformat(s, ".5"), "0.5");
  EXPECT_EQ(reformat(s, "+1.5"), "1.5");
  EXPECT_EQ(reformat(s, "1e-7"), "1e-07");
  EXPECT_EQ(format_option(s, 0.1 + 0.2), "0.30000000000000004");
  for (double v : {0.1, 1.0 / 3.0, 6.02214076e23, -2.5e-300}) {
    std::string text = format_option(s, v);
    EXPECT_EQ(std::get<double>(*parse_option(s, text, nullptr)), v) << text;
  }
  EXPECT_EQ(parse_error(s, "nan"), "expected a number, found \"nan\"");
  EXPECT_EQ(parse_error(s, "inf"), "expected a number, found \"inf\"");
  EXPECT_EQ(parse_error(s, "1e999"), "expected a number, found \"1e999\"");
  EXPECT_EQ(parse_error(s, "0x1p3"), "expected a number, found \"0x1p3\"");
  EXPECT_EQ(parse_error(spec(OptionType::kFloat, 0, 1), "1.5"),
            "expected a number in [0, 1], found \"1.5\"");
  EXPECT_EQ(parse_error(spec(OptionType::kFloat, 0.5, {}), "0.25"),
            "expected a number ≥ 0.5, found \"0.25\"");
}

TEST(Options, BoolsAreTrueOrFalse) {
  auto s = spec(OptionType::kBool);
  EXPECT_EQ(reformat(s, "true"), "true");
  EXPECT_EQ(reformat(s, "false"), "false");
  EXPECT_EQ(parse_error(s, "yes"), "expected true or false, found \"yes\"");
  EXPECT_EQ(parse_error(s, "True"), "expected true or false, found \"True\"");
}

TEST(Options, StringsAreBareOrQuoted) {
  auto s = spec(OptionType::kString);
  EXPECT_EQ(format_option(s, std::string("data/a_b-c.1+2%.txt")), "data/a_b-c.1+2%.txt");
  EXPECT_EQ(format_option(s, std::string("")), "\"\"");
  EXPECT_EQ(format_option(s, std::string("a b")), "\"a b\"");
  EXPECT_EQ(format_option(s, std::string("say \"hi\" \\ bye")), "\"say \\\"hi\\\" \\\\ bye\"");
  EXPECT_EQ(format_option(s, std::string("a:b,c{d}=e")), "\"a:b,c{d}=e\"");
  for (std::string v : {"", "x", "a b", "\"", "\\", "\\\"", "é,ü", "{[(,:;=)]}"}) {
    std::string text = format_option(s, v);
    EXPECT_EQ(std::get<std::string>(*parse_option(s, text, nullptr)), v) << text;
  }
  // Unquoted text (as `--set` gives it) is taken as it is.
  EXPECT_EQ(std::get<std::string>(*parse_option(s, "my file.json", nullptr)), "my file.json");
  EXPECT_EQ(parse_error(s, "\"abc"),
            "expected a string (a quoted string lacks its closing '\"'), found \"\\\"abc\"");
  EXPECT_EQ(
      parse_error(s, "\"a\\n\""),
      "expected a string (a quoted string escapes only \\\" and \\\\), found \"\\\"a\\\\n\\\"\"");
  EXPECT_EQ(parse_error(s, "\"a\"b"),
            "expected a string (text follows the closing '\"'), found \"\\\"a\\\"b\"");
}

TEST(Options, EnumsNameTheirChoices) {
  auto s = spec(OptionType::kEnum, {}, {}, {"pack", "document"});
  EXPECT_EQ(reformat(s, "document"), "document");
  EXPECT_EQ(reformat(s, "\"pack\""), "pack");
  EXPECT_EQ(parse_error(s, "packed"), "expected one of pack, document, found \"packed\"");
  EXPECT_EQ(check_option(s, std::string("Pack")), "expected one of pack, document, found \"Pack\"");
}

TEST(Options, IntListsAreColonJoined) {
  auto s = spec(OptionType::kIntList, 0, 7);
  EXPECT_EQ(reformat(s, "0:1:5"), "0:1:5");
  EXPECT_EQ(reformat(s, "3"), "3");
  EXPECT_EQ(reformat(s, ""), "");
  EXPECT_TRUE(std::get<std::vector<int64_t>>(*parse_option(s, "", nullptr)).empty());
  EXPECT_EQ(parse_error(s, "0:x"),
            "expected a list of integers in [0, 7] separated by ':', found \"0:x\"");
  EXPECT_EQ(parse_error(s, "0::1"),
            "expected a list of integers in [0, 7] separated by ':', found \"0::1\"");
  EXPECT_EQ(parse_error(s, "\"1\""),
            "expected a list of integers in [0, 7] separated by ':', found \"\\\"1\\\"\"");
  EXPECT_EQ(parse_error(s, "0:9"),
            "expected a list of integers in [0, 7], found \"9\" (element 2)");
}

TEST(Options, StringListsQuoteTheirElements) {
  auto s = spec(OptionType::kStringList);
  std::vector<std::string> v = {"hf", "a:b", "", "q\"x"};
  std::string text = format_option(s, v);
  EXPECT_EQ(text, "hf:\"a:b\":\"\":\"q\\\"x\"");
  EXPECT_EQ(std::get<std::vector<std::string>>(*parse_option(s, text, nullptr)), v);
  EXPECT_EQ(format_option(s, std::vector<std::string>{}), "");
  EXPECT_EQ(std::get<std::vector<std::string>>(*parse_option(s, "", nullptr)).size(), 0u);
  EXPECT_EQ(std::get<std::vector<std::string>>(*parse_option(s, "\"\"", nullptr)).size(), 1u);
  EXPECT_EQ(
      parse_error(s, "\"a\"b"),
      "expected a list of strings (a quoted list element must be followed by ':' or the end), "
      "found \"\\\"a\\\"b\"");
}

TEST(Options, CheckRejectsTheWrongAlternative) {
  EXPECT_EQ(check_option(spec(OptionType::kInt, 2, 8), std::string("4")),
            "expected an integer in [2, 8], found a value of another type");
  EXPECT_EQ(check_option(spec(OptionType::kFloat), int64_t{1}),
            "expected a number, found a value of another type");
  EXPECT_EQ(check_option(spec(OptionType::kFloat), std::nan("")),
            "expected a number, found \"nan\"");
  EXPECT_EQ(check_option(spec(OptionType::kInt, 2, 8), int64_t{4}), "");
  EXPECT_THROW(format_option(spec(OptionType::kInt), true), InternalError);
}

TEST(Options, ValuesHoldDefaultsAndPrintInSpecOrder) {
  const PassInfo* rtn = find_pass("rtn");
  ASSERT_NE(rtn, nullptr);
  OptionValues values(rtn->options);
  EXPECT_EQ(values.get_int("bits"), 4);
  EXPECT_EQ(values.get_int("group-size"), 128);
  EXPECT_TRUE(values.get_bool("sym"));
  EXPECT_EQ(values.canonical(rtn->options), "bits=4,group-size=128,sym=true,skip=false");
  values.set("bits", int64_t{3});
  EXPECT_EQ(values.canonical(rtn->options), "bits=3,group-size=128,sym=true,skip=false");

  const PassInfo* drop = find_pass("drop-experts");
  ASSERT_NE(drop, nullptr);
  OptionValues drop_values(drop->options);
  EXPECT_FALSE(drop_values.has("keep"));  // no default: absent until given
  EXPECT_EQ(drop_values.canonical(drop->options), "");
  drop_values.set("keep", std::vector<int64_t>{0, 2});
  drop_values.set("map", std::string("maps/expert map.json"));
  EXPECT_EQ(drop_values.canonical(drop->options), "keep=0:2,map=\"maps/expert map.json\"");
}

TEST(Options, GettersRefuseMissingOrMistypedValues) {
  OptionValues values;
  values.set("n", int64_t{1});
  EXPECT_EQ(values.get_int("n"), 1);
  EXPECT_THROW(values.get_int("m"), InternalError);
  EXPECT_THROW(values.get_float("n"), InternalError);
  EXPECT_THROW(values.get_string("n"), InternalError);
  std::vector<OptionSpec> bad = {{"x", OptionType::kInt, "four", "", {}, {}, {}}};
  testing::expect_error([&] { OptionValues v(bad); }, ErrorKind::kInternal, "x", "bad default");
}

TEST(Options, DescribeMatchesTheErrorWording) {
  EXPECT_EQ(describe_option(spec(OptionType::kIntList, 0, {})), "a list of integers ≥ 0");
  EXPECT_EQ(describe_option(spec(OptionType::kEnum, {}, {}, {"a", "b"})), "one of a, b");
}

}  // namespace
}  // namespace lathe
