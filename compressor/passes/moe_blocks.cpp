#include "compressor/passes/moe_blocks.h"

#include <ATen/ATen.h>

#include "calibrate/calibration_set.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/streaming.h"

namespace lathe {
namespace {

/// Keeps the real tokens' block inputs of one layer, in streaming order.
class BlockInputCollector : public TapObserver {
 public:
  BlockInputCollector(at::ScalarType dtype) : dtype_(dtype) {}
  bool wants(Tap tap, int64_t) const override { return tap == Tap::kMlpIn; }
  void observe(const TapEvent& e) override {
    parts_.push_back(e.value->index({*e.valid}).to(dtype_));
  }
  at::Tensor take() {
    at::Tensor x = at::cat(parts_, 0);
    parts_.clear();
    return x;
  }

 private:
  at::ScalarType dtype_;
  std::vector<at::Tensor> parts_;
};

struct Finished {};

}  // namespace

std::pair<at::Tensor, at::Tensor> calibration_tensors(const CalibrationSet& set) {
  const int64_t n = set.num_samples(), t = set.seq_len;
  at::Tensor ids =
      at::from_blob(const_cast<int32_t*>(set.ids.data()), {n, t}, at::kInt).to(at::kLong);
  at::Tensor valid = at::zeros({n, t}, at::kBool);
  for (int64_t i = 0; i < n; ++i) valid[i].slice(0, 0, set.lengths[i]).fill_(true);
  return {ids, valid};
}

void for_each_moe_block(
    const DecideModel& m,
    const std::function<void(int64_t, const DecoderLayer&, const MoeBlockInputs&)>& fn) {
  const CalibrationSet& set = m.calibration;
  const ModelSpec& spec = m.model.spec();
  int64_t last_moe = -1;
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    if (spec.layers[i].is_moe) last_moe = i;
  }
  if (last_moe < 0) return;
  const auto [ids, valid] = calibration_tensors(set);
  std::vector<int64_t> offsets{0};
  for (int64_t length : set.lengths) offsets.push_back(offsets.back() + length);
  BlockInputCollector collector(m.streaming.buffer_dtype);
  try {
    stream_forward(
        m.model, ids, valid, m.streaming, &collector,
        [](int64_t, const at::Tensor&, const at::Tensor&) {},
        [&](int64_t layer) {
          if (!spec.layers[layer].is_moe) {
            (void)collector.take();
            return;
          }
          MoeBlockInputs in{collector.take(), offsets};
          const DecoderLayer l = m.model.load_layer(layer);
          fn(layer, l, in);
          if (layer == last_moe) throw Finished{};
        });
  } catch (const Finished&) {
  }
}

at::Tensor all_expert_outputs(const DecoderLayer& layer, const at::Tensor& x) {
  std::vector<at::Tensor> out;
  for (size_t e = 0; e < layer.weights().experts.size(); ++e)
    out.push_back(layer.expert_forward(static_cast<int64_t>(e), x));
  return at::stack(out, 0);
}

std::vector<std::pair<int64_t, int64_t>> sequence_chunks(const std::vector<int64_t>& offsets,
                                                         int64_t row_bytes, int64_t budget_bytes) {
  const int64_t sequences = static_cast<int64_t>(offsets.size()) - 1;
  const int64_t max_rows = std::max<int64_t>(1, budget_bytes / std::max<int64_t>(row_bytes, 1));
  std::vector<std::pair<int64_t, int64_t>> chunks;
  for (int64_t s0 = 0; s0 < sequences;) {
    int64_t s1 = s0 + 1;
    while (s1 < sequences && offsets[s1 + 1] - offsets[s0] <= max_rows) ++s1;
    chunks.emplace_back(s0, s1);
    s0 = s1;
  }
  return chunks;
}

at::Tensor combine_experts(const at::Tensor& w, const at::Tensor& outputs) {
  return at::einsum("ne,end->nd", {w.to(outputs.scalar_type()), outputs});
}

}  // namespace lathe
