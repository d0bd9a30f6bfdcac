// Named taps: points inside a decoder layer where observers (statistics collectors, passes) read
// tensors without the layer knowing who listens (DESIGN.md "Core types").
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace lathe {

/// Where in a layer a tensor is observed.
enum class Tap {
  kAttnIn,        ///< input of the attention block after input_layernorm, [tokens, d]
  kAttnOutIn,     ///< input of o_proj (attention heads concatenated), [tokens, H·D_v]
  kMlpIn,         ///< input of the MLP/MoE block after post_attention_layernorm, [tokens, d]
  kRouterLogits,  ///< raw router logits (fp32), [tokens, E]
  kRouterTopK,    ///< experts the router selected (int64, best first; bias and group limits
                  ///< included), [tokens, k]
  kExpertIn,      ///< tokens routed to one expert, [n_e, d]
  kExpertAct,     ///< that expert's act(gate) * up, [n_e, I]
  kMlpAct,        ///< a dense MLP's act(gate) * up (the input of down_proj), [tokens, I]
  kSharedAct,     ///< the shared expert's act(gate) * up, [tokens, I_shared]
  kLayerOut,      ///< output hidden state of the layer, [tokens, d]
};

/// Stable name of a tap ("attn.in", "expert.act", ...).
const char* tap_name(Tap tap);

struct LayerWeights;

/// One observation. Tokens are flattened over the batch ([B, T] → B·T rows, row r is position
/// r mod T of sequence sequence_begin + r / T), padding included; `valid` ([tokens], bool) marks
/// the real ones. For expert taps, `expert` is the expert id and `token_index` the rows of the
/// flattened batch that the expert received.
struct TapEvent {
  Tap tap;
  int64_t layer = -1;
  int64_t expert = -1;
  const at::Tensor* value = nullptr;
  const at::Tensor* token_index = nullptr;
  const at::Tensor* valid = nullptr;
  int64_t sequence_begin = 0;  ///< index of the batch's first sequence in the whole run (streaming)
  int64_t seq_len = 0;         ///< T
  const LayerWeights* weights = nullptr;  ///< the layer's weights (read-only)
};

/// Thrown by an observer's observe() once it has seen everything it needs from this forward: the
/// layer's forward unwinds at once (no output). Only callers that run a layer for its taps alone
/// (the apply stage's replays) catch it; DecoderLayer itself never does.
struct StopForward {};

/// Receives tap events. The layer asks `wants` first, so unobserved taps cost nothing.
class TapObserver {
 public:
  virtual ~TapObserver() = default;
  /// Whether `tap` of `layer` should be reported.
  virtual bool wants(Tap tap, int64_t layer) const = 0;
  /// Called synchronously during the forward; must not modify the tensors.
  virtual void observe(const TapEvent& event) = 0;
};

}  // namespace lathe
