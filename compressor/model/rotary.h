// Rotary position embeddings as transformers computes them (modeling_rope_utils.py).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "compressor/model/model_spec.h"

namespace lathe {

/// cos/sin tables for positions 0..seq_len-1: [seq_len, rot_dim] in transformers' layout
/// (cat(freqs, freqs)), already multiplied by the scaling type's attention factor.
struct RotaryTables {
  at::Tensor cos;
  at::Tensor sin;
};

/// Tables for `rot_dim` rotary dimensions. Supports rope types default, linear, llama3 and yarn
/// (`max_positions` = max_position_embeddings, yarn's fallback for `factor`); throws
/// UnsupportedError naming `rope_parameters.rope_type` for others.
RotaryTables rotary_tables(const RopeSpec& rope, int64_t rot_dim, int64_t seq_len,
                           int64_t max_positions, const at::TensorOptions& options);

/// Multiplier of the attention softmax scale that YaRN's mscale_all_dim implies for DeepSeek MLA
/// (transformers' yarn_apply_mscale); 1 for unscaled RoPE.
double softmax_scale_factor(const RopeSpec& rope);

/// Rotates x [B, H, T, rot_dim]. `interleaved` rotates pairs (x0,x1),(x2,x3)... and returns the
/// even-then-odd layout transformers' DeepSeek code returns (q·k is the same either way).
at::Tensor apply_rotary(const at::Tensor& x, const RotaryTables& tables, bool interleaved);

}  // namespace lathe
