// CMoE (ALGORITHMS.md §5; docs/cmoe.md): the carved model's config, the carve maths against an
// independent recomputation, the carve plan, and the carved router in the decoder layer.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <numeric>
#include <set>

#include "compressor/model/architecture.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/model/model_spec.h"
#include "compressor/passes/plan.h"
#include "compressor/quant/carve.h"
#include "safetensors_builder.h"

namespace lathe {
namespace {

using nlohmann::json;
using testing::expect_error;

json tiny_llama() {
  return json::parse(R"({"model_type":"llama","vocab_size":64,"hidden_size":16,
    "intermediate_size":48,"num_hidden_layers":3,"num_attention_heads":2,"num_key_value_heads":1})");
}

/// tiny_llama with layers 0 and 2 carved into S2A3E8 (m = 6).
json carved_llama() {
  const ModelSpec dense = parse_model_spec(tiny_llama(), "config.json");
  CompressionPlan plan;
  CarvePlan c;
  c.experts = 8;
  c.shared = 2;
  c.active = 3;
  plan.carve[0] = c;
  plan.carve[2] = c;
  json config = tiny_llama();
  write_cmoe_config(config, dense, carved_layers(dense, plan));
  return config;
}

TEST(CmoeSpec, CarvedConfigParsesAsMoeLayersOfTheBaseFamily) {
  const json config = carved_llama();
  EXPECT_EQ(config["model_type"], "lathe_cmoe");
  EXPECT_EQ(config["lathe_cmoe"]["base_model_type"], "llama");
  const ModelSpec spec = parse_model_spec(config, "config.json");
  EXPECT_EQ(spec.family, Family::kLlama);
  EXPECT_TRUE(spec.carved);
  EXPECT_EQ(spec.routing.scoring, ScoringFunc::kCmoe);
  EXPECT_FALSE(spec.layers[1].is_moe);
  EXPECT_EQ(spec.layers[1].dense_intermediate, 48);
  const LayerSpec& l = spec.layers[2];
  EXPECT_TRUE(l.is_moe);
  EXPECT_EQ(l.num_experts, 6);
  EXPECT_EQ(l.top_k, 3);
  EXPECT_EQ(l.expert_intermediate, 6);
  EXPECT_EQ(l.shared_intermediate, 12);
  std::set<std::string> names;
  for (const auto& t : expected_layer_tensors(spec, ExpertLayout::kPerExpert, 0))
    names.insert(t.name);
  for (const char* n :
       {"model.layers.0.mlp.router.gate_proj.weight", "model.layers.0.mlp.router.up_proj.weight",
        "model.layers.0.mlp.router.extra_scale", "model.layers.0.mlp.router.bias",
        "model.layers.0.mlp.router.stock.weight", "model.layers.0.mlp.experts.5.down_proj.weight",
        "model.layers.0.mlp.shared_expert.up_proj.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  EXPECT_FALSE(names.count("model.layers.0.mlp.gate_proj.weight"));
  // Expert counts after pruning go into the carve's own layer list.
  json pruned = config;
  EXPECT_TRUE(write_expert_counts(pruned, spec, {4, 0, 5}));
  const ModelSpec after = parse_model_spec(pruned, "config.json");
  EXPECT_EQ(after.layers[0].num_experts, 4);
  EXPECT_EQ(after.layers[2].num_experts, 5);
  EXPECT_EQ(after.layers[2].top_k, 3);
}

TEST(CmoeSpec, BadCarvedConfigsNameTheField) {
  auto parse = [](const json& c) { return [c] { parse_model_spec(c, "config.json"); }; };
  json c = carved_llama();
  c.erase("lathe_cmoe");
  expect_error(parse(c), ErrorKind::kConfig, "lathe_cmoe", "required object");
  c = carved_llama();
  c["lathe_cmoe"]["base_model_type"] = "mixtral";
  expect_error(parse(c), ErrorKind::kConfig, "lathe_cmoe.base_model_type", "dense family");
  c = carved_llama();
  c["lathe_cmoe"]["layers"][0]["layer"] = 3;
  expect_error(parse(c), ErrorKind::kConfig, "lathe_cmoe.layers[0].layer", "outside [0");
  c = carved_llama();
  c["lathe_cmoe"]["layers"][1]["layer"] = 0;
  expect_error(parse(c), ErrorKind::kConfig, "lathe_cmoe.layers[1].layer", "listed twice");
  c = carved_llama();
  c["lathe_cmoe"]["layers"][0]["top_k"] = 7;
  expect_error(parse(c), ErrorKind::kConfig, "lathe_cmoe.layers[0].top_k", "more than");
  c = carved_llama();
  c["lathe_cmoe"]["layers"][0]["shared_intermediate"] = 0;
  expect_error(parse(c), ErrorKind::kConfig, "lathe_cmoe.layers[0].shared_intermediate",
               "exactly when");
  c = carved_llama();
  c["lathe_cmoe"]["layers"] = json::array();
  expect_error(parse(c), ErrorKind::kConfig, "lathe_cmoe.layers", "at least one");
  c = carved_llama();
  c["lathe_cmoe"]["version"] = 2;
  expect_error(parse(c), ErrorKind::kConfig, "lathe_cmoe.version", "expected 1");
}

TEST(CmoePlan, RoundTripsAndRefusesWhatCannotBeCarved) {
  CompressionPlan plan;
  CarvePlan c;
  c.experts = 8;
  c.shared = 1;
  c.active = 4;
  c.finetune = "router";
  c.finetune_steps = 7;
  plan.carve[1] = c;
  const CompressionPlan back = CompressionPlan::from_json(plan.to_json(), "plan.json");
  ASSERT_EQ(back.carve.size(), 1u);
  EXPECT_TRUE(back.carve.at(1) == c);
  const ModelSpec dense = parse_model_spec(tiny_llama(), "config.json");
  plan.validate(dense, {}, {}, "plan.json");  // 8 divides 48
  plan.carve[1].experts = 7;
  expect_error([&] { plan.validate(dense, {}, {}, "plan.json"); }, ErrorKind::kData,
               "carve.1.experts", "do not divide the FFN width 48");
  json doc = back.to_json();
  doc["carve"]["1"]["active"] = 8;  // S + A > N
  expect_error([&] { CompressionPlan::from_json(doc, "plan.json"); }, ErrorKind::kData,
               "carve.1.active", "experts − shared");
  const ModelSpec carved = parse_model_spec(carved_llama(), "config.json");
  CompressionPlan again;
  again.carve[0] = CarvePlan{};
  expect_error([&] { again.validate(carved, {}, {}, "plan.json"); }, ErrorKind::kData, "carve.0",
               "MoE layer");
}

/// Markers recomputed with plain loops: M[t][j] = 1 for the K largest |a_tj| of token t.
std::vector<std::vector<int>> reference_markers(const at::Tensor& h, const at::Tensor& gate,
                                                const at::Tensor& up, int64_t k) {
  const int64_t tokens = h.size(0), width = gate.size(0), d = h.size(1);
  auto unit = [](const at::Tensor& w) { return w / w.norm(2, {1}, true); };
  const at::Tensor hn = unit(h), gn = unit(gate), un = unit(up);
  std::vector<std::vector<int>> m(tokens, std::vector<int>(width, 0));
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<std::pair<double, int64_t>> a;
    for (int64_t j = 0; j < width; ++j) {
      double g = 0, u = 0;
      for (int64_t i = 0; i < d; ++i) {
        g += hn[t][i].item<double>() * gn[j][i].item<double>();
        u += hn[t][i].item<double>() * un[j][i].item<double>();
      }
      a.push_back({std::fabs(g / (1 + std::exp(-g)) * u), j});
    }
    std::sort(a.begin(), a.end(), [](auto x, auto y) { return x.first > y.first; });
    for (int64_t r = 0; r < k; ++r) m[t][a[r].second] = 1;
  }
  return m;
}

TEST(CmoeCarve, MatchesAnIndependentRecomputation) {
  at::manual_seed(3);
  const int64_t tokens = 40, d = 8, width = 24;
  const at::Tensor h = at::randn({tokens, d}), gate = at::randn({width, d}),
                   up = at::randn({width, d});
  const ModelSpec spec = parse_model_spec(tiny_llama(), "config.json");
  const CarveOptions o{6, 2, 5};  // m = 4: 8 shared neurons, 4 routed experts of 4
  const Carve c = carve_ffn(spec, h, gate, up, o);
  const auto m =
      reference_markers(h.to(at::kDouble), gate.to(at::kDouble), up.to(at::kDouble), o.atopk);
  std::vector<double> count(width, 0);
  for (const auto& row : m)
    for (int64_t j = 0; j < width; ++j) count[j] += row[j];
  for (int64_t j = 0; j < width; ++j) EXPECT_DOUBLE_EQ(c.rates[j], count[j] / tokens) << j;
  // Shared: the 8 highest rates, ties to the lower id.
  std::vector<int64_t> ids(width);
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int64_t a, int64_t b) { return count[a] > count[b]; });
  std::vector<int64_t> shared(ids.begin(), ids.begin() + 8);
  std::sort(shared.begin(), shared.end());
  EXPECT_EQ(c.shared, shared);
  // Balanced groups partition the rest, and the cost is each member's L1 distance to its seed.
  const std::vector<int64_t> seeds(ids.begin() + 8, ids.begin() + 12);
  ASSERT_EQ(c.experts.size(), 4u);
  std::set<int64_t> seen(shared.begin(), shared.end());
  double cost = 0;
  for (size_t e = 0; e < c.experts.size(); ++e) {
    EXPECT_EQ(c.experts[e].size(), 4u);
    EXPECT_TRUE(std::is_sorted(c.experts[e].begin(), c.experts[e].end()));
    for (int64_t j : c.experts[e]) {
      EXPECT_TRUE(seen.insert(j).second) << j;
      for (int64_t t = 0; t < tokens; ++t) cost += std::abs(m[t][j] - m[t][seeds[e]]);
    }
    EXPECT_NE(std::find(c.experts[e].begin(), c.experts[e].end(), c.representatives[e]),
              c.experts[e].end());
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(width));
  EXPECT_DOUBLE_EQ(c.assignment_cost, cost);
  // No other balanced assignment of these 16 neurons to the 4 seeds is cheaper: a swap between two
  // groups never lowers the cost (a necessary condition of the optimum, checked exhaustively).
  auto dist = [&](int64_t j, int64_t s) {
    double x = 0;
    for (int64_t t = 0; t < tokens; ++t) x += std::abs(m[t][j] - m[t][s]);
    return x;
  };
  for (size_t a = 0; a < 4; ++a)
    for (size_t b = a + 1; b < 4; ++b)
      for (int64_t i : c.experts[a])
        for (int64_t j : c.experts[b])
          EXPECT_GE(dist(i, seeds[b]) + dist(j, seeds[a]), dist(i, seeds[a]) + dist(j, seeds[b]));
  // Deterministic.
  const Carve again = carve_ffn(spec, h, gate, up, o);
  EXPECT_EQ(again.experts, c.experts);
  EXPECT_EQ(again.representatives, c.representatives);
}

TEST(CmoeCarve, RefusesBadShapes) {
  const ModelSpec spec = parse_model_spec(tiny_llama(), "config.json");
  const at::Tensor h = at::randn({4, 8}), w = at::randn({24, 8});
  expect_error(
      [&] {
        carve_ffn(spec, h, w, w, {7, 2, 3});
      },
      ErrorKind::kConfig, "experts", "do not divide the FFN width 24");
  expect_error(
      [&] {
        carve_ffn(spec, h, w, w, {6, 6, 3});
      },
      ErrorKind::kConfig, "shared", "shared < experts");
  expect_error(
      [&] {
        carve_ffn(spec, h, w, w, {6, 2, 25});
      },
      ErrorKind::kConfig, "atopk", "FFN width 24");
}

TEST(CmoeRouter, SelectsOnProbabilityPlusBiasAndWeighsOnePlusPLambda) {
  const ModelSpec spec = parse_model_spec(carved_llama(), "config.json");
  at::manual_seed(5);
  const int64_t d = 16, e = 6, m = 6;
  LayerWeights w;
  w.layer = 0;
  w.router = at::randn({e, d});
  w.router_up = at::randn({e, d});
  w.router_scale = at::rand({e});
  w.router_bias = at::zeros({e});
  w.router_bias[4] = 10.0f;  // expert 4 always selected
  for (int64_t i = 0; i < e; ++i)
    w.experts.push_back({at::randn({m, d}), at::randn({m, d}), at::randn({d, m})});
  const DecoderLayer layer(spec, w);
  const at::Tensor x = at::randn({5, d});
  const ForwardContext ctx;
  const at::Tensor got = layer.routing_weights(x, ctx);  // [5, 6]
  const at::Tensor s = (at::linear(x, w.router_up) * at::silu(at::linear(x, w.router))).abs();
  const at::Tensor p = s.softmax(-1);
  for (int64_t t = 0; t < 5; ++t) {
    EXPECT_GT(got[t][4].item<float>(), 0.f);
    int64_t selected = 0;
    for (int64_t i = 0; i < e; ++i) {
      const float g = got[t][i].item<float>();
      if (g == 0.f) continue;
      ++selected;
      EXPECT_NEAR(g, 1 + p[t][i].item<float>() * w.router_scale[i].item<float>(), 1e-6);
    }
    EXPECT_EQ(selected, 3);
  }
}

}  // namespace
}  // namespace lathe
