// Threshold parsing and the regression gate of `lathe compare` (compressor/report/compare.h).
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/report/compare.h"
#include "compressor/report/report.h"

namespace lathe {
namespace {

using nlohmann::json;

EvalSummary eval_of(const json& perplexity, const json& tasks,
                    const json& tokens = json::object()) {
  return parse_eval_summary({{"model", "m"},
                             {"seq_len", 512},
                             {"stride", 512},
                             {"perplexity", perplexity},
                             {"tokens", tokens},
                             {"tasks", tasks}},
                            "eval.json");
}

json task(double accuracy, int n = 400) {
  return {{"accuracy", accuracy}, {"n", n}, {"correct", 0}};
}

std::string config_field(void (*parse)(const std::string&), const std::string& text) {
  try {
    parse(text);
  } catch (const ConfigError& e) {
    return e.field();
  }
  return "accepted";
}

TEST(CompareThresholds, PerplexityIncreaseAsPercentOrFraction) {
  EXPECT_DOUBLE_EQ(parse_ppl_increase("3%"), 0.03);
  EXPECT_DOUBLE_EQ(parse_ppl_increase("0.03"), 0.03);
  EXPECT_DOUBLE_EQ(parse_ppl_increase("2.5%"), 0.025);
  EXPECT_DOUBLE_EQ(parse_ppl_increase(".5%"), 0.005);
  EXPECT_DOUBLE_EQ(parse_ppl_increase("0"), 0.0);
  EXPECT_DOUBLE_EQ(parse_ppl_increase("150%"), 1.5);
  auto reject = [](const std::string& t) { parse_ppl_increase(t); };
  for (const char* bad : {"3%%", "", "%", "-1%", "+3%", "3 %", " 3%", "3pp", "nan", "inf", "1e-2",
                          "3", "1.0", "0x1", "3%x"}) {
    EXPECT_EQ(config_field(reject, bad), "--max-ppl-increase") << bad;
  }
}

TEST(CompareThresholds, BareNumberAboveOneIsRefusedWithAHint) {
  try {
    parse_ppl_increase("3");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("write 3%"), std::string::npos) << e.what();
  }
}

TEST(CompareThresholds, AccuracyDropInPoints) {
  EXPECT_DOUBLE_EQ(parse_acc_drop("1"), 1.0);
  EXPECT_DOUBLE_EQ(parse_acc_drop("0.5pp"), 0.5);
  EXPECT_DOUBLE_EQ(parse_acc_drop("0"), 0.0);
  auto reject = [](const std::string& t) { parse_acc_drop(t); };
  for (const char* bad : {"1%", "-1", "abc", "", "101", "1 pp", "1e0"}) {
    EXPECT_EQ(config_field(reject, bad), "--max-acc-drop") << bad;
  }
}

TEST(Compare, DeltasAndUngatedComparisonPasses) {
  const auto a = eval_of({{"wiki.txt", 10.0}}, {{"cloze.jsonl", task(0.75)}});
  const auto b = eval_of({{"wiki.txt", 10.5}}, {{"cloze.jsonl", task(0.70)}});
  const Comparison c = compare_evals(a, b, {});
  ASSERT_EQ(c.metrics.size(), 2u);
  EXPECT_EQ(c.metrics[0].kind, MetricKind::kPerplexity);
  EXPECT_NEAR(c.metrics[0].delta, 0.05, 1e-12);
  EXPECT_EQ(c.metrics[1].kind, MetricKind::kAccuracy);
  EXPECT_NEAR(c.metrics[1].delta, -5.0, 1e-9);
  EXPECT_FALSE(c.metrics[0].regression);
  EXPECT_TRUE(c.passed);
}

// The documented boundary: a change equal to the limit passes, anything beyond it regresses,
// although 10.3 / 10 − 1 and 100 · (0.74 − 0.75) are not exactly 0.03 and −1 in binary.
TEST(Compare, ExactlyAtTheLimitPassesJustAboveRegresses) {
  const Thresholds t{0.03, 1.0};
  const auto a = eval_of({{"wiki.txt", 10.0}}, {{"cloze.jsonl", task(0.75)}});
  const Comparison at =
      compare_evals(a, eval_of({{"wiki.txt", 10.3}}, {{"cloze.jsonl", task(0.74)}}), t);
  EXPECT_FALSE(at.metrics[0].regression);
  EXPECT_FALSE(at.metrics[1].regression);
  EXPECT_TRUE(at.passed);
  const Comparison above =
      compare_evals(a, eval_of({{"wiki.txt", 10.3001}}, {{"cloze.jsonl", task(0.7399)}}), t);
  EXPECT_TRUE(above.metrics[0].regression);
  EXPECT_TRUE(above.metrics[1].regression);
  EXPECT_FALSE(above.passed);
  const auto lines = regression_lines(above);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "perplexity wiki.txt: +3.001% > +3.00% allowed (10.0000 -> 10.3001)");
  EXPECT_EQ(
      lines[1],
      "accuracy cloze.jsonl: -1.01 pp exceeds the allowed drop of 1.00 pp (75.00% -> 73.99%)");
}

TEST(Compare, ImprovementsNeverRegress) {
  const Thresholds t{0.0, 0.0};
  const Comparison c = compare_evals(eval_of({{"w", 10.0}}, {{"t", task(0.5)}}),
                                     eval_of({{"w", 9.0}}, {{"t", task(0.6)}}), t);
  EXPECT_TRUE(c.passed);
}

TEST(Compare, OnlyOneLimitGatesOnlyItsKind) {
  const Thresholds t{std::nullopt, 1.0};
  const Comparison c = compare_evals(eval_of({{"w", 10.0}}, {{"t", task(0.5)}}),
                                     eval_of({{"w", 20.0}}, {{"t", task(0.5)}}), t);
  EXPECT_FALSE(c.metrics[0].limit.has_value());
  EXPECT_FALSE(c.metrics[0].regression);
  EXPECT_TRUE(c.passed);
}

TEST(Compare, FilesOnOneSideAreListedNotCompared) {
  const auto a = eval_of({{"wiki.txt", 10.0}, {"old.txt", 5.0}}, {{"cloze.jsonl", task(0.75)}});
  const auto b = eval_of({{"wiki.txt", 10.0}, {"new.txt", 7.0}}, {{"defs.jsonl", task(0.2)}});
  const Comparison c = compare_evals(a, b, {0.01, 1.0});
  ASSERT_EQ(c.metrics.size(), 1u);
  ASSERT_EQ(c.only_in_a.size(), 2u);
  EXPECT_EQ(c.only_in_a[0].name, "old.txt");
  EXPECT_EQ(c.only_in_a[1].kind, MetricKind::kAccuracy);
  ASSERT_EQ(c.only_in_b.size(), 2u);
  EXPECT_EQ(c.only_in_b[0].name, "new.txt");
  const std::string table = format_comparison(c, "a.json", "b.json");
  EXPECT_NE(table.find("only in A: perplexity old.txt\n"), std::string::npos) << table;
  EXPECT_NE(table.find("only in B: accuracy defs.jsonl\n"), std::string::npos) << table;
  EXPECT_NE(table.find("PASS: 1 metric(s) within limits"), std::string::npos) << table;
}

TEST(Compare, GateWithNothingSharedIsAnError) {
  const auto a = eval_of({{"a.txt", 10.0}}, json::object());
  const auto b = eval_of({{"b.txt", 10.0}}, json::object());
  EXPECT_THROW(compare_evals(a, b, {0.03, std::nullopt}), DataError);
  EXPECT_NO_THROW(compare_evals(a, b, {}));
}

TEST(Compare, TokenMismatchWarns) {
  const auto a = eval_of({{"w", 10.0}}, json::object(), {{"w", 1000}});
  const auto b = eval_of({{"w", 10.0}}, json::object(), {{"w", 999}});
  const Comparison c = compare_evals(a, b, {});
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_NE(c.warnings[0].find("A has 1000 tokens, B 999"), std::string::npos);
}

TEST(Compare, InfinitePerplexityRegresses) {
  const auto a = eval_of({{"w", 10.0}}, json::object());
  const auto b = eval_of({{"w", nullptr}}, json::object());
  const Comparison c = compare_evals(a, b, {0.5, std::nullopt});
  EXPECT_TRUE(std::isinf(c.metrics[0].delta));
  EXPECT_FALSE(c.passed);
}

TEST(Compare, TableIsAlignedAndJsonHasTheDocumentedKeys) {
  const auto a = eval_of({{"wiki.txt", 10.0}}, {{"cloze.jsonl", task(0.75)}});
  const auto b = eval_of({{"wiki.txt", 10.5}}, {{"cloze.jsonl", task(0.75)}});
  const Comparison c = compare_evals(a, b, {0.03, 1.0});
  const std::string table = format_comparison(c, "a.json", "b.json");
  // Numbers are right-aligned so that decimal points line up.
  EXPECT_NE(
      table.find("\nkind        name               A        B    change     limit  result\n"
                 "perplexity  wiki.txt     10.0000  10.5000    +5.00%    +3.00%  REGRESSION\n"
                 "accuracy    cloze.jsonl   75.00%   75.00%  +0.00 pp  -1.00 pp  ok\n"
                 "REGRESSION: perplexity wiki.txt: +5.00% > +3.00% allowed (10.0000 -> 10.5000)\n"),
      std::string::npos)
      << table;
  const json j = comparison_to_json(c, "a.json", "b.json");
  EXPECT_EQ(j["a"], "a.json");
  EXPECT_EQ(j["passed"], false);
  ASSERT_EQ(j["metrics"].size(), 2u);
  EXPECT_EQ(j["metrics"][0]["kind"], "perplexity");
  EXPECT_EQ(j["metrics"][0]["regression"], true);
  EXPECT_DOUBLE_EQ(j["metrics"][0]["limit"].get<double>(), 0.03);
  EXPECT_EQ(j["metrics"][1]["kind"], "accuracy");
  EXPECT_DOUBLE_EQ(j["metrics"][1]["b"].get<double>(), 0.75);
}

TEST(Compare, GateReportCarriesThresholdsAndFailures) {
  const Comparison c = compare_evals(eval_of({{"w", 10.0}}, json::object()),
                                     eval_of({{"w", 11.0}}, json::object()), {0.05, 2.0});
  const GateReport g = gate_report(c);
  EXPECT_FALSE(g.passed);
  EXPECT_DOUBLE_EQ(*g.max_ppl_increase, 0.05);
  ASSERT_EQ(g.failures.size(), 1u);
  EXPECT_EQ(g.failures[0], "perplexity w: +10.00% > +5.00% allowed (10.0000 -> 11.0000)");
}

TEST(EvalSummary, MalformedEvalJsonNamesTheField) {
  auto field_of = [](const json& doc) {
    try {
      parse_eval_summary(doc, "e.json");
    } catch (const DataError& e) {
      EXPECT_EQ(e.where(), "e.json");
      return e.field();
    }
    return std::string("accepted");
  };
  EXPECT_EQ(field_of({{"perplexity", {{"w", "12"}}}}), "perplexity.w");
  EXPECT_EQ(field_of({{"perplexity", {{"w", -1.0}}}}), "perplexity.w");
  EXPECT_EQ(field_of({{"tasks", {{"t", {{"accuracy", 1.5}}}}}}), "tasks.t.accuracy");
  EXPECT_EQ(field_of({{"tasks", {{"t", {{"n", 3}}}}}}), "tasks.t.accuracy");
  EXPECT_EQ(field_of({{"tokens", {{"w", 3}}}}), "");  // neither perplexity nor tasks
  EXPECT_EQ(field_of({{"perplexity", json::array()}}), "perplexity");
  EXPECT_EQ(field_of({{"perplexity", {{"w", 3.0}}}, {"tokens", {{"w", 1.5}}}}), "tokens.w");
}

}  // namespace
}  // namespace lathe
