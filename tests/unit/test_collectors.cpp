#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <map>

#include "calibrate/collectors.h"
#include "compressor/common/errors.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/streaming.h"

namespace lathe {
namespace {

const std::filesystem::path kModels = std::filesystem::path(LATHE_SOURCE_DIR) / "data/models";

using Stats = std::map<StatsKey, std::pair<at::Tensor, int64_t>>;

/// Streams ids/valid through `model` with a collector; every layer's statistics by key.
Stats collect(const CausalLM& model, const at::Tensor& ids, const at::Tensor& valid,
              std::vector<int32_t> task_of, std::vector<std::string> tasks,
              const CollectorOptions& options, int64_t micro_batch) {
  StatsCollector collector(model.spec(), options, std::move(task_of), std::move(tasks));
  Stats out;
  StreamingOptions streaming;
  streaming.micro_batch = micro_batch;
  stream_forward(
      model, ids, valid, streaming, &collector,
      [](int64_t, const at::Tensor&, const at::Tensor&) {},
      [&](int64_t layer) {
        for (auto& s : collector.finish_layer(layer)) out[s.key] = {s.value, s.tokens};
      });
  return out;
}

void expect_same(const Stats& a, const Stats& b, double rtol) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [key, value] : a) {
    const auto it = b.find(key);
    ASSERT_NE(it, b.end()) << to_string(key);
    EXPECT_EQ(value.second, it->second.second) << to_string(key);
    if (!at::isFloatingType(value.first.scalar_type())) {
      EXPECT_TRUE(at::equal(value.first, it->second.first)) << to_string(key);  // counts are exact
      continue;
    }
    // Sums in another order (micro-batches) differ by rounding: compare relative to the whole
    // tensor.
    const at::Tensor x = value.first.to(at::kDouble), y = it->second.first.to(at::kDouble);
    const double scale = std::max(y.norm().item<double>(), 1e-30);
    EXPECT_LE((x - y).norm().item<double>() / scale, rtol) << to_string(key);
  }
}

CollectorOptions all_options() {
  CollectorOptions o;
  o.hessians = {"attn.in",    "attn.o.in", "mlp.in",     "mlp.act",
                "shared.act", "expert.in", "expert.act", "expert.act.all"};
  return o;
}

class CollectorModels : public ::testing::TestWithParam<std::string> {};

// Padding positions never count: the same batch with other tokens under the padding gives the
// same statistics, and the token counts are the valid tokens only.
TEST_P(CollectorModels, PaddingIsExcludedAndMicroBatchingDoesNotMatter) {
  const auto dir = kModels / GetParam();
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << dir << " not built";
  const CausalLM model(dir);
  torch::manual_seed(3);
  const int64_t n = 5, t = 24;
  const at::Tensor ids = at::randint(0, model.spec().vocab_size, {n, t}, at::kLong);
  at::Tensor valid = at::ones({n, t}, at::kBool);
  valid[1].slice(0, 10).fill_(false);
  valid[3].slice(0, 17).fill_(false);
  const at::Tensor other =
      at::where(valid, ids, at::randint(0, model.spec().vocab_size, {n, t}, at::kLong));
  const std::vector<int32_t> task_of = {0, 1, 0, 1, 1};
  const Stats a = collect(model, ids, valid, task_of, {"a", "b"}, all_options(), 2);
  const Stats b = collect(model, other, valid, task_of, {"a", "b"}, all_options(), 5);
  expect_same(a, b, 1e-5);
  const int64_t valid_tokens = valid.sum().item<int64_t>();
  EXPECT_EQ(a.at({"channel_norm", 0, "attn.in", "all"}).second, valid_tokens);
  // Task split: the router saw each task's valid tokens.
  const LayerSpec& l = model.spec().layers.back();
  if (l.is_moe) {
    const int64_t last = model.spec().num_layers - 1;
    const int64_t tokens_a = valid[0].sum().item<int64_t>() + valid[2].sum().item<int64_t>();
    EXPECT_EQ(a.at({"expert_tokens", last, "router", "a"}).second, tokens_a);
    EXPECT_EQ(a.at({"expert_tokens", last, "router", "b"}).second, valid_tokens - tokens_a);
    EXPECT_EQ(a.at({"expert_tokens", last, "router", "a"}).first.sum().item<int64_t>(),
              tokens_a * l.top_k);
    EXPECT_EQ(a.at({"router_rank_count", last, "router", "b"})
                  .first.sum(1)
                  .eq(valid_tokens - tokens_a)
                  .all()
                  .item<bool>(),
              true);
    // expert[e].in Hessian over routed tokens has trace = Σ‖x‖² = channel_norm² summed
    const at::Tensor h = a.at({"hessian", last, "expert[0].in", "all"}).first.to(at::kDouble);
    const at::Tensor norm = a.at({"channel_norm", last, "expert[0].in", "all"}).first;
    EXPECT_NEAR(h.trace().item<double>(), norm.square().sum().item<double>(),
                1e-4 * h.trace().item<double>() + 1e-9);
  }
}

INSTANTIATE_TEST_SUITE_P(TinyModels, CollectorModels,
                         ::testing::Values("llama", "mixtral", "qwen2_moe", "deepseek_v3",
                                           "qwen3_moe-fused"));

// Every key finish_layer produces is announced by expected_keys (the reuse check relies on it),
// including experts that received no token.
TEST(Collectors, ExpectedKeysEqualTheFinishedOnes) {
  const auto dir = kModels / "olmoe";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << dir << " not built";
  const CausalLM model(dir);
  const at::Tensor ids = at::randint(0, model.spec().vocab_size, {1, 3},
                                     at::kLong);  // too few tokens for every expert
  StatsCollector collector(model.spec(), all_options(), {0}, {"only"});
  StreamingOptions streaming;
  int64_t checked = 0;
  stream_forward(
      model, ids, at::ones({1, 3}, at::kBool), streaming, &collector,
      [](int64_t, const at::Tensor&, const at::Tensor&) {},
      [&](int64_t layer) {
        std::vector<StatsKey> got;
        int64_t empty_experts = 0;
        for (const auto& s : collector.finish_layer(layer)) {
          got.push_back(s.key);
          empty_experts += s.key.kind == "neuron_atopk_rate" && s.tokens == 0;
        }
        EXPECT_EQ(got, collector.expected_keys(layer)) << "layer " << layer;
        EXPECT_GT(empty_experts, 0) << "3 tokens × top-k cannot reach every expert";
        ++checked;
      });
  EXPECT_EQ(checked, model.spec().num_layers);
}

TEST(Collectors, BadHessianTapsAreConfigErrors) {
  EXPECT_EQ(parse_hessian_taps("attn.in,,expert.act,attn.in", "--hessians"),
            (std::vector<std::string>{"attn.in", "expert.act"}));
  try {
    parse_hessian_taps("attn.in,mlp.out", "--hessians");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "--hessians");
    EXPECT_NE(std::string(e.what()).find("mlp.out"), std::string::npos);
  }
}

TEST(Collectors, OptionsFingerprintTracksWhatChangesAStatistic) {
  CollectorOptions a, b;
  b.atopk = 5;
  EXPECT_NE(collector_options_fingerprint(a, "neurons"),
            collector_options_fingerprint(b, "neurons"));
  EXPECT_EQ(collector_options_fingerprint(a, "router"), collector_options_fingerprint(b, "router"));
  b.forward_dtype = "bf16";
  EXPECT_NE(collector_options_fingerprint(a, "router"), collector_options_fingerprint(b, "router"));
  EXPECT_NE(collector_options_fingerprint(a, "router"),
            collector_options_fingerprint(a, "channels"));
}

}  // namespace
}  // namespace lathe
