#include <gtest/gtest.h>
#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>

#include "compressor/common/errors.h"
#include "compressor/eval/evaluate.h"

namespace lathe {
namespace {

const std::filesystem::path kLlama = std::filesystem::path(LATHE_SOURCE_DIR) / "data/models/llama";

TEST(PerplexityWindows, NonOverlappingKeepsALastWindowOfTwo) {
  const auto w = perplexity_windows(10, {4, 0});
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].begin, 0);
  EXPECT_EQ(w[0].end, 4);
  EXPECT_EQ(w[0].first_target, 1);
  EXPECT_EQ(w[2].begin, 8);
  EXPECT_EQ(w[2].end, 10);
  EXPECT_EQ(w[2].first_target, 9);
  EXPECT_EQ(perplexity_windows(9, {4, 0}).size(), 2u);  // last window of 1 token dropped
}

TEST(PerplexityWindows, SlidingPredictsEachTokenOnce) {
  const auto w = perplexity_windows(10, {4, 2});
  std::vector<int> predicted(10, 0);
  for (const auto& x : w) {
    for (int64_t p = x.first_target; p < x.end; ++p) predicted[p] += 1;
  }
  EXPECT_EQ(predicted[0], 0);
  for (int i = 1; i < 10; ++i) EXPECT_EQ(predicted[i], 1) << i;
  EXPECT_EQ(w[1].begin, 2);
  EXPECT_EQ(w[1].first_target, 4);  // tokens 2, 3 were predicted by the first window
}

TEST(PerplexityWindows, BadOptions) {
  EXPECT_THROW(perplexity_windows(10, {1, 0}), ConfigError);
  EXPECT_THROW(perplexity_windows(10, {4, 5}), ConfigError);
}

/// NLL of a row computed directly from the whole-batch logits.
double direct_nll(const CausalLM& model, const std::vector<int32_t>& row, int64_t first, int64_t end) {
  const at::Tensor ids = at::tensor(std::vector<int64_t>(row.begin(), row.end())).unsqueeze(0);
  const at::Tensor logp = model.logits(ids, at::ones_like(ids, at::kBool)).log_softmax(-1)[0];
  double nll = 0;
  for (int64_t p = first; p < end; ++p) nll -= logp[p - 1][row[p]].item<double>();
  return nll;
}

TEST(EvaluatePerplexity, EqualsDirectComputation) {
  if (!std::filesystem::exists(kLlama)) GTEST_SKIP() << "data/models/llama not built";
  const CausalLM model(kLlama);
  std::vector<int32_t> tokens(45);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 131 + 7) % model.spec().vocab_size);
  StreamingOptions streaming;
  streaming.buffer_dtype = at::kFloat;
  streaming.micro_batch = 2;
  const PerplexityResult got = evaluate_perplexity(model, tokens, {16, 0}, streaming);
  double nll = 0;
  for (const auto& w : perplexity_windows(45, {16, 0})) {
    nll += direct_nll(model, std::vector<int32_t>(tokens.begin() + w.begin, tokens.begin() + w.end), 1, w.end - w.begin);
  }
  EXPECT_EQ(got.predicted, 15 + 15 + 12);
  EXPECT_NEAR(got.nll, nll, 1e-6 * nll);
  EXPECT_NEAR(got.perplexity(), std::exp(nll / 42), 1e-6 * got.perplexity());
}

TEST(EvaluateChoices, PicksTheMostLikelyContinuation) {
  if (!std::filesystem::exists(kLlama)) GTEST_SKIP() << "data/models/llama not built";
  const CausalLM model(kLlama);
  const std::vector<int32_t> context = {5, 17, 300, 41, 9};
  const std::vector<std::vector<int32_t>> choices = {{12}, {77, 78}, {1000}, {2048, 7, 7}};
  std::vector<double> score;
  for (const auto& c : choices) {
    std::vector<int32_t> row = context;
    row.insert(row.end(), c.begin(), c.end());
    score.push_back(-direct_nll(model, row, static_cast<int64_t>(context.size()), static_cast<int64_t>(row.size())));
  }
  const int64_t best = std::max_element(score.begin(), score.end()) - score.begin();
  StreamingOptions streaming;
  streaming.buffer_dtype = at::kFloat;
  std::vector<ChoiceItem> items;
  for (int64_t answer = 0; answer < 4; ++answer) items.push_back({context, choices, answer});
  const TaskResult result = evaluate_choices(model, items, streaming);
  EXPECT_EQ(result.n, 4);
  EXPECT_EQ(result.correct, 1);  // only the item whose answer is the best-scoring choice
  items.resize(1);
  items[0].answer = best;
  EXPECT_EQ(evaluate_choices(model, items, streaming).correct, 1);
}

}  // namespace
}  // namespace lathe
