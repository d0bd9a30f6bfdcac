// Memory model (DESIGN.md): releasing mapped pages keeps data valid, and routed experts converted
// lazily (one at a time, from stored-dtype views) give the same layer outputs as eager fp32 copies.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "compressor/common/errors.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/model/fingerprint.h"
#include "compressor/model/mapped_file.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_store.h"
#include "tests/unit/safetensors_builder.h"

namespace lathe {
namespace {

using testing::Bytes;
using testing::SafetensorsBuilder;
using testing::TempDir;

const std::filesystem::path kModels = std::filesystem::path(LATHE_SOURCE_DIR) / "data/models";

/// Resident pages of mapped files in bytes: RssFile + RssShmem of /proc/self/status (a file on
/// tmpfs, as /tmp is on many systems, counts as shared memory, not as a file); -1 when unavailable.
int64_t rss_file_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  int64_t kib = 0;
  int found = 0;
  while (std::getline(in, line)) {
    for (const char* key : {"RssFile:", "RssShmem:"}) {
      const std::string k(key);
      if (line.rfind(k, 0) == 0) {
        kib += std::stoll(line.substr(k.size()));  // "NNN kB"
        ++found;
      }
    }
  }
  return found == 2 ? kib * 1024 : -1;
}

/// A file with a small tensor, a large one (`n` floats, value i at index i) and another small one.
std::string write_store(const TempDir& dir, int64_t n) {
  Bytes big(static_cast<size_t>(n) * 4);
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(i);
    std::memcpy(big.data() + 4 * i, &v, 4);
  }
  const Bytes small = testing::le_bytes<float>({1.5f, -2.5f, 3.5f});
  return dir.write("model.safetensors", SafetensorsBuilder()
                                            .add("a", "F32", {3}, small)
                                            .add("big", "F32", {n}, big)
                                            .add("z", "F32", {3}, small)
                                            .build());
}

TEST(Release, DropsResidentPagesAndTensorsStayValid) {
  TempDir dir;
  const int64_t n = 8 << 20;  // 32 MiB
  const WeightStore store(write_store(dir, n));
  const at::Tensor big = load_tensor(store, "big");  // zero-copy view into the mapping
  const at::Tensor a = load_tensor(store, "a"), z = load_tensor(store, "z");
  const at::Tensor expected = at::arange(n, at::kFloat);

  const int64_t before = rss_file_bytes();
  EXPECT_TRUE(at::equal(big, expected));  // faults every page in
  const int64_t touched = rss_file_bytes();
  store.release("big");
  const int64_t released = rss_file_bytes();
  if (before >= 0) {
    EXPECT_GT(touched - before, 30ll << 20) << "reading the tensor should make its pages resident";
    EXPECT_GT(touched - released, 30ll << 20) << "release should drop them";
  }

  // Same bytes after the release, through the old tensor, a new one, and neighbours sharing pages.
  EXPECT_TRUE(at::equal(big, expected));
  EXPECT_TRUE(at::equal(load_tensor(store, "big"), expected));
  EXPECT_TRUE(at::equal(a, at::tensor({1.5f, -2.5f, 3.5f})));
  EXPECT_TRUE(at::equal(z, at::tensor({1.5f, -2.5f, 3.5f})));
  store.release(std::vector<std::string>{"a", "big", "z"});  // sub-page tensors: a no-op
  EXPECT_TRUE(at::equal(a, at::tensor({1.5f, -2.5f, 3.5f})));
  EXPECT_TRUE(at::equal(big, expected));
  EXPECT_THROW(store.release("missing"), DataError);
}

TEST(Release, FingerprintReleasesWhatItHashesAndIsUnchanged) {
  TempDir dir;
  const int64_t n = 24 << 20;  // 96 MiB: more than one release chunk
  const WeightStore store(write_store(dir, n));
  const int64_t before = rss_file_bytes();
  const std::string first = weights_fingerprint(store);
  const int64_t after = rss_file_bytes();
  if (before >= 0) {
    EXPECT_LT(after - before, 16ll << 20) << "hashing 96 MiB should leave them released";
  }
  EXPECT_EQ(weights_fingerprint(store), first);
  EXPECT_TRUE(
      at::equal(load_tensor(store, "big").slice(0, n - 5), at::arange(n - 5, n, at::kFloat)));
}

TEST(Release, MappedFileRangeIsClampedAndBytesSurvive) {
  TempDir dir;
  const std::string path = write_store(dir, 5000);
  const MappedFile mapped(path);
  const std::vector<uint8_t> copy(mapped.data(), mapped.data() + mapped.size());
  mapped.release(0, 1ull << 40);  // clamped to the file
  mapped.release(100, 50);        // empty: nothing
  EXPECT_EQ(std::memcmp(copy.data(), mapped.data(), copy.size()), 0);
}

/// `lazy` with its routed experts as eager fp32 copies, as load_layer made them before.
LayerWeights eager_experts(const LayerWeights& lazy) {
  LayerWeights w = lazy;
  for (auto& e : w.experts) {
    e.gate = e.gate.to(at::kFloat, false, /*copy=*/true);
    e.up = e.up.to(at::kFloat, false, /*copy=*/true);
    e.down = e.down.to(at::kFloat, false, /*copy=*/true);
  }
  return w;
}

class LazyExperts : public ::testing::TestWithParam<std::string> {};

TEST_P(LazyExperts, StayInStoredDtypeAndMatchEagerConversionBitForBit) {
  const std::filesystem::path dir = kModels / GetParam();
  if (!std::filesystem::exists(dir / "config.json")) GTEST_SKIP() << dir << " not built";
  const CausalLM model(dir);
  const ModelSpec& spec = model.spec();
  at::manual_seed(0);
  const int64_t b = 3, t = 17;
  at::Tensor valid = at::ones({b, t}, at::kBool);
  valid[2].slice(0, 9).fill_(false);
  const ForwardContext ctx =
      make_forward_context(spec, valid, at::TensorOptions().dtype(at::kFloat), nullptr);
  int64_t moe_layers = 0;
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    if (!spec.layers[i].is_moe) continue;
    ++moe_layers;
    const DecoderLayer lazy = model.load_layer(i);
    const LayerWeights& w = lazy.weights();
    ASSERT_FALSE(w.experts.empty());
    EXPECT_EQ(w.experts[0].gate.scalar_type(), at::kBFloat16) << "experts stay in the stored dtype";
    EXPECT_EQ(w.experts.back().down.scalar_type(), at::kBFloat16);
    EXPECT_EQ(w.router.scalar_type(), at::kFloat) << "everything else is in working precision";
    EXPECT_EQ(w.mlp_norm.scalar_type(), at::kFloat);
    const DecoderLayer eager(spec, eager_experts(w));

    const at::Tensor hidden = at::randn({b, t, spec.hidden_size}) * 2;
    const at::Tensor expected = eager.forward(hidden, ctx);
    EXPECT_TRUE(at::equal(lazy.forward(hidden, ctx), expected)) << "layer " << i;
    model.release_layer(i);  // the lazy views read the file again
    EXPECT_TRUE(at::equal(lazy.forward(hidden, ctx), expected))
        << "layer " << i << " after release";
  }
  EXPECT_GT(moe_layers, 0);
}

INSTANTIATE_TEST_SUITE_P(Models, LazyExperts,
                         ::testing::Values("qwen3_moe", "qwen3_moe-fused", "mixtral",
                                           "deepseek_v3"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return name;
                         });

TEST(LazyExpertsForward, WholeForwardUnchangedByReleases) {
  const std::filesystem::path dir = kModels / "qwen3_moe";
  if (!std::filesystem::exists(dir / "config.json")) GTEST_SKIP() << dir << " not built";
  const CausalLM model(dir);
  const at::Tensor ids = at::randint(0, model.spec().vocab_size, {2, 12}, at::kLong);
  const at::Tensor valid = at::ones({2, 12}, at::kBool);
  const at::Tensor first = model.logits(ids, valid);  // releases every layer as it goes
  EXPECT_TRUE(at::equal(model.logits(ids, valid), first));
  EXPECT_TRUE(first.isfinite().all().item<bool>());
}

}  // namespace
}  // namespace lathe
