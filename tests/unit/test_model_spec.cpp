#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"
#include "safetensors_builder.h"

namespace lathe {
namespace {

using nlohmann::json;
using testing::expect_error;

json tiny_mixtral() {
  return json::parse(
      R"({"model_type":"mixtral","vocab_size":512,"hidden_size":64,"intermediate_size":96,
    "num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":2,"num_local_experts":8,
    "num_experts_per_tok":2,"rope_theta":1000000.0,"tie_word_embeddings":false})");
}

json tiny_deepseek() {
  return json::parse(
      R"({"model_type":"deepseek_v3","vocab_size":512,"hidden_size":64,"intermediate_size":128,
    "moe_intermediate_size":32,"num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":4,
    "n_routed_experts":8,"n_shared_experts":1,"num_experts_per_tok":2,"first_k_dense_replace":1,
    "n_group":2,"topk_group":1,"q_lora_rank":48,"kv_lora_rank":32,"qk_nope_head_dim":16,
    "qk_rope_head_dim":8,"v_head_dim":16,"routed_scaling_factor":2.5})");
}

TEST(ModelSpec, MixtralLayoutAndRouting) {
  const ModelSpec spec = parse_model_spec(tiny_mixtral(), "config.json");
  EXPECT_EQ(spec.family, Family::kMixtral);
  EXPECT_EQ(spec.attention.head_dim, 16);
  EXPECT_EQ(spec.attention.num_kv_heads, 2);
  EXPECT_DOUBLE_EQ(spec.rope.theta, 1e6);
  ASSERT_EQ(spec.layers.size(), 4u);
  for (const auto& l : spec.layers) {
    EXPECT_TRUE(l.is_moe);
    EXPECT_EQ(l.num_experts, 8);
    EXPECT_EQ(l.top_k, 2);
    EXPECT_EQ(l.expert_intermediate, 96);  // Mixtral's experts use intermediate_size
  }
  EXPECT_TRUE(spec.routing.renormalize);  // Mixtral always renormalises top-k
  EXPECT_EQ(spec.routing.scoring, ScoringFunc::kSoftmax);
  EXPECT_DOUBLE_EQ(spec.rms_norm_eps, 1e-5);  // family default, absent from the config
}

TEST(ModelSpec, DeepseekV3DensePrefixMlaAndGroups) {
  const ModelSpec spec = parse_model_spec(tiny_deepseek(), "config.json");
  EXPECT_EQ(spec.attention.kind, AttentionKind::kMla);
  EXPECT_FALSE(spec.layers[0].is_moe);
  EXPECT_EQ(spec.layers[0].dense_intermediate, 128);
  EXPECT_TRUE(spec.layers[1].is_moe);
  EXPECT_EQ(spec.layers[1].expert_intermediate, 32);
  EXPECT_EQ(spec.layers[1].shared_intermediate, 32);
  EXPECT_EQ(spec.routing.scoring, ScoringFunc::kSigmoid);
  EXPECT_TRUE(spec.routing.selection_bias);
  EXPECT_TRUE(spec.routing.renormalize);
  EXPECT_EQ(spec.routing.num_groups, 2);
  EXPECT_EQ(spec.routing.topk_groups, 1);
  EXPECT_EQ(spec.routing.group_score, GroupScore::kTop2Sum);
  EXPECT_DOUBLE_EQ(spec.routing.scaling_factor, 2.5);
  const std::vector<std::optional<int64_t>> experts = {std::nullopt, 8, 8, 8};
  EXPECT_EQ(spec.experts_per_layer(), experts);
}

TEST(ModelSpec, RopeFromV4AndV5Fields) {
  json v4 = tiny_mixtral();
  v4["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  const ModelSpec a = parse_model_spec(v4, "config.json");
  EXPECT_EQ(a.rope.scaling_type, "linear");
  EXPECT_DOUBLE_EQ(a.rope.factor, 4.0);
  json v5 = tiny_mixtral();
  v5.erase("rope_theta");
  v5["rope_parameters"] = {
      {"rope_type", "yarn"}, {"rope_theta", 50000.0}, {"factor", 8.0}, {"beta_fast", 32}};
  const ModelSpec b = parse_model_spec(v5, "config.json");
  EXPECT_EQ(b.rope.scaling_type, "yarn");
  EXPECT_DOUBLE_EQ(b.rope.theta, 50000.0);
  EXPECT_NE(b.rope.parameters_json.find("beta_fast"), std::string::npos);
}

TEST(ModelSpec, PerLayerExpertCountsAfterPruning) {
  json config = tiny_mixtral();
  config["num_experts_per_layer"] = {8, 6, 4, 3};
  const ModelSpec spec = parse_model_spec(config, "config.json");
  EXPECT_EQ(spec.layers[1].num_experts, 6);
  EXPECT_EQ(spec.layers[3].num_experts, 3);
  const auto tensors = expected_layer_tensors(spec, ExpertLayout::kPerExpert, 3);
  const auto routers = std::count_if(tensors.begin(), tensors.end(),
                                     [](const auto& t) { return t.role == TensorRole::kRouter; });
  EXPECT_EQ(routers, 1);
  for (const auto& t : tensors) {
    if (t.role == TensorRole::kRouter) {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{3, 64}));
    }
    EXPECT_LT(t.expert, 3);
  }
}

struct BadConfigCase {
  const char* name;
  std::function<void(json&)> edit;
  ErrorKind kind;
  const char* field;
  const char* message_part;
};

TEST(ModelSpec, BadConfigsNameTheField) {
  const std::vector<BadConfigCase> cases = {
      {"no model_type", [](json& c) { c.erase("model_type"); }, ErrorKind::kConfig, "model_type",
       "missing"},
      {"unknown family", [](json& c) { c["model_type"] = "gpt_neox"; }, ErrorKind::kUnsupported,
       "model_type", "gpt_neox"},
      {"string int", [](json& c) { c["hidden_size"] = "64"; }, ErrorKind::kConfig, "hidden_size",
       "expected an integer"},
      {"float int", [](json& c) { c["num_hidden_layers"] = 4.0; }, ErrorKind::kConfig,
       "num_hidden_layers", "expected an integer"},
      {"negative", [](json& c) { c["hidden_size"] = -64; }, ErrorKind::kConfig, "hidden_size",
       "positive"},
      {"kv heads", [](json& c) { c["num_key_value_heads"] = 3; }, ErrorKind::kConfig,
       "num_key_value_heads", "must divide"},
      {"heads vs hidden",
       [](json& c) {
         c["num_attention_heads"] = 5;
         c["num_key_value_heads"] = 5;
       },
       ErrorKind::kConfig, "num_attention_heads", "must divide hidden_size"},
      {"top-k", [](json& c) { c["num_experts_per_tok"] = 9; }, ErrorKind::kConfig,
       "num_experts_per_tok", "[1, 8]"},
      {"bool", [](json& c) { c["tie_word_embeddings"] = 1; }, ErrorKind::kConfig,
       "tie_word_embeddings", "true or false"},
      {"per-layer length",
       [](json& c) {
         c["num_experts_per_layer"] = {8, 8};
       },
       ErrorKind::kConfig, "num_experts_per_layer", "expected num_hidden_layers = 4"},
      {"per-layer below top-k",
       [](json& c) {
         c["num_experts_per_layer"] = {8, 8, 1, 8};
       },
       ErrorKind::kConfig, "num_experts_per_layer[2]", "between"},
      {"rope object", [](json& c) { c["rope_scaling"] = "linear"; }, ErrorKind::kConfig,
       "rope_scaling", "expected an object"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    json config = tiny_mixtral();
    c.edit(config);
    expect_error([&] { parse_model_spec(config, "config.json"); }, c.kind, c.field, c.message_part);
  }
}

TEST(ModelSpec, BadDeepseekAndQwenConfigs) {
  json d = tiny_deepseek();
  d["n_group"] = 3;
  expect_error([&] { parse_model_spec(d, "c.json"); }, ErrorKind::kConfig, "n_group",
               "must divide");
  d = tiny_deepseek();
  d["topk_group"] = 5;
  expect_error([&] { parse_model_spec(d, "c.json"); }, ErrorKind::kConfig, "topk_group",
               "[1, n_group=2]");
  d = tiny_deepseek();
  d["scoring_func"] = "relu";
  expect_error([&] { parse_model_spec(d, "c.json"); }, ErrorKind::kConfig, "scoring_func", "relu");
  json q = json::parse(R"({"model_type":"qwen2_moe","num_hidden_layers":4,"mlp_only_layers":[7]})");
  expect_error([&] { parse_model_spec(q, "c.json"); }, ErrorKind::kConfig, "mlp_only_layers[0]",
               "outside [0, 4)");
}

TEST(ModelSpec, ConfigFileErrors) {
  testing::TempDir dir;
  expect_error([&] { load_model_spec(dir.path()); }, ErrorKind::kResource, "", "no config.json");
  dir.write("config.json", std::string("{\"model_type\": \"llama\","));
  const std::string truncated =
      expect_error([&] { load_model_spec(dir.path()); }, ErrorKind::kData, "", "");
  EXPECT_NE(truncated.find("config.json"), std::string::npos) << truncated;
  dir.write("config.json",
            std::string(R"({"model_type": "llama", "hidden_size": 64, "hidden_size": 128})"));
  expect_error([&] { load_model_spec(dir.path()); }, ErrorKind::kData, "hidden_size", "");
}

TEST(Architecture, MixtralNamesInBothLayouts) {
  const ModelSpec spec = parse_model_spec(tiny_mixtral(), "config.json");
  auto find = [](const std::vector<ExpectedTensor>& ts,
                 const std::string& name) -> const ExpectedTensor* {
    for (const auto& t : ts) {
      if (t.name == name) return &t;
    }
    return nullptr;
  };
  const auto per_expert = expected_tensors(spec, ExpertLayout::kPerExpert);
  const ExpectedTensor* w2 =
      find(per_expert, "model.layers.3.block_sparse_moe.experts.7.w2.weight");
  ASSERT_NE(w2, nullptr);
  EXPECT_EQ(w2->shape, (std::vector<int64_t>{64, 96}));
  EXPECT_EQ(w2->role, TensorRole::kExpertDown);
  EXPECT_EQ(w2->expert, 7);
  EXPECT_NE(find(per_expert, "model.layers.0.block_sparse_moe.gate.weight"), nullptr);
  // 1 embed + 4 × (2 norms + 4 attn + router + 8×3 experts) + final norm + lm_head
  EXPECT_EQ(per_expert.size(), 1u + 4u * 31u + 2u);
  const auto fused = expected_tensors(spec, ExpertLayout::kFused);
  const ExpectedTensor* gate_up = find(fused, "model.layers.1.mlp.experts.gate_up_proj");
  ASSERT_NE(gate_up, nullptr);
  EXPECT_EQ(gate_up->shape, (std::vector<int64_t>{8, 192, 64}));
  EXPECT_NE(find(fused, "model.layers.1.mlp.gate.weight"), nullptr);
  EXPECT_EQ(
      detect_expert_layout(spec, [&](const std::string& n) { return find(fused, n) != nullptr; }),
      ExpertLayout::kFused);
  EXPECT_EQ(detect_expert_layout(
                spec, [&](const std::string& n) { return find(per_expert, n) != nullptr; }),
            ExpertLayout::kPerExpert);
}

TEST(Architecture, DeepseekMlaSharedAndBias) {
  const ModelSpec spec = parse_model_spec(tiny_deepseek(), "config.json");
  const auto layer1 = expected_layer_tensors(spec, ExpertLayout::kPerExpert, 1);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& t : layer1) shapes[t.name] = t.shape;
  const std::string p = "model.layers.1.";
  EXPECT_EQ(shapes.at(p + "self_attn.q_b_proj.weight"), (std::vector<int64_t>{4 * 24, 48}));
  EXPECT_EQ(shapes.at(p + "self_attn.kv_a_proj_with_mqa.weight"),
            (std::vector<int64_t>{32 + 8, 64}));
  EXPECT_EQ(shapes.at(p + "self_attn.kv_b_proj.weight"), (std::vector<int64_t>{4 * 32, 32}));
  EXPECT_EQ(shapes.at(p + "self_attn.o_proj.weight"), (std::vector<int64_t>{64, 4 * 16}));
  EXPECT_EQ(shapes.at(p + "mlp.gate.e_score_correction_bias"), (std::vector<int64_t>{8}));
  EXPECT_EQ(shapes.at(p + "mlp.shared_experts.down_proj.weight"), (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(category_of(TensorRole::kRouterBias), Category::kRouter);
  const auto layer0 = expected_layer_tensors(spec, ExpertLayout::kPerExpert, 0);
  for (const auto& t : layer0) EXPECT_EQ(t.name.find("experts"), std::string::npos) << t.name;
}

TEST(Architecture, TiedHeadIsNotExpected) {
  json config = tiny_mixtral();
  config["tie_word_embeddings"] = true;
  for (const auto& t :
       expected_tensors(parse_model_spec(config, "c.json"), ExpertLayout::kPerExpert)) {
    EXPECT_NE(t.name, "lm_head.weight");
  }
}

}  // namespace
}  // namespace lathe
