// The MoE blocks' calibration inputs, for decide passes that reconstruct a block (naee, diep
// layerwise; ALGORITHMS.md §0 table: "block input X_l, output Y_l"). Streams the calibration set
// through the ORIGINAL model one layer at a time; only the current layer's block inputs are held.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "compressor/model/decoder_layer.h"
#include "compressor/passes/context.h"

namespace lathe {

/// The calibration samples as ids [N, T] (int64) and valid [N, T] (bool: the first lengths[s]
/// positions of row s).
std::pair<at::Tensor, at::Tensor> calibration_tensors(const CalibrationSet& set);

/// One MoE layer's block inputs (after post_attention_layernorm) of every real calibration token.
struct MoeBlockInputs {
  at::Tensor x;                  ///< [n, d] in the streaming buffer dtype (bf16 by default)
  std::vector<int64_t> offsets;  ///< sequence s owns rows [offsets[s], offsets[s + 1]); size N + 1
};

/// Calls fn(layer index, the layer, its inputs) for every MoE layer in order. Stops streaming after
/// the last MoE layer.
void for_each_moe_block(
    const DecideModel& model,
    const std::function<void(int64_t, const DecoderLayer&, const MoeBlockInputs&)>& fn);

/// The routed part of MoE block `layer` on x [n, d] (working dtype): every expert's output on
/// every token, [E, n, d], for combining under any routing mask (w [n, E] · outputs).
at::Tensor all_expert_outputs(const DecoderLayer& layer, const at::Tensor& x);

/// Runs of whole sequences [s0, s1) over `offsets` (MoeBlockInputs::offsets) whose rows take at
/// most `budget_bytes` at `row_bytes` each (a single longer sequence is a run of its own): the
/// chunks in which a decide pass materialises per-row data such as all_expert_outputs ([E, rows,
/// d]), so its memory stays bounded however large the calibration set.
std::vector<std::pair<int64_t, int64_t>> sequence_chunks(const std::vector<int64_t>& offsets,
                                                         int64_t row_bytes,
                                                         int64_t budget_bytes = int64_t{1} << 30);

/// Σ_e w[:, e] · outputs[e]: [n, E] × [E, n, d] → [n, d].
at::Tensor combine_experts(const at::Tensor& w, const at::Tensor& outputs);

}  // namespace lathe
