#include "tests/unit/real_llama_layer.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "calibrate/tokenizer.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/taps.h"

namespace lathe {
namespace {

const std::filesystem::path kLlama = std::filesystem::path(LATHE_SOURCE_DIR) / "data/models/llama";
const std::filesystem::path kProse =
    std::filesystem::path(LATHE_SOURCE_DIR) / "data/corpora/prose/train.txt";

struct Capture : TapObserver {
  int64_t layer = 1;
  std::map<Tap, std::vector<at::Tensor>> rows;
  bool wants(Tap tap, int64_t l) const override {
    return l == layer && (tap == Tap::kMlpIn || tap == Tap::kMlpAct);
  }
  void observe(const TapEvent& e) override {
    rows[e.tap].push_back(
        e.value->index_select(0, e.valid->nonzero().squeeze(1)).to(at::kFloat).clone());
  }
};

}  // namespace

const RealLayers& real_layers() {
  static const RealLayers data = [] {
    RealLayers d;
    if (!std::filesystem::exists(kLlama) || !std::filesystem::exists(kProse)) return d;
    const Tokenizer tok = Tokenizer::from_model_dir(kLlama.string());
    std::ifstream f(kProse);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str().substr(0, 60000);
    const std::vector<int32_t> ids = tok.encode(text, /*add_special_tokens=*/false);
    const int64_t b = 16, t = 128;
    if (static_cast<int64_t>(ids.size()) < b * t) return d;
    const at::Tensor id_tensor =
        at::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + b * t), at::kLong).view({b, t});
    const CausalLM model(kLlama);
    Capture cap;
    model.logits(id_tensor, at::ones({b, t}, at::kBool), &cap);
    const DecoderLayer layer = model.load_layer(1);
    auto make = [](at::Tensor x, const at::Tensor& w, std::string name) {
      LayerData l;
      l.x = std::move(x);
      l.weight = w.to(at::kFloat).clone();
      l.sum = l.x.t().mm(l.x);
      l.tokens = l.x.size(0);
      l.name = std::move(name);
      return l;
    };
    d.gate = make(at::cat(cap.rows[Tap::kMlpIn]), layer.weights().dense_gate.weight,
                  "layers.1.mlp.gate_proj");
    d.down = make(at::cat(cap.rows[Tap::kMlpAct]), layer.weights().dense_down.weight,
                  "layers.1.mlp.down_proj");
    d.ok = true;
    return d;
  }();
  return data;
}

}  // namespace lathe
