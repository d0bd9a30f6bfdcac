// Factories of the built-in passes, for registry.cpp only.
#pragma once

#include <memory>

#include "compressor/model/architecture.h"
#include "compressor/passes/pass.h"
#include "compressor/passes/context.h"
#include "compressor/passes/plan.h"

namespace lathe {

std::unique_ptr<Pass> make_rtn_pass(const PassInstance& instance);           // rtn.cpp
std::unique_ptr<Pass> make_drop_experts_pass(const PassInstance& instance);  // drop_experts.cpp

/// Expert surgery of one layer per plan.experts (drop_experts.cpp): router rows and selection bias
/// sliced, removed experts' tensors dropped (recorded as "removed"), kept ones renumbered.
void apply_expert_surgery(LayerApplyContext& ctx);

/// Round-to-nearest of every tensor of the layer whose plan entry has method "rtn" (rtn.cpp): the
/// value becomes its dequantization in the stored dtype; a TensorRecord per tensor.
void apply_rtn(LayerApplyContext& ctx);

/// Linears a weight-quantization pass may touch: attention, MLP, expert and shared-expert projections.
/// Routers, norms, biases, embeddings and the LM head are never quantized (ALGORITHMS.md §1.6).
bool is_quantizable(TensorRole role);

/// "rtn-int4-g128-sym": the manifest's format of a quantized tensor.
std::string quant_format(const TensorPlan& plan);

}  // namespace lathe
