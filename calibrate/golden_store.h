// Golden vectors of the verification harness (DESIGN.md "Output directory": out/verify/;
// docs/verify.md): for each decoder layer with quantized or pruned linears, real inputs of those
// linears and the outputs of lathe's compressed layer, so `lathe verify` can prove that an export's
// packed weights compute what lathe measured. One HDF5 file per layer, `verify/layer_<L>.h5` (L
// zero-padded to 5 digits):
//
//   /                attrs format "lathe-golden", format_version 1, layer, source (where the
//                    rows came from), lathe_version
//   /inputs/<name>   F32 [R, n]   an input shared by several linears ("attn_in", "attn_out_in",
//                                 "q_latent", "kv_latent", "mlp_in", "mlp_act", "shared_act",
//                                 "expert_act.<e>")
//   /linears/<module>             group per quantized or pruned linear (module = tensor name
//   without ".weight")
//        attrs input (name under /inputs), bits, group_size, sym, act_bits, and, for a linear a
//              sparsity pass pruned, sparsity (its pattern: "2:4", "unstructured"; optional, so
//              files without it read as before). A pruned linear lathe did not quantize has
//              bits = its stored dtype's width (16, 32), group_size −1, act_bits 0.
//        y   F32 [R, out]          act(x) · Wᵀ + b with W lathe's exact dequantized (or pruned)
//                                  weight (fp32)
//   /moe             (MoE layers) attrs input ("mlp_in"); y F32 [R, d] = the MoE block's output
//                    (router, routed experts, shared expert) on that input
//
// Files are written to a temporary name and renamed (atomic); reads treat them as untrusted
// (DataError naming the file and the object).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace lathe {

struct GoldenLinear {
  std::string module;
  std::string input;  ///< key of GoldenLayer::inputs
  int64_t bits = 0, group_size = -1;
  bool sym = true;
  int64_t act_bits = 0;
  at::Tensor y;               ///< float32 [R, out]
  std::string sparsity = "";  ///< the pattern a sparsity pass pruned it with ("2:4"), "" when dense
};

struct GoldenLayer {
  int64_t layer = -1;
  std::string source;
  std::map<std::string, at::Tensor> inputs;  ///< float32 [R, n]
  std::vector<GoldenLinear> linears;         ///< model order
  std::optional<at::Tensor> moe_y;           ///< float32 [R, d] (input "mlp_in")
};

/// `dir/layer_<L>.h5`.
std::string golden_file_name(int64_t layer);

/// Writes `g` to `path` atomically (ResourceError when HDF5 or the rename fails; InternalError for
/// a GoldenLayer whose linears name a missing input or have mismatched rows).
void write_golden_layer(const std::string& path, const GoldenLayer& g);

/// Reads and checks one file: format, version, every dataset F32 2-D with the same row count, each
/// linear's input present, attributes of the right type. DataError(path, object) otherwise.
GoldenLayer read_golden_layer(const std::string& path);

/// The golden files in `dir` (layer_*.h5), sorted by layer; empty when `dir` does not exist.
std::vector<std::string> list_golden_files(const std::string& dir);

}  // namespace lathe
