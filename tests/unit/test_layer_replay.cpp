// LayerReplay: replays that resume from an earlier replay's values give, bit for bit, what a replay
// from the layer input gives, and resume only when nothing upstream of the cached point changed.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <tuple>

#include "compressor/model/activation_buffer.h"
#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_store.h"
#include "compressor/pipeline/layer_replay.h"

namespace lathe {
namespace {

const std::filesystem::path kModels = std::filesystem::path(LATHE_SOURCE_DIR) / "data/models";

/// Copies every wanted tap (keyed by tap, expert, first sequence), and stops at `stop` when set.
class Recorder : public TapObserver {
 public:
  Recorder(std::set<Tap> taps, int64_t layer, std::optional<Tap> stop = std::nullopt)
      : taps_(std::move(taps)), layer_(layer), stop_(stop) {}
  bool wants(Tap tap, int64_t layer) const override { return layer == layer_ && taps_.count(tap); }
  void observe(const TapEvent& e) override {
    seen[{static_cast<int>(e.tap), e.expert, e.sequence_begin}] = e.value->clone();
    if (stop_ && e.tap == *stop_) throw StopForward{};
  }
  std::map<std::tuple<int, int64_t, int64_t>, at::Tensor> seen;

 private:
  std::set<Tap> taps_;
  int64_t layer_;
  std::optional<Tap> stop_;
};

void expect_same(const Recorder& a, const Recorder& b, const std::string& what) {
  ASSERT_EQ(a.seen.size(), b.seen.size()) << what;
  ASSERT_FALSE(a.seen.empty()) << what;
  for (const auto& [key, v] : a.seen) {
    auto it = b.seen.find(key);
    ASSERT_NE(it, b.seen.end()) << what;
    EXPECT_TRUE(at::equal(v, it->second))
        << what << ": tap " << std::get<0>(key) << " expert " << std::get<1>(key);
  }
}

struct Fixture {
  ModelSpec spec;
  ExpertLayout layout;
  std::vector<LayerTensor> tensors;
  at::Tensor valid;
  std::optional<ActivationBuffer> input;
};

Fixture load(const std::string& model, int64_t layer) {
  const std::filesystem::path dir = kModels / model;
  Fixture f{load_model_spec(dir), ExpertLayout::kPerExpert, {}, {}, std::nullopt};
  const WeightStore store(dir.string());
  f.layout = detect_expert_layout(f.spec, [&](const std::string& n) { return store.contains(n); });
  for (const auto& t : expected_layer_tensors(f.spec, f.layout, layer)) {
    const at::Tensor v = load_tensor(store, t.name).clone();  // owned: the store closes here
    f.tensors.push_back({t.name, t.name, t.role, t.expert, v, v.scalar_type()});
  }
  const int64_t n = 5, t = 17;
  at::manual_seed(7);
  f.input.emplace(n, t, f.spec.hidden_size, at::kFloat, 1 << 30,
                  std::filesystem::temp_directory_path());
  f.input->write(0, at::randn({n, t, f.spec.hidden_size}));
  f.valid = at::ones({n, t}, at::kBool);
  f.valid[1].slice(0, 11).fill_(false);  // padding
  return f;
}

/// Replaces the value of every tensor of `roles` by a changed copy (what a quantizing pass does).
void change(std::vector<LayerTensor>& tensors, std::set<TensorRole> roles) {
  for (LayerTensor& t : tensors) {
    if (roles.count(t.role)) t.value = (t.value.to(at::kFloat) * 0.97).to(t.value.scalar_type());
  }
}

StreamingOptions streaming(uint64_t limit) {
  StreamingOptions o;
  o.micro_batch = 2;  // 5 sequences: batches of 2, 2, 1
  o.memory_limit_bytes = limit;
  return o;
}

/// One GPTQ-like sequence of replays (q/k/v, o, gate/up, down; then the next layer's inputs) on
/// layer `layer`, each compared with a replay from the layer input.
void gptq_sequence(const std::string& model, int64_t layer, uint64_t limit) {
  if (!std::filesystem::exists(kModels / model)) GTEST_SKIP() << model << " not built";
  Fixture f = load(model, layer);
  const bool dense = !f.spec.layers.at(layer).is_moe;
  const auto work = at::TensorOptions().dtype(at::kFloat);
  LayerReplay resumed(f.spec, f.layout, layer, *f.input, f.valid, streaming(limit), work);
  auto compare = [&](Recorder a, Recorder b, const std::string& what) {
    LayerReplay fresh(f.spec, f.layout, layer, *f.input, f.valid, streaming(limit), work);
    resumed.run(f.tensors, 0, &a, nullptr);
    fresh.run(f.tensors, 0, &b, nullptr);
    EXPECT_EQ(fresh.starts()[0], 3);  // the reference always starts at the layer input
    expect_same(a, b, model + " " + what);
  };
  const std::set<Tap> moe_taps = {Tap::kRouterLogits, Tap::kExpertIn, Tap::kExpertAct,
                                  Tap::kSharedAct};
  compare(Recorder({Tap::kAttnIn}, layer, Tap::kAttnIn),
          Recorder({Tap::kAttnIn}, layer, Tap::kAttnIn), "q/k/v");
  EXPECT_EQ(resumed.starts()[0], 3);
  change(f.tensors, {TensorRole::kQ, TensorRole::kK, TensorRole::kV, TensorRole::kQA,
                     TensorRole::kQB, TensorRole::kKVA, TensorRole::kKVB});
  compare(Recorder({Tap::kAttnOutIn}, layer, Tap::kAttnOutIn),
          Recorder({Tap::kAttnOutIn}, layer, Tap::kAttnOutIn), "o");
  EXPECT_EQ(resumed.starts()[0], 6);  // q/k/v changed: nothing to resume from
  change(f.tensors, {TensorRole::kO});
  Recorder up_a({Tap::kMlpIn}, layer, dense ? std::optional<Tap>(Tap::kMlpIn) : std::nullopt);
  Recorder up_b = up_a;
  if (!dense) up_a = Recorder(moe_taps, layer), up_b = Recorder(moe_taps, layer);
  compare(up_a, up_b, "gate/up");
  EXPECT_EQ(resumed.starts()[1], 3);  // from the attention heads
  change(f.tensors, {TensorRole::kDenseGate, TensorRole::kDenseUp, TensorRole::kExpertGate,
                     TensorRole::kExpertUp, TensorRole::kExpertsGateUp, TensorRole::kSharedGate,
                     TensorRole::kSharedUp});
  if (dense) {
    compare(Recorder({Tap::kMlpAct}, layer, Tap::kMlpAct),
            Recorder({Tap::kMlpAct}, layer, Tap::kMlpAct), "down");
  } else {
    compare(Recorder(moe_taps, layer), Recorder(moe_taps, layer), "down");
  }
  EXPECT_EQ(resumed.starts()[2], 3);  // from the MLP input
  change(f.tensors, {TensorRole::kDenseDown, TensorRole::kExpertDown, TensorRole::kExpertsDown,
                     TensorRole::kSharedDown});
  // The next layer's inputs.
  const int64_t n = f.input->all().size(0), t = f.input->all().size(1), d = f.spec.hidden_size;
  ActivationBuffer got(n, t, d, at::kFloat, 1 << 30, std::filesystem::temp_directory_path());
  ActivationBuffer want(n, t, d, at::kFloat, 1 << 30, std::filesystem::temp_directory_path());
  resumed.run(f.tensors, 0, nullptr, &got);
  LayerReplay(f.spec, f.layout, layer, *f.input, f.valid, streaming(limit), work)
      .run(f.tensors, 0, nullptr, &want);
  EXPECT_EQ(resumed.starts()[dense ? 3 : 2],
            dense ? 3 : 6);  // from down_proj's input, or the MoE input
  EXPECT_TRUE(at::equal(got.all(), want.all())) << model;
  EXPECT_GT(want.all().abs().mean().item<float>(), 0.1);
}

TEST(LayerReplay, GptqSequenceEqualsReplaysFromTheInputGemma3) {
  gptq_sequence("gemma3", 0, 1 << 30);
}
TEST(LayerReplay, GptqSequenceEqualsReplaysFromTheInputLlamaSpilled) {
  gptq_sequence("llama", 1, 0);
}
TEST(LayerReplay, GptqSequenceEqualsReplaysFromTheInputQwen2Moe) {
  gptq_sequence("qwen2_moe", 1, 1 << 30);
}
TEST(LayerReplay, GptqSequenceEqualsReplaysFromTheInputQwen3MoeFused) {
  gptq_sequence("qwen3_moe-fused", 0, 1 << 30);
}
TEST(LayerReplay, GptqSequenceEqualsReplaysFromTheInputDeepseekV3) {
  gptq_sequence("deepseek_v3", 1, 1 << 30);  // MLA attention, a sigmoid-routed MoE layer
}

TEST(LayerReplay, AnUpstreamChangeInPlaceOrOfActivationBitsReplaysFromTheInput) {
  if (!std::filesystem::exists(kModels / "llama")) GTEST_SKIP() << "llama not built";
  Fixture f = load("llama", 0);
  const auto work = at::TensorOptions().dtype(at::kFloat);
  LayerReplay r(f.spec, f.layout, 0, *f.input, f.valid, streaming(1 << 30), work);
  Recorder all({Tap::kAttnIn, Tap::kMlpAct}, 0);
  r.run(f.tensors, 0, &all,
        nullptr);  // a full forward: the deepest point (down_proj's input) is kept
  EXPECT_EQ(r.starts()[0], 3);
  Recorder act({Tap::kMlpAct}, 0, Tap::kMlpAct);
  r.run(f.tensors, 0, &act, nullptr);
  EXPECT_EQ(r.starts()[3], 3);
  // The attention norm changed in place (a smoothing pass folding scales): the cache is stale.
  for (LayerTensor& t : f.tensors) {
    if (t.role == TensorRole::kAttnNorm) t.value.mul_(1.5);
  }
  Recorder after({Tap::kMlpAct}, 0, Tap::kMlpAct);
  r.run(f.tensors, 0, &after, nullptr);
  EXPECT_EQ(r.starts()[0], 6);
  EXPECT_FALSE(at::equal(after.seen.begin()->second, act.seen.begin()->second));
  // o_proj changed (a new tensor): it feeds down_proj's input, so that cache is stale too.
  Recorder before_o({Tap::kMlpAct}, 0, Tap::kMlpAct);
  r.run(f.tensors, 0, &before_o, nullptr);
  EXPECT_EQ(r.starts()[3], 6);
  change(f.tensors, {TensorRole::kO});
  Recorder after_o({Tap::kMlpAct}, 0, Tap::kMlpAct);
  r.run(f.tensors, 0, &after_o, nullptr);
  EXPECT_EQ(r.starts()[0], 9);
  EXPECT_FALSE(at::equal(after_o.seen.begin()->second, before_o.seen.begin()->second));
  // Activation bits differ from the cached values': the forward starts from the input, and the
  // stale cache is dropped.
  ActivationBuffer next(5, 17, f.spec.hidden_size, at::kFloat, 1 << 30,
                        std::filesystem::temp_directory_path());
  r.run(f.tensors, 8, nullptr, &next);
  EXPECT_EQ(r.starts()[0], 12);
  Recorder again({Tap::kMlpAct}, 0, Tap::kMlpAct);
  r.run(f.tensors, 0, &again, nullptr);
  EXPECT_EQ(r.starts()[0], 15);
  expect_same(again, after_o, "llama after the activation-bits forward");
}

}  // namespace
}  // namespace lathe
