#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "compressor/model/architecture.h"
#include "compressor/model/model_summary.h"
#include "safetensors_builder.h"

namespace lathe {
namespace {

using testing::Bytes;
using testing::expect_error;

const char* kConfig =
    R"({"model_type":"qwen2_moe","vocab_size":64,"hidden_size":16,"intermediate_size":24,
  "moe_intermediate_size":8,"shared_expert_intermediate_size":12,"num_hidden_layers":2,"num_attention_heads":2,
  "num_key_value_heads":1,"num_experts":4,"num_experts_per_tok":2,"mlp_only_layers":[0],"tie_word_embeddings":true})";

/// Writes a checkpoint holding every tensor the config implies (BF16 zeros), with optional edits.
struct Checkpoint {
  testing::TempDir dir;
  std::vector<ExpectedTensor> tensors;

  Checkpoint() {
    dir.write("config.json", std::string(kConfig));
    tensors = expected_tensors(parse_model_spec(nlohmann::json::parse(kConfig), "c"),
                               ExpertLayout::kPerExpert);
  }
  void write(const std::function<bool(testing::SafetensorsBuilder&, const ExpectedTensor&)>& edit =
                 nullptr) {
    testing::SafetensorsBuilder b;
    for (const auto& t : tensors) {
      if (edit && !edit(b, t)) continue;
      int64_t n = 1;
      for (int64_t s : t.shape) n *= s;
      b.add(t.name, "BF16", t.shape, Bytes(2 * n, 0));
    }
    dir.write("model.safetensors", b.build());
  }
};

TEST(ModelSummary, CountsEveryCategory) {
  Checkpoint ckpt;
  ckpt.write();
  const ModelSummary s = summarize_model(ckpt.dir.path(), {});
  EXPECT_TRUE(s.has_weights);
  const int64_t d = 16, kv = 8;
  EXPECT_EQ(s.params.at("embedding"), 64 * d);
  EXPECT_EQ(s.params.at("lm_head"), 0);  // tied
  EXPECT_EQ(s.params.at("attention"),
            2 * (d * d + 2 * kv * d + d * d + d + 2 * kv));  // q/k/v/o + biases
  EXPECT_EQ(s.params.at("dense_mlp"), 3 * 24 * d);           // layer 0 only
  EXPECT_EQ(s.params.at("routed_experts"), 4 * 3 * 8 * d);
  EXPECT_EQ(s.params.at("shared_experts"), 3 * 12 * d);
  EXPECT_EQ(s.params.at("router"), 4 * d + d);  // router + shared_expert_gate
  EXPECT_EQ(s.params.at("norm"), 2 * 2 * d + d);
  int64_t sum = 0;
  for (const auto& [k, v] : s.params) sum += v;
  EXPECT_EQ(sum, s.total_params);
  EXPECT_EQ(s.total_bytes, static_cast<uint64_t>(2 * s.total_params));
  EXPECT_EQ(s.bytes_by_dtype.at("BF16"), s.total_bytes);
  const auto j = summary_to_json(s);
  EXPECT_EQ(j["experts_per_layer"], nlohmann::json::parse("[null, 4]"));
  EXPECT_EQ(j["memory"]["activation_buffer_bytes"], 128u * 2048u * 16u * 2u);
  // Working set of a layer while it runs: non-expert tensors in fp32, routed experts as stored
  // (bf16 pages), one expert converted to fp32. Layer 1 (MoE): attention + norms + router + shared
  // expert.
  const int64_t attn = d * d + 2 * kv * d + d * d + d + 2 * kv, norms = 2 * d;
  const int64_t moe_dense = attn + norms + (4 * d + d) + 3 * 12 * d, routed = 4 * 3 * 8 * d;
  const uint64_t moe_working = 4 * moe_dense + 2 * routed + 4 * 3 * 8 * d;
  const uint64_t dense_working = 4 * (attn + norms + 3 * 24 * d);
  EXPECT_EQ(j["memory"]["layer_working_bytes"], std::max(moe_working, dense_working));
  EXPECT_EQ(j["memory"]["largest_layer"], moe_working > dense_working ? 1 : 0);
}

TEST(ModelSummary, MissingTensorIsNamed) {
  Checkpoint ckpt;
  ckpt.write([](auto&, const ExpectedTensor& t) {
    return t.name != "model.layers.1.mlp.experts.3.up_proj.weight";
  });
  expect_error([&] { summarize_model(ckpt.dir.path(), {}); }, ErrorKind::kData,
               "model.layers.1.mlp.experts.3.up_proj.weight", "missing");
}

TEST(ModelSummary, WrongShapeIsNamed) {
  Checkpoint ckpt;
  ckpt.write([](testing::SafetensorsBuilder& b, const ExpectedTensor& t) {
    if (t.name != "model.layers.1.mlp.gate.weight") return true;
    b.add(t.name, "BF16", {5, 16}, Bytes(2 * 5 * 16, 0));
    return false;
  });
  expect_error([&] { summarize_model(ckpt.dir.path(), {}); }, ErrorKind::kData,
               "model.layers.1.mlp.gate.weight", "shape [5, 16] but config.json implies [4, 16]");
}

TEST(ModelSummary, ExtraTensorsAreReportedNotHidden) {
  Checkpoint ckpt;
  ckpt.write([](testing::SafetensorsBuilder& b, const ExpectedTensor& t) {
    if (t.role == TensorRole::kEmbed)
      b.add("model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {4}, Bytes(16, 0));
    return true;
  });
  const ModelSummary s = summarize_model(ckpt.dir.path(), {});
  ASSERT_EQ(s.unrecognised.size(), 1u);
  EXPECT_EQ(s.params.at("other"), 4);
}

TEST(ModelSummary, NonFiniteWeightsRejectedOnRequest) {
  Checkpoint ckpt;
  ckpt.write([](testing::SafetensorsBuilder& b, const ExpectedTensor& t) {
    if (t.role != TensorRole::kFinalNorm) return true;
    Bytes bytes(2 * 16, 0);
    bytes[5] = 0x7f, bytes[4] = 0xc0;  // element 2 = BF16 NaN
    b.add(t.name, "BF16", t.shape, bytes);
    return false;
  });
  EXPECT_NO_THROW(summarize_model(ckpt.dir.path(), {}));
  SummaryOptions check;
  check.check_finite = true;
  expect_error([&] { summarize_model(ckpt.dir.path(), check); }, ErrorKind::kData, "", "1 NaN/Inf");
}

TEST(ModelSummary, ConfigOnlyDirectoryEstimates) {
  testing::TempDir dir;
  dir.write("config.json", std::string(kConfig));
  const ModelSummary s = summarize_model(dir.path(), {});
  EXPECT_FALSE(s.has_weights);
  EXPECT_EQ(s.params.at("routed_experts"), 4 * 3 * 8 * 16);
  EXPECT_EQ(s.total_bytes, static_cast<uint64_t>(2 * s.total_params));
}

TEST(ModelSummary, MissingDirectory) {
  expect_error([] { summarize_model("/nonexistent/model", {}); }, ErrorKind::kResource, "",
               "not a model directory");
}

}  // namespace
}  // namespace lathe
