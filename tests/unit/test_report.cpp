// report.json v1 parsing and the Markdown/HTML renderings (compressor/report/report.h).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/report/report.h"
#include "compressor/report/report_sections.h"
#include "compressor/report/svg_chart.h"

namespace lathe {
namespace {

using nlohmann::json;

size_t count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1))
    ++n;
  return n;
}

json eval_json(double ppl, double acc) {
  return {{"model", "m"},
          {"seq_len", 512},
          {"stride", 512},
          {"perplexity", {{"wiki.txt", ppl}}},
          {"tokens", {{"wiki.txt", 1000}}},
          {"predicted", {{"wiki.txt", 998}}},
          {"tasks",
           {{"cloze.jsonl",
             {{"accuracy", acc}, {"n", 400}, {"correct", static_cast<int>(acc * 400)}}}}},
          {"lathe_version", "0.1.0"}};
}

/// A 2-layer MoE report: layer 0 keeps 8 of 8 experts, layer 1 keeps 6.
json moe_report() {
  json tensors = json::array();
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    tensors.push_back({{"name", p + "self_attn.q_proj.weight"},
                       {"layer", layer},
                       {"format", "rtn-int4-g128-sym"},
                       {"bits", 4},
                       {"rel_err", 0.022}});
    for (int e = 0; e < 8; ++e) {
      const bool removed = layer == 1 && e >= 6;
      tensors.push_back({{"name", p + "mlp.experts." + std::to_string(e) + ".down_proj.weight"},
                         {"layer", layer},
                         {"format", removed ? "removed" : "rtn-int4-g128-sym"},
                         {"bits", removed ? 0 : 4},
                         {"rel_err", removed ? json(nullptr) : json(0.03)}});
    }
  }
  tensors.push_back({{"name", "lm_head.weight"},
                     {"layer", nullptr},
                     {"format", "bf16"},
                     {"bits", 16},
                     {"rel_err", nullptr}});
  return {{"format", "lathe-report"},
          {"version", 1},
          {"pipeline", "rtn{bits=4,group-size=128}"},
          {"model", "models/tiny"},
          {"output", "out/tiny"},
          {"lathe_version", "0.1.0"},
          {"created", "2025-01-02T03:04:05Z"},
          {"size", {{"before_bytes", 4000000}, {"after_bytes", 1000000}}},
          {"layers",
           {{{"layer", 0},
             {"experts_before", 8},
             {"experts_kept", 8},
             {"rel_err", 0.0125},
             {"seconds", 1.5}},
            {{"layer", 1},
             {"experts_before", 8},
             {"experts_kept", 6},
             {"rel_err", 0.05},
             {"seconds", 2.25}}}},
          {"tensors", tensors},
          {"passes",
           {{{"name", "rtn"},
             {"options", "bits=4,group-size=128"},
             {"seconds", 3.75},
             {"peak_rss_bytes", 1048576}}}},
          {"eval", {{"before", eval_json(10.0, 0.75)}, {"after", eval_json(10.5, 0.7325)}}},
          {"gate",
           {{"max_ppl_increase", 0.03},
            {"max_acc_drop", 1.0},
            {"max_kl", 0.02},
            {"passed", false},
            {"failures", {"perplexity wiki.txt: +5.00% > +3.00% allowed"}}}}};
}

/// A dense report without evaluation, gate or per-tensor records.
json dense_report() {
  json doc = moe_report();
  doc["layers"] = {{{"layer", 0},
                    {"experts_before", nullptr},
                    {"experts_kept", nullptr},
                    {"rel_err", nullptr},
                    {"seconds", 1.0}}};
  doc["tensors"] = json::array();
  doc["eval"] = {{"before", nullptr}, {"after", nullptr}};
  doc["gate"] = nullptr;
  return doc;
}

/// The DataError's field when parsing `doc` fails, "" when it parses.
std::string rejected_field(const json& doc) {
  try {
    parse_report(doc, "out/report/report.json");
  } catch (const DataError& e) {
    EXPECT_EQ(e.where(), "out/report/report.json");
    return e.field();
  }
  return "";
}

TEST(Report, RoundTripsThroughJson) {
  const Report r = parse_report(moe_report(), "r.json");
  EXPECT_EQ(r.layers.size(), 2u);
  EXPECT_EQ(*r.layers[1].experts_kept, 6);
  EXPECT_EQ(r.tensors.size(), 19u);
  EXPECT_FALSE(r.tensors.back().layer.has_value());
  EXPECT_DOUBLE_EQ(r.eval_after->perplexity.at("wiki.txt").perplexity, 10.5);
  EXPECT_FALSE(r.gate->passed);
  EXPECT_DOUBLE_EQ(*r.gate->max_kl, 0.02);
  EXPECT_EQ(report_to_json(r), moe_report());
  // A report written before the KL gate existed has no max_kl: read as no KL limit.
  json old = moe_report();
  old["gate"].erase("max_kl");
  EXPECT_FALSE(parse_report(old, "r.json").gate->max_kl.has_value());
}

TEST(Report, MalformedFieldsAreNamed) {
  json doc = moe_report();
  doc["layers"][1]["rel_err"] = "big";
  EXPECT_EQ(rejected_field(doc), "layers[1].rel_err");
  doc = moe_report();
  doc["layers"][0]["experts_kept"] = 9;
  EXPECT_EQ(rejected_field(doc), "layers[0].experts_kept");
  doc = moe_report();
  doc["tensors"][3].erase("bits");
  EXPECT_EQ(rejected_field(doc), "tensors[3].bits");
  doc = moe_report();
  doc["format"] = "something-else";
  EXPECT_EQ(rejected_field(doc), "format");
  doc = moe_report();
  doc.erase("size");
  EXPECT_EQ(rejected_field(doc), "size");
  doc = moe_report();
  doc["eval"]["after"]["tasks"]["cloze.jsonl"]["accuracy"] = 73.25;  // a percentage, not a fraction
  EXPECT_EQ(rejected_field(doc), "eval.after.tasks.cloze.jsonl.accuracy");
  doc = moe_report();
  doc["gate"]["failures"] = {"ok", 3};
  EXPECT_EQ(rejected_field(doc), "gate.failures[1]");
  doc = moe_report();
  doc["layers"][1]["layer"] = 0;
  EXPECT_EQ(rejected_field(doc), "layers[1].layer");
}

TEST(Report, TopLevelNonObjectAndNewerVersion) {
  EXPECT_THROW(parse_report(json::array(), "r.json"), DataError);
  json doc = moe_report();
  doc["version"] = 2;
  try {
    parse_report(doc, "r.json");
    FAIL() << "version 2 accepted";
  } catch (const UnsupportedError& e) {
    EXPECT_EQ(e.field(), "version");
  }
}

TEST(Report, MarkdownTablesHoldTheValues) {
  const std::string md = render_markdown(parse_report(moe_report(), "r.json"));
  EXPECT_NE(md.find("| pipeline | `` rtn{bits=4,group-size=128} `` |"), std::string::npos) << md;
  EXPECT_NE(md.find("| before | 4000000 (3.81 MiB) |"), std::string::npos) << md;
  EXPECT_NE(md.find("| ratio | 4.00× smaller (25.0% of before) |"), std::string::npos) << md;
  // 10 → 10.5 is +5.00% against a 3% limit; 75% → 73.25% is −1.75 points against 1.
  EXPECT_NE(
      md.find("| perplexity | wiki.txt | 10.0000 | 10.5000 | +5.00% | +3.00% | **regression** |"),
      std::string::npos)
      << md;
  EXPECT_NE(
      md.find(
          "| accuracy | cloze.jsonl | 75.00% | 73.25% | -1.75 pp | -1.00 pp | **regression** |"),
      std::string::npos)
      << md;
  EXPECT_NE(md.find("| 1 | 8 | 6 | 5% | 2.25 s |"), std::string::npos) << md;
  EXPECT_NE(md.find("| rtn-int4-g128-sym | 4 | 16 | 2.9% |"), std::string::npos)
      << md;  // (2·0.022 + 14·0.03) / 16
  EXPECT_NE(md.find("| removed | 0 | 2 | - |"), std::string::npos) << md;
  EXPECT_NE(md.find("| rtn | bits=4,group-size=128 | 3.75 s | 1.00 MiB |"), std::string::npos)
      << md;
  EXPECT_NE(md.find("## Gate: FAILED"), std::string::npos);
}

// Pruned layers (docs/sparsity.md): sparsity and target per layer, zeros per tensor; they
// round-trip and the layer tables gain a sparsity column only when some layer has one.
TEST(Report, SparsityColumnsAppearForPrunedLayers) {
  json doc = moe_report();
  doc["layers"][0]["sparsity"] = 0.4375;
  doc["layers"][0]["sparsity_target"] = 0.4412;
  doc["tensors"][0]["zeros"] = 0.4375;
  const Report r = parse_report(doc, "r.json");
  ASSERT_TRUE(r.layers[0].sparsity.has_value());
  EXPECT_FALSE(r.layers[1].sparsity.has_value());
  EXPECT_DOUBLE_EQ(*r.tensors[0].zeros, 0.4375);
  EXPECT_EQ(report_to_json(r), doc);
  const std::string md = render_markdown(r);
  EXPECT_NE(md.find("| layer | experts before | experts kept | sparsity | rel. error | seconds |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| 0 | 8 | 8 | 43.8% (target 44.1%) |"), std::string::npos) << md;
  EXPECT_NE(md.find("| 1 | 8 | 6 | - | 5% | 2.25 s |"), std::string::npos) << md;
  EXPECT_NE(render_html(r).find("<th class=\"num\">sparsity</th>"), std::string::npos);
  EXPECT_EQ(render_markdown(parse_report(moe_report(), "r.json")).find("sparsity"),
            std::string::npos);
}

TEST(Report, MarkdownEscapesTableCells) {
  json doc = dense_report();
  doc["passes"][0]["options"] = "match=a|b";
  const std::string md = render_markdown(parse_report(doc, "r.json"));
  EXPECT_NE(md.find("| rtn | match=a\\|b |"), std::string::npos) << md;
  EXPECT_NE(md.find("No MoE layers"), std::string::npos);
  EXPECT_NE(md.find("No evaluation was run."), std::string::npos);
}

TEST(Report, HtmlHasOneSvgPerPlot) {
  const std::string html = render_html(parse_report(moe_report(), "r.json"));
  // size, perplexity, accuracy, experts, bits heatmap, reconstruction error
  EXPECT_EQ(count(html, "<svg"), 6u);
  EXPECT_EQ(count(html, "</svg>"), 6u);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);
  EXPECT_NE(html.find("FAILED (1 regression)"), std::string::npos);
  EXPECT_NE(html.find("14 of 16 experts kept (87.5%)"), std::string::npos);
}

TEST(Report, HtmlForADenseModelWithoutEvalSaysSo) {
  const std::string html = render_html(parse_report(dense_report(), "r.json"));
  EXPECT_EQ(count(html, "<svg"), 1u);  // only the size plot has data
  EXPECT_NE(html.find("No MoE layers: the model is dense."), std::string::npos);
  EXPECT_NE(html.find("No evaluation was run"), std::string::npos);
  EXPECT_NE(html.find("No per-tensor records."), std::string::npos);
  EXPECT_NE(html.find("No per-layer reconstruction error was measured."), std::string::npos);
}

TEST(Report, HtmlEscapesNamesEverywhere) {
  json doc = moe_report();
  const std::string evil = "<script>alert('x')</script>";
  doc["model"] = evil;
  doc["tensors"][0]["name"] = "model.layers.0." + evil + ".weight";
  doc["eval"]["before"]["perplexity"] = {{evil, 10.0}};
  doc["eval"]["after"]["perplexity"] = {{evil, 10.1}};
  doc["passes"][0]["name"] = evil;
  doc["gate"]["failures"] = {evil};
  const std::string html = render_html(parse_report(doc, "r.json"));
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("alert('x')"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"), std::string::npos);
}

TEST(Report, PerplexityNullMeansInfinite) {
  json doc = moe_report();
  doc["eval"]["after"]["perplexity"]["wiki.txt"] = nullptr;
  const Report r = parse_report(doc, "r.json");
  EXPECT_TRUE(std::isinf(r.eval_after->perplexity.at("wiki.txt").perplexity));
  EXPECT_NE(render_markdown(r).find("| perplexity | wiki.txt | 10.0000 | inf | +inf% |"),
            std::string::npos);
}

TEST(ReportText, EscapingAndUnits) {
  EXPECT_EQ(report_text::html_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
  EXPECT_EQ(report_text::markdown_cell("a|b\nc"), "a\\|b c");
  EXPECT_EQ(report_text::human_bytes(1536), "1.50 KiB");
  EXPECT_EQ(report_text::human_bytes(512), "512 B");
  EXPECT_EQ(report_detail::tensor_kind("model.layers.12.mlp.experts.63.down_proj.weight"),
            "mlp.experts.*.down_proj");
  EXPECT_EQ(report_detail::tensor_kind("model.layers.0.self_attn.q_proj.bias"),
            "self_attn.q_proj.bias");
}

TEST(SvgChart, NiceTicksAndLogScale) {
  EXPECT_EQ(svg::nice_ticks(0, 8.64), (std::vector<double>{0, 2, 4, 6, 8}));
  const std::vector<double> fifths = svg::nice_ticks(0, 1);
  ASSERT_EQ(fifths.size(), 6u);
  for (size_t i = 0; i < fifths.size(); ++i) EXPECT_NEAR(fifths[i], 0.2 * i, 1e-12);
  svg::BarChart chart;
  chart.categories = {"0", "1"};
  chart.series = {{"err", "#e76f51", {0.001, 0.5}}};
  chart.log_scale = true;
  const std::string svg_text = svg::bar_chart(chart);
  EXPECT_NE(svg_text.find("(log scale)"), std::string::npos);
  EXPECT_EQ(count(svg_text, "<rect"), 1u /* legend */ + 2u);
}

}  // namespace
}  // namespace lathe
