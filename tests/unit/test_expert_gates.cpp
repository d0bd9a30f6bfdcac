// DiEP/NAEE's relaxation (ExpertGate, decoder_layer.h) and the selection helpers
// (expert_selection.h): gates at 1 with β = 1 change nothing; a −inf gate equals removing the
// expert from the router; the routed sum scales by β; the knapsack finds the least-cost allocation.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <limits>

#include "compressor/model/causal_lm.h"
#include "compressor/passes/expert_selection.h"
#include "compressor/passes/moe_blocks.h"

namespace lathe {
namespace {

const std::filesystem::path kModels = std::filesystem::path(LATHE_SOURCE_DIR) / "data/models";

at::Tensor gated_logits(const CausalLM& m, const at::Tensor& ids,
                        const std::vector<ExpertGate>* gates) {
  at::NoGradGuard no_grad;
  const at::Tensor valid = at::ones(ids.sizes(), at::kBool);
  ForwardContext ctx =
      make_forward_context(m.spec(), valid, at::TensorOptions().dtype(at::kFloat), nullptr);
  ctx.expert_gates = gates;
  at::Tensor h = m.embed(ids);
  for (int64_t i = 0; i < m.spec().num_layers; ++i) h = m.load_layer(i).forward(h, ctx);
  return m.head(h);
}

class ExpertGates : public ::testing::TestWithParam<std::string> {};

TEST_P(ExpertGates, OpenGatesAndUnitScaleReproduceTheModelExactly) {
  const auto dir = kModels / GetParam();
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << dir << " not built";
  const CausalLM m(dir);
  const at::Tensor ids =
      at::randint(0, m.spec().vocab_size, {2, 24}, at::TensorOptions().dtype(at::kLong));
  std::vector<ExpertGate> gates(static_cast<size_t>(m.spec().num_layers));
  for (int64_t i = 0; i < m.spec().num_layers; ++i) {
    if (!m.spec().layers[i].is_moe) continue;
    // σ(α/τ) = 1 exactly is what the relaxed model reaches; log g = 0 and β = 1, with autograd on.
    gates[i].log_gate =
        at::zeros({m.spec().layers[i].num_experts}, at::kFloat).requires_grad_(true);
    gates[i].routed_scale = at::ones({}, at::kFloat).requires_grad_(true);
  }
  const at::Tensor plain = gated_logits(m, ids, nullptr);
  const at::Tensor gated = gated_logits(m, ids, &gates);
  EXPECT_EQ((plain - gated).abs().max().item<double>(), 0.0);
}

TEST_P(ExpertGates, ClosedGateEqualsTheExpertMissingFromTheRouterAndBetaScalesTheRoutedSum) {
  const auto dir = kModels / GetParam();
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << dir << " not built";
  const CausalLM m(dir);
  int64_t layer = 0;
  while (!m.spec().layers[layer].is_moe) ++layer;
  const DecoderLayer l = m.load_layer(layer);
  const int64_t e = m.spec().layers[layer].num_experts;
  const at::Tensor x = at::randn({40, m.spec().hidden_size});
  ForwardContext plain;
  const at::Tensor full = l.routing_weights(x, plain);
  // Routing weights of the plain router: each token selects top_k experts, weights as the block
  // uses.
  EXPECT_EQ((full > 0).sum(1).min().item<int64_t>(), m.spec().layers[layer].top_k);
  const at::Tensor outputs = all_expert_outputs(l, x);
  // The MoE block without its shared part equals the combine of every expert under these weights.
  std::vector<ExpertGate> gates(static_cast<size_t>(layer) + 1);
  gates[layer].log_gate = at::zeros({e});
  gates[layer].routed_scale = at::zeros({});
  ForwardContext no_routed;
  no_routed.expert_gates = &gates;
  const at::Tensor shared = l.mlp(x, no_routed);
  EXPECT_LT((l.mlp(x, plain) - shared - combine_experts(full, outputs)).abs().max().item<double>(),
            1e-5);
  // β scales exactly the routed part.
  gates[layer].routed_scale = at::full({}, 0.5);
  EXPECT_LT((l.mlp(x, no_routed) - shared - 0.5 * combine_experts(full, outputs))
                .abs()
                .max()
                .item<double>(),
            1e-5);
  // Closing expert 0: it is never selected, top_k experts are still selected per token.
  gates[layer].routed_scale = at::Tensor();
  gates[layer].log_gate = at::zeros({e});
  gates[layer].log_gate[0] = -std::numeric_limits<float>::infinity();
  const at::Tensor closed = l.routing_weights(x, no_routed);
  EXPECT_EQ(closed.select(1, 0).abs().max().item<double>(), 0.0);
  EXPECT_EQ((closed > 0).sum(1).min().item<int64_t>(), m.spec().layers[layer].top_k);
  // A half-open gate lowers that expert's weight wherever it stays selected.
  gates[layer].log_gate = at::zeros({e});
  gates[layer].log_gate[1] = std::log(0.5);
  const at::Tensor half = l.routing_weights(x, no_routed);
  const at::Tensor both = (half.select(1, 1) > 0) & (full.select(1, 1) > 0);
  if (both.any().item<bool>()) {
    EXPECT_TRUE(
        (half.select(1, 1).index({both}) < full.select(1, 1).index({both})).all().item<bool>());
  }
}

INSTANTIATE_TEST_SUITE_P(Families, ExpertGates,
                         ::testing::Values("mixtral", "qwen2_moe", "deepseek_v3", "olmoe"));

TEST(ExpertSelection, KnapsackFindsTheLeastCostAllocation) {
  // Layer 0 costs drop steeply, layer 1 barely: extra slots go to layer 0.
  const std::vector<std::vector<double>> cost = {{10, 4, 1, 0}, {2, 1.5, 1.2, 0}};
  EXPECT_EQ(knapsack_counts(cost, {2, 2}, 6), (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(knapsack_counts(cost, {2, 2}, 5),
            (std::vector<int64_t>{3, 2}));  // 4 + 2 = 6 beats 10 + 1.5
  EXPECT_EQ(knapsack_counts(cost, {2, 2}, 8), (std::vector<int64_t>{5, 3}));
  EXPECT_TRUE(knapsack_counts(cost, {2, 2}, 3).empty());                      // below the floors
  EXPECT_EQ(knapsack_counts(cost, {2, 2}, 9), (std::vector<int64_t>{4, 5}));  // 1 + 0 beats 0 + 1.2
  EXPECT_TRUE(knapsack_counts(cost, {2, 2}, 11).empty());  // more than every expert
}

TEST(ExpertSelection, GlobalRankingKeepsTheFloorThenTheBestScaledScores) {
  const std::vector<std::vector<double>> scores = {{5, 1, 3, 2}, {0.1, 0.9, 0.5, 0.2}};
  // Floors of 1 (the best of each layer); 3 extra slots by score × scale: layer 1 scaled ×20 gives
  // 10 and 4, which beat layer 0's 3 only once.
  const auto kept = select_global(scores, {1, 20}, {1, 1}, 5);
  EXPECT_EQ(kept[0], (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(kept[1], (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(rank_experts({1, 3, 3, 2}), (std::vector<int64_t>{1, 2, 3, 0}));
}

TEST(MoeBlocks, SequenceChunksStayUnderTheBudgetAndCoverEverySequenceOnce) {
  using Chunks = std::vector<std::pair<int64_t, int64_t>>;
  // Sequences of 3, 2, 4 and 1 rows at 1 byte per row.
  const std::vector<int64_t> offsets{0, 3, 5, 9, 10};
  EXPECT_EQ(sequence_chunks(offsets, 1, 5), (Chunks{{0, 2}, {2, 4}}));
  EXPECT_EQ(sequence_chunks(offsets, 1, 100), (Chunks{{0, 4}}));
  EXPECT_EQ(sequence_chunks(offsets, 1, 1),
            (Chunks{{0, 1}, {1, 2}, {2, 3}, {3, 4}}));  // each alone, even over budget
  EXPECT_EQ(sequence_chunks(offsets, 2, 10), (Chunks{{0, 2}, {2, 4}}));  // 10 bytes = 5 rows
  EXPECT_EQ(sequence_chunks({0}, 1, 5), Chunks{});
}

}  // namespace
}  // namespace lathe
