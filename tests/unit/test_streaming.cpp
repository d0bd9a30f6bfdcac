#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "compressor/common/errors.h"
#include "compressor/model/activation_buffer.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/streaming.h"

namespace lathe {
namespace {

const std::filesystem::path kLlama = std::filesystem::path(LATHE_SOURCE_DIR) / "data/models/llama";

TEST(ActivationBuffer, SpillsPastTheLimitAndKeepsValues) {
  ActivationBuffer ram(3, 4, 5, at::kFloat, 1 << 20, std::filesystem::temp_directory_path());
  EXPECT_FALSE(ram.spilled());
  ActivationBuffer disk(3, 4, 5, at::kFloat, 16, std::filesystem::temp_directory_path());
  EXPECT_TRUE(disk.spilled());
  EXPECT_EQ(disk.bytes(), 3u * 4 * 5 * 4);
  const at::Tensor values = at::randn({2, 4, 5});
  disk.write(1, values);
  EXPECT_TRUE(at::equal(disk.rows(1, 3), values));
  ActivationBuffer moved = std::move(disk);
  EXPECT_TRUE(moved.spilled());
  EXPECT_TRUE(at::equal(moved.rows(1, 3), values));
}

TEST(ActivationBuffer, UnwritableSpillDirIsAResourceError) {
  EXPECT_THROW(ActivationBuffer(2, 2, 2, at::kFloat, 0, "/nonexistent/dir"), ResourceError);
}

TEST(Streaming, EqualsTheWholeBatchForwardWithSpilledBuffers) {
  if (!std::filesystem::exists(kLlama)) GTEST_SKIP() << "data/models/llama not built";
  const CausalLM model(kLlama);
  const int64_t n = 5, t = 33;
  const at::Tensor ids = at::randint(0, model.spec().vocab_size, {n, t}, at::kLong);
  at::Tensor valid = at::ones({n, t}, at::kBool);
  valid[1].slice(0, 20).fill_(false);  // padding in the batch
  valid[4].slice(0, 2).fill_(false);
  const at::Tensor expected = model.logits(ids, valid);

  StreamingOptions options;
  options.micro_batch = 2;
  options.buffer_dtype = at::kFloat;
  options.memory_limit_bytes = 0;  // every boundary buffer spills to disk
  at::Tensor got = at::zeros_like(expected);
  std::vector<int64_t> layers;
  stream_forward(
      model, ids, valid, options, nullptr,
      [&](int64_t begin, const at::Tensor& hidden, const at::Tensor&) {
        got.slice(0, begin, begin + hidden.size(0)).copy_(model.head(hidden));
      },
      [&](int64_t layer) { layers.push_back(layer); });
  EXPECT_EQ(layers, (std::vector<int64_t>{0, 1, 2, 3}));
  const at::Tensor diff = (got - expected).abs().masked_select(valid.unsqueeze(-1).expand_as(got));
  EXPECT_LT(diff.max().item<float>(), 1e-5);
  EXPECT_GT(expected.abs().mean().item<float>(), 0.5);
}

}  // namespace
}  // namespace lathe
