// CMoE carving maths (ALGORITHMS.md §5; docs/cmoe.md): which neurons of a dense gated FFN become
// the shared expert and which go into each routed expert, from the FFN's activations on
// calibration tokens. The pass (compressor/passes/cmoe.cpp) builds the tensors from it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "compressor/model/model_spec.h"

namespace lathe {

struct CarveOptions {
  int64_t experts = 16;  ///< N: the FFN's I neurons form N groups of I/N
  int64_t shared = 2;    ///< S of them merged into the shared MLP
  int64_t atopk = 10;    ///< K_a: neurons marked active per token
};

/// A carve of one FFN: neuron ids of the dense FFN (rows of gate/up, columns of down).
struct Carve {
  std::vector<int64_t> shared;                ///< S·m ids, ascending
  std::vector<std::vector<int64_t>> experts;  ///< N − S lists of m ids, each ascending
  std::vector<int64_t> representatives;  ///< per routed expert: the member nearest its centroid
  std::vector<double> rates;             ///< μ_j: the fraction of tokens marking neuron j
  double assignment_cost = 0;            ///< Σ L1 distance of each neuron to its seed (§5.2.2)
  int64_t tokens = 0;                    ///< T
};

/// Rows of `w` scaled to unit L2 norm, in fp32 (an all-zero row stays zero): ĥ, Ĝ, Û of §5.1 and
/// the router's Wg, Wc.
at::Tensor unit_rows(const at::Tensor& w);

/// Carves the FFN gate, up ([I, d]) over the calibration rows `h` ([T, d], the MLP input after its
/// norm, real tokens only): activations a = act(ĥĜᵀ) ⊙ (ĥÛᵀ) with L2-normalised rows ĥ, Ĝ, Û
/// (`spec.mlp_activation`), the K_a largest |a| per token marked; shared = the S·m highest rates
/// (ties: lower id); the rest balanced into N − S groups of m by the exact optimum of the L1
/// marker distance to seeds (the highest-rate remaining neurons), one iteration; representatives
/// nearest their group's mean marker column (ties: lower id). Deterministic. Memory: the markers
/// (T·I bytes) plus O(R·(N − S)) for the assignment. ConfigError when N does not divide I, S ≥ N
/// or K_a > I.
Carve carve_ffn(const ModelSpec& spec, const at::Tensor& h, const at::Tensor& gate,
                const at::Tensor& up, const CarveOptions& options);

}  // namespace lathe
