#include <ATen/ATen.h>
#include <gtest/gtest.h>

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

TEST(PerplexityWindows, APrefixTokenMakesEveryStreamTokenPredicted) {
  WindowOptions options{4, 0, /*prefix_token=*/2};
  const auto w = perplexity_windows(10, options);  // 3 stream tokens per window after the prefix
  ASSERT_EQ(w.size(), 4u);
  EXPECT_EQ(w[0].begin, 0);
  EXPECT_EQ(w[0].end, 3);
  EXPECT_EQ(w[0].first_target, 0);
  EXPECT_EQ(w[3].begin, 9);
  EXPECT_EQ(w[3].end, 10);  // a last window of one token is kept: the prefix predicts it
  EXPECT_EQ(w[3].first_target, 9);
  options.stride = 2;
  std::vector<int> predicted(10, 0);
  for (const auto& x : perplexity_windows(10, options)) {
    for (int64_t p = x.first_target; p < x.end; ++p) predicted[p] += 1;
  }
  for (int i = 0; i < 10; ++i) EXPECT_EQ(predicted[i], 1) << i;
  options.stride = 4;  // more than the 3 stream tokens a window holds
  EXPECT_THROW(perplexity_windows(10, options), ConfigError);
}

TEST(PerplexityWindows, BadOptions) {
  EXPECT_THROW(perplexity_windows(10, {1, 0}), ConfigError);
  EXPECT_THROW(perplexity_windows(10, {4, 5}), ConfigError);
}

/// NLL of a row computed directly from the whole-batch logits.
double direct_nll(const CausalLM& model, const std::vector<int32_t>& row, int64_t first,
                  int64_t end) {
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
  for (size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = static_cast<int32_t>((i * 131 + 7) % model.spec().vocab_size);
  StreamingOptions streaming;
  streaming.buffer_dtype = at::kFloat;
  streaming.micro_batch = 2;
  const PerplexityResult got = evaluate_perplexity(model, tokens, {16, 0}, streaming);
  double nll = 0;
  for (const auto& w : perplexity_windows(45, {16, 0})) {
    nll += direct_nll(model, std::vector<int32_t>(tokens.begin() + w.begin, tokens.begin() + w.end),
                      1, w.end - w.begin);
  }
  EXPECT_EQ(got.predicted, 15 + 15 + 12);
  EXPECT_NEAR(got.nll, nll, 1e-6 * nll);
  EXPECT_NEAR(got.perplexity(), std::exp(nll / 42), 1e-6 * got.perplexity());
}

TEST(EvaluatePerplexity, WithAPrefixTokenEqualsDirectComputation) {
  if (!std::filesystem::exists(kLlama)) GTEST_SKIP() << "data/models/llama not built";
  const CausalLM model(kLlama);
  std::vector<int32_t> tokens(31);
  for (size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = static_cast<int32_t>((i * 57 + 11) % model.spec().vocab_size);
  StreamingOptions streaming;
  streaming.buffer_dtype = at::kFloat;
  const WindowOptions options{16, 0, /*prefix_token=*/1};
  const PerplexityResult got = evaluate_perplexity(model, tokens, options, streaming);
  double nll = 0;
  for (const auto& w : perplexity_windows(31, options)) {
    std::vector<int32_t> row = {1};
    row.insert(row.end(), tokens.begin() + w.begin, tokens.begin() + w.end);
    nll += direct_nll(model, row, 1, static_cast<int64_t>(row.size()));
  }
  EXPECT_EQ(got.predicted, 31);  // windows of 15 + 15 + 1 stream tokens, every one predicted
  EXPECT_NEAR(got.nll, nll, 1e-6 * nll);
}

/// The head in chunks (parts of a window, or several windows per call) gives what one call gives,
/// up to fp32 rounding of the differently shaped matmuls (a misplaced position would cost whole
/// nats).
TEST(EvaluatePerplexity, HeadChunksDoNotChangeTheResult) {
  if (!std::filesystem::exists(kLlama)) GTEST_SKIP() << "data/models/llama not built";
  const CausalLM model(kLlama);
  const CausalLM other(std::filesystem::path(LATHE_SOURCE_DIR) /
                       "data/models/mixtral");  // same vocabulary
  std::vector<int32_t> tokens(70);
  for (size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = static_cast<int32_t>((i * 91 + 3) % model.spec().vocab_size);
  StreamingOptions streaming;
  streaming.buffer_dtype = at::kFloat;
  streaming.micro_batch = 3;
  WindowOptions whole{16, 0};
  const PerplexityResult reference = evaluate_perplexity(model, tokens, whole, streaming);
  const DivergenceResult reference_div =
      evaluate_divergence(model, other, tokens, whole, streaming);
  ASSERT_GT(reference_div.kl, 1.0);  // two different models: a KL the chunks could get wrong
  const int64_t vocab = model.spec().vocab_size;
  for (const int64_t budget :
       {vocab * 4, vocab * 15, vocab * 31}) {  // 4 positions, one row, two rows
    WindowOptions chunked = whole;
    chunked.head_logits = budget;
    const PerplexityResult got = evaluate_perplexity(model, tokens, chunked, streaming);
    EXPECT_EQ(got.predicted, reference.predicted);
    EXPECT_NEAR(got.nll, reference.nll, 1e-7 * reference.nll) << budget;
    const DivergenceResult d = evaluate_divergence(model, other, tokens, chunked, streaming);
    EXPECT_EQ(d.predicted, reference_div.predicted);
    EXPECT_NEAR(d.nll, reference_div.nll, 1e-7 * reference_div.nll) << budget;
    EXPECT_NEAR(d.reference_nll, reference_div.reference_nll, 1e-7 * reference_div.nll) << budget;
    EXPECT_NEAR(d.kl, reference_div.kl, 1e-6 * reference_div.kl) << budget;
    EXPECT_NEAR(d.max_kl, reference_div.max_kl, 1e-6 * reference_div.max_kl) << budget;
    EXPECT_EQ(d.top1_agree, reference_div.top1_agree) << budget;
  }
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
    score.push_back(-direct_nll(model, row, static_cast<int64_t>(context.size()),
                                static_cast<int64_t>(row.size())));
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
