// The apply stage's replays of one decoder layer over the calibration set (DESIGN.md "Data flow",
// apply). A pass replays the layer as it is now, many times per layer (GPTQ once per
// true-sequential sub-group, then the forward that makes the next layer's inputs). Each replay
// keeps the values it computed at the deepest resume point it reached (LayerPoint: attention heads,
// MLP input, dense MLP activation) together with the tensors upstream of that point; the next
// replay starts there instead of at the layer input when none of those tensors changed since (same
// tensor object, same version counter) and the observer wants no earlier tap. Results are
// bit-identical to replaying from the layer input: the same operations on the same values, stored
// in the working dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "compressor/model/activation_buffer.h"
#include "compressor/model/architecture.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/model/layer_weights.h"
#include "compressor/model/model_spec.h"
#include "compressor/model/streaming.h"
#include "compressor/model/taps.h"
#include "compressor/passes/context.h"

namespace lathe {

/// Layer `layer`'s weights built from the tensors as a pass left them (LayerTensor::value by output
/// name), converted to `options`; activations fake-quantized to `act_bits` when non-zero.
LayerWeights layer_weights_of(const ModelSpec& spec, ExpertLayout layout, int64_t layer,
                              const std::vector<LayerTensor>& tensors,
                              const at::TensorOptions& options, int64_t act_bits);

class LayerReplay {
 public:
  /// Layer `layer` of `spec` (the output spec: what the compressed layer runs as) on the sequences
  /// of `input` ([N, T, d]; `valid` [N, T] marks real tokens). Cached values live in
  /// ActivationBuffers of the working dtype that spill under `streaming.spill_dir` once the RAM
  /// they would take, with the input's, exceeds streaming.memory_limit_bytes. `input` and `valid`
  /// must outlive this. `before` (when given) is the spec the layer's tensors follow until a pass
  /// changes its structure (the cmoe pass carves a dense FFN): a replay of tensors that still hold
  /// the dense MLP of a layer `spec` says is MoE runs as `before` says.
  LayerReplay(const ModelSpec& spec, ExpertLayout layout, int64_t layer,
              const ActivationBuffer& input, const at::Tensor& valid,
              const StreamingOptions& streaming, const at::TensorOptions& work,
              const ModelSpec* before = nullptr);
  ~LayerReplay();

  /// Runs the layer built from `tensors` (activations fake-quantized to `act_bits` when non-zero)
  /// over every sequence: taps to `observer` (which may stop each forward with StopForward), and
  /// the outputs into `next` when given (then the forward runs to the end and nothing is cached).
  void run(const std::vector<LayerTensor>& tensors, int64_t act_bits, TapObserver* observer,
           ActivationBuffer* next);

  /// Forwards started so far from each LayerPoint (indexed by its value), per micro-batch.
  const std::array<int64_t, 4>& starts() const { return starts_; }

 private:
  struct Cache;
  /// The tensors upstream of `point` (those a change of which changes the values there).
  static std::vector<std::pair<std::string, at::Tensor>> upstream(
      LayerPoint point, const std::vector<LayerTensor>& tensors);
  bool valid(const Cache& c, const std::vector<LayerTensor>& tensors, int64_t act_bits) const;
  /// The latest point a forward may start from and still report every tap `observer` wants.
  LayerPoint latest_start(const TapObserver* observer) const;
  uint64_t ram_in_use() const;

  /// The spec `tensors` follow now: spec_, or before_ while the dense MLP is not carved yet.
  const ModelSpec& spec_for(const std::vector<LayerTensor>& tensors) const;

  const ModelSpec& spec_;
  const ModelSpec* before_;
  ExpertLayout layout_;
  int64_t layer_;
  const ActivationBuffer& input_;
  const at::Tensor& valid_;
  StreamingOptions streaming_;
  at::TensorOptions work_;
  bool dense_;
  std::unique_ptr<Cache>
      cache_;  ///< at most one: the deepest point the last caching replay reached
  std::array<int64_t, 4> starts_{};
};

}  // namespace lathe
