// The layer-streaming executor (DESIGN.md data flow, stages observe/apply/eval): N sequences go
// through the model one layer at a time; only one layer and the boundary activations are resident.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>

#include "compressor/model/causal_lm.h"
#include "compressor/model/taps.h"

namespace lathe {

/// How the executor batches and where activations live.
struct StreamingOptions {
  int64_t micro_batch = 8;                      ///< sequences per layer call
  at::ScalarType buffer_dtype = at::kBFloat16;  ///< dtype of boundary activations (DESIGN: bf16)
  uint64_t memory_limit_bytes = 4ull << 30;  ///< per boundary buffer; beyond it the buffer spills
  std::filesystem::path spill_dir = std::filesystem::temp_directory_path();
};

/// Receives the final hidden states (working dtype) of sequences [begin, begin + hidden.size(0)).
using FinalHiddenConsumer =
    std::function<void(int64_t begin, const at::Tensor& hidden, const at::Tensor& valid)>;
/// Told when layer `i` has processed every sequence (progress, checkpoints).
using LayerFinished = std::function<void(int64_t layer)>;

/// Runs ids [N, T] (valid [N, T] marks real tokens) through every layer of `model`, layer-major:
/// layer i is loaded once, applied to all micro-batches, then released: after `on_layer(i)`
/// returns, the mapped pages of layer i's tensors are dropped from RSS (CausalLM::release_layer),
/// as are the embedding's after embedding and the head's (release_head) at the end. Taps go to
/// `observer`.
void stream_forward(const CausalLM& model, const at::Tensor& ids, const at::Tensor& valid,
                    const StreamingOptions& options, TapObserver* observer,
                    const FinalHiddenConsumer& consume, const LayerFinished& on_layer = {});

}  // namespace lathe
