// Gemma 3 text (gemma3_text): config parsing, tensor names, the (1 + w) RMSNorm, the scaled
// embedding and the sliding-window mask. Logit parity with transformers is tests/python's.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include <nlohmann/json.hpp>

#include "compressor/model/architecture.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/model/model_spec.h"
#include "safetensors_builder.h"

namespace lathe {
namespace {

using nlohmann::json;
using testing::expect_error;

/// A transformers 5 config.json as Gemma3TextConfig writes it.
json tiny_gemma3() {
  return json::parse(
      R"({"model_type":"gemma3_text","vocab_size":512,"hidden_size":64,"intermediate_size":96,
    "num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":1,"head_dim":32,
    "query_pre_attn_scalar":48,"sliding_window":16,"attn_logit_softcapping":null,
    "final_logit_softcapping":null,"hidden_activation":"gelu_pytorch_tanh",
    "layer_types":["sliding_attention","sliding_attention","full_attention","sliding_attention"],
    "rope_parameters":{"full_attention":{"rope_type":"default","rope_theta":1000000.0},
                       "sliding_attention":{"rope_type":"default","rope_theta":10000.0}}})");
}

TEST(Gemma3Spec, TransformersFiveConfig) {
  const ModelSpec spec = parse_model_spec(tiny_gemma3(), "config.json");
  EXPECT_EQ(spec.family, Family::kGemma3Text);
  EXPECT_EQ(spec.attention.head_dim, 32);  // from the config, not hidden / heads = 16
  EXPECT_EQ(spec.attention.num_kv_heads, 1);
  ASSERT_TRUE(spec.attention.query_pre_attn_scalar.has_value());
  EXPECT_DOUBLE_EQ(*spec.attention.query_pre_attn_scalar, 48.0);
  EXPECT_TRUE(spec.attention.qk_norm_per_head);
  EXPECT_FALSE(spec.attention.sliding_window.has_value());  // the window is per layer
  EXPECT_TRUE(spec.norm_plus_one);
  EXPECT_TRUE(spec.sandwich_norms);
  EXPECT_TRUE(spec.tie_word_embeddings);  // family default
  EXPECT_EQ(spec.mlp_activation, MlpActivation::kGeluTanh);
  EXPECT_DOUBLE_EQ(spec.embedding_scale, 8.0);
  EXPECT_DOUBLE_EQ(spec.rope.theta, 1e6);
  ASSERT_TRUE(spec.local_attention.has_value());
  EXPECT_EQ(spec.local_attention->window, 16);
  EXPECT_DOUBLE_EQ(spec.local_attention->rope.theta, 1e4);
  const std::vector<bool> sliding = {true, true, false, true};
  for (size_t i = 0; i < sliding.size(); ++i)
    EXPECT_EQ(spec.layers[i].sliding_attention, sliding[i]) << i;
  EXPECT_FALSE(spec.is_moe());
}

TEST(Gemma3Spec, OlderConfigFieldsAndPatternDefault) {
  // rope_theta + rope_local_base_freq + rope_scaling (released Gemma 3 4B), no layer_types.
  json c = tiny_gemma3();
  c.erase("layer_types");
  c.erase("rope_parameters");
  c["num_hidden_layers"] = 12;
  c["rope_theta"] = 500000.0;
  c["rope_local_base_freq"] = 20000.0;
  c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 8.0}};
  const ModelSpec spec = parse_model_spec(c, "config.json");
  EXPECT_DOUBLE_EQ(spec.rope.theta, 5e5);
  EXPECT_EQ(spec.rope.scaling_type, "linear");  // rope_scaling applies to the full layers only
  EXPECT_DOUBLE_EQ(spec.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(spec.local_attention->rope.theta, 2e4);
  EXPECT_EQ(spec.local_attention->rope.scaling_type, "default");
  for (int64_t i = 0; i < 12; ++i)
    EXPECT_EQ(spec.layers[i].sliding_attention, (i + 1) % 6 != 0) << i;
  c["sliding_window_pattern"] = 3;
  const ModelSpec third = parse_model_spec(c, "config.json");
  for (int64_t i = 0; i < 12; ++i)
    EXPECT_EQ(third.layers[i].sliding_attention, (i + 1) % 3 != 0) << i;
  // Minimal config: every default of Gemma3TextConfig (both bases, window 4096, scalar 256).
  const ModelSpec d =
      parse_model_spec(json{{"model_type", "gemma3_text"}, {"num_hidden_layers", 6}}, "c.json");
  EXPECT_DOUBLE_EQ(d.rope.theta, 1e6);
  EXPECT_DOUBLE_EQ(d.local_attention->rope.theta, 1e4);
  EXPECT_EQ(d.local_attention->window, 4096);
  EXPECT_DOUBLE_EQ(*d.attention.query_pre_attn_scalar, 256.0);
  EXPECT_EQ(d.attention.head_dim, 256);
}

TEST(Gemma3Spec, AllFullLayersNeedNoWindow) {
  json c = tiny_gemma3();
  c["layer_types"] = {"full_attention", "full_attention", "full_attention", "full_attention"};
  c["sliding_window"] = nullptr;
  const ModelSpec spec = parse_model_spec(c, "config.json");
  EXPECT_FALSE(spec.local_attention.has_value());
}

struct BadGemmaCase {
  const char* name;
  std::function<void(json&)> edit;
  ErrorKind kind;
  const char* field;
  const char* message_part;
};

TEST(Gemma3Spec, BadConfigsNameTheField) {
  const std::vector<BadGemmaCase> cases = {
      {"short layer_types", [](json& c) { c["layer_types"] = {"full_attention"}; },
       ErrorKind::kConfig, "layer_types", "has 1 entries, expected num_hidden_layers = 4"},
      {"unknown layer type", [](json& c) { c["layer_types"][2] = "chunked_attention"; },
       ErrorKind::kConfig, "layer_types[2]", "chunked_attention"},
      {"layer type not a string", [](json& c) { c["layer_types"][1] = 1; }, ErrorKind::kConfig,
       "layer_types[1]", "expected a string"},
      {"no window", [](json& c) { c["sliding_window"] = nullptr; }, ErrorKind::kConfig,
       "sliding_window", "sliding_attention"},
      {"zero window", [](json& c) { c["sliding_window"] = 0; }, ErrorKind::kConfig,
       "sliding_window", "positive"},
      {"zero pattern",
       [](json& c) {
         c.erase("layer_types");
         c["sliding_window_pattern"] = 0;
       },
       ErrorKind::kConfig, "sliding_window_pattern", "positive"},
      {"scalar", [](json& c) { c["query_pre_attn_scalar"] = 0; }, ErrorKind::kConfig,
       "query_pre_attn_scalar", "positive"},
      {"flat rope_parameters",
       [](json& c) {
         c["rope_parameters"] = {{"rope_theta", 1e6}};
       },
       ErrorKind::kConfig, "rope_parameters", "per layer type"},
      {"local theta",
       [](json& c) { c["rope_parameters"]["sliding_attention"]["rope_theta"] = -1.0; },
       ErrorKind::kConfig, "rope_parameters.sliding_attention.rope_theta", "positive"},
      {"attention softcap", [](json& c) { c["attn_logit_softcapping"] = 50.0; },
       ErrorKind::kUnsupported, "attn_logit_softcapping", "soft-capping"},
      {"final softcap", [](json& c) { c["final_logit_softcapping"] = 30.0; },
       ErrorKind::kUnsupported, "final_logit_softcapping", "soft-capping"},
      {"bidirectional", [](json& c) { c["use_bidirectional_attention"] = true; },
       ErrorKind::kUnsupported, "use_bidirectional_attention", "causal"},
      {"activation", [](json& c) { c["hidden_activation"] = "relu"; }, ErrorKind::kUnsupported,
       "hidden_activation", "relu"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    json config = tiny_gemma3();
    c.edit(config);
    expect_error([&] { parse_model_spec(config, "config.json"); }, c.kind, c.field, c.message_part);
  }
}

TEST(Gemma3Spec, MoeWithAGeluExpertIsRefused) {
  json c = json::parse(R"({"model_type":"mixtral","num_hidden_layers":2,"hidden_act":"gelu"})");
  expect_error([&] { parse_model_spec(c, "c.json"); }, ErrorKind::kUnsupported, "hidden_act",
               "MoE");
}

TEST(Gemma3Architecture, SandwichNormNamesAndTiedHead) {
  const ModelSpec spec = parse_model_spec(tiny_gemma3(), "config.json");
  std::map<std::string, std::pair<std::vector<int64_t>, TensorRole>> layer;
  for (const auto& t : expected_layer_tensors(spec, ExpertLayout::kPerExpert, 1)) {
    layer[t.name.substr(std::string("model.layers.1.").size())] = {t.shape, t.role};
  }
  const std::vector<int64_t> d = {64}, head = {32};
  EXPECT_EQ(layer.at("input_layernorm.weight"), std::make_pair(d, TensorRole::kAttnNorm));
  EXPECT_EQ(layer.at("post_attention_layernorm.weight"),
            std::make_pair(d, TensorRole::kPostAttnNorm));
  EXPECT_EQ(layer.at("pre_feedforward_layernorm.weight"), std::make_pair(d, TensorRole::kMlpNorm));
  EXPECT_EQ(layer.at("post_feedforward_layernorm.weight"),
            std::make_pair(d, TensorRole::kPostMlpNorm));
  EXPECT_EQ(layer.at("self_attn.q_norm.weight"), std::make_pair(head, TensorRole::kQNorm));
  EXPECT_EQ(layer.at("self_attn.q_proj.weight").first, (std::vector<int64_t>{128, 64}));
  EXPECT_EQ(layer.at("self_attn.k_proj.weight").first, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(layer.size(), 13u);  // 4 norms + q/k norms + 4 attention + 3 MLP projections
  EXPECT_EQ(category_of(TensorRole::kPostMlpNorm), Category::kNorm);
  EXPECT_FALSE(is_quantizable(TensorRole::kPostAttnNorm));
  for (const auto& t : expected_tensors(spec, ExpertLayout::kPerExpert))
    EXPECT_NE(t.name, "lm_head.weight");
}

/// RMSNorm with (1 + w) written from Gemma3RMSNorm in double precision.
at::Tensor reference_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  const at::Tensor xd = x.to(at::kDouble);
  return xd * at::rsqrt(xd.pow(2).mean(-1, true) + eps) * (1.0 + w.to(at::kDouble));
}

TEST(Gemma3Norm, PlusOneNormInFp32AndBf16) {
  at::manual_seed(3);
  const at::Tensor x = at::randn({5, 64}) * 3.0;
  const at::Tensor w = at::randn({64}) * 0.5;
  const at::Tensor ref = reference_norm(x, w, 1e-6);
  EXPECT_LT((rms_norm_plus_one(x, w, 1e-6).to(at::kDouble) - ref).abs().max().item<double>(), 1e-5);
  // A zero weight is the identity scale (weights are stored 0-centred), unlike llama's norm.
  const at::Tensor zero = at::zeros({64});
  EXPECT_GT(rms_norm_plus_one(x, zero, 1e-6).abs().max().item<double>(), 1.0);
  EXPECT_EQ(rms_norm(x, zero, 1e-6).abs().max().item<double>(), 0.0);
  // bf16: the product is taken in fp32 and rounded once, so every element is the correctly rounded
  // reference (within the reference's own fp32-vs-double noise: at most one bf16 step).
  const at::Tensor xb = x.to(at::kBFloat16), wb = w.to(at::kBFloat16);
  const at::Tensor got = rms_norm_plus_one(xb, wb, 1e-6);
  EXPECT_EQ(got.scalar_type(), at::kBFloat16);
  const at::Tensor want = reference_norm(xb, wb, 1e-6);
  const at::Tensor ulp = want.abs().clamp_min(1e-3) * std::ldexp(1.0, -7);
  EXPECT_TRUE((got.to(at::kDouble) - want).abs().le(ulp).all().item<bool>());
  // Llama's order (round the normalised x to bf16, then multiply in bf16) rounds twice and differs.
  const at::Tensor llama_order = rms_norm(xb, (1.0 + wb.to(at::kFloat)).to(at::kBFloat16), 1e-6);
  EXPECT_FALSE(at::equal(llama_order, got));
}

TEST(Gemma3Embedding, ScaleRoundedToTheWorkingDtype) {
  ModelSpec spec = parse_model_spec(json{{"model_type", "gemma3_text"},
                                         {"hidden_size", 3072},
                                         {"num_hidden_layers", 1},
                                         {"num_attention_heads", 8}},
                                    "c.json");
  const at::Tensor table = at::ones({4, 3072}, at::kBFloat16);
  const at::Tensor ids = at::tensor({2, 0}, at::kLong).view({1, 2});
  const at::Tensor f32 = embed_rows(spec, table, ids, at::TensorOptions().dtype(at::kFloat));
  EXPECT_EQ(f32.sizes(), (at::IntArrayRef{1, 2, 3072}));
  EXPECT_FLOAT_EQ(f32[0][1][5].item<float>(), static_cast<float>(std::sqrt(3072.0)));  // 55.4256
  // transformers' comment: in bf16 sqrt(3072) = 55.4256 becomes 55.5.
  const at::Tensor bf16 = embed_rows(spec, table, ids, at::TensorOptions().dtype(at::kBFloat16));
  EXPECT_EQ(bf16[0][0][0].item<float>(), 55.5f);
  spec.embedding_scale = 1.0;  // the other families: rows as stored
  EXPECT_EQ(
      embed_rows(spec, table, ids, at::TensorOptions().dtype(at::kFloat))[0][0][0].item<float>(),
      1.0f);
}

TEST(Gemma3Mask, SlidingWindowEdge) {
  // transformers' sliding_window_overlay: key j is visible to query i when j > i − window (and j ≤
  // i).
  const at::Tensor valid = at::ones({1, 8}, at::kBool);
  const at::Tensor mask = make_attention_mask(valid, 3)[0][0];
  for (int64_t i = 0; i < 8; ++i) {
    for (int64_t j = 0; j < 8; ++j)
      EXPECT_EQ(mask[i][j].item<bool>(), j <= i && j > i - 3) << i << "," << j;
  }
}

TEST(Gemma3Context, LocalMaskAndTablesOnlyForLocalAttention) {
  const ModelSpec spec = parse_model_spec(tiny_gemma3(), "config.json");
  const at::Tensor valid = at::ones({2, 40}, at::kBool);
  const ForwardContext ctx =
      make_forward_context(spec, valid, at::TensorOptions().dtype(at::kFloat), nullptr);
  ASSERT_TRUE(ctx.local_attn_mask.defined());
  EXPECT_TRUE(ctx.attn_mask[0][0][39][0].item<bool>());          // full layers see the first token
  EXPECT_FALSE(ctx.local_attn_mask[0][0][39][23].item<bool>());  // 39 − 23 = 16 = window: outside
  EXPECT_TRUE(ctx.local_attn_mask[0][0][39][24].item<bool>());
  // Frequency pair 4 of head_dim 32 turns by base^(-8/32) per position: 0.0316 (global) vs 0.1
  // (local).
  EXPECT_NEAR(ctx.rope.cos[10][4].item<double>(), std::cos(10 * std::pow(1e6, -0.25)), 1e-5);
  EXPECT_NEAR(ctx.local_rope.cos[10][4].item<double>(), std::cos(10 * std::pow(1e4, -0.25)), 1e-5);
  const ModelSpec llama =
      parse_model_spec(json{{"model_type", "llama"}, {"num_hidden_layers", 1}}, "c.json");
  EXPECT_FALSE(
      make_forward_context(llama, valid, at::TensorOptions(), nullptr).local_attn_mask.defined());
}

}  // namespace
}  // namespace lathe
