// Kernels for the exported quantized formats (FORMATS.md §3 GPTQ v1, §4 compressed-tensors), read
// straight from the packed tensors as they lie in the export files: no LibTorch here (DESIGN.md
// module map), so the verification harness and `lathe verify` prove what a deployment runtime
// would compute from the same bytes.
//
// Backends:
//   cpu-ref   the straightforward definition: dequantize element by element (the formula of
//             FORMATS.md), then a triple loop accumulating in double. Obviously correct, slow.
//   cpu-fast  blocked, vectorised, OpenMP: unpacks codes on the fly, fp32 accumulation. Checked
//             against cpu-ref by the harness.
//   cuda      kernels/cuda/*.cu (built with -DLATHE_CUDA=ON; fp16 activations for the A16 formats,
//             int8 for W8A8). Present only when compiled and a GPU is visible.
//
// Activations are always given and returned as fp32 row-major host arrays: y[m, out] = act(x[m,
// in]) · Wᵀ + bias. act is the identity for A16 formats (act_bits 0) and, for act_bits 8, the
// dynamic symmetric per-token int8 quantization lathe's engine simulates (ALGORITHMS.md §2.2):
//   s_t = max_i |x[t, i]| / 127, q[t, i] = clamp(nearbyint(x[t, i] / s_t), −127, 127)   (fp32
//   division, round half to even; a row of zeros keeps s_t = 1 and q = 0), then y = s_t · s_w[o] ·
//   Σ_i q·w_int.
// m = 1 is the GEMV (decode) case, m > 1 GEMM (prefill); each backend picks its kernel by m.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kernel_error.h"

namespace lathe::kernels {

enum class Backend { kCpuRef, kCpuFast, kCuda };
const char* backend_name(Backend b);  ///< "cpu-ref", "cpu-fast", "cuda"
/// Backends usable in this process: the CPU two always, cuda when compiled and a device is visible.
std::vector<Backend> available_backends();

/// Storage formats of one linear's weight.
enum class WeightFormat {
  kDense,  ///< float32 [out, in] (a module an export keeps unquantized)
  kGptq,  ///< GPTQ v1: qweight [in·b/32, out], qzeros [G, out·b/32] (= z − 1), scales [G, out],
          ///< g_idx
  kCtPacked,  ///< compressed-tensors pack-quantized: weight_packed [out, ⌈in/pf⌉], weight_scale
              ///< [out, G], weight_zero_point [⌈out/pf⌉, G] (asymmetric only), weight_g_idx
              ///< (optional)
  kCtInt8,    ///< compressed-tensors int-quantized: weight int8 [out, in], weight_scale [out, 1]
};
const char* format_name(WeightFormat f);  ///< "dense", "gptq", "ct-packed", "ct-int8"

enum class ScaleType { kF16, kBF16, kF32 };

/// A read-only view of one linear's weight in its stored layout. Pointers are not owned. Codes
/// follow FORMATS.md bit for bit (packing order, v1 zero points, CT code offset 2^(b−1)).
struct QuantWeightView {
  WeightFormat format = WeightFormat::kDense;
  int64_t out = 0, in = 0;
  int64_t bits = 16;                ///< 2/3/4/8 for kGptq, 2/4/8 for kCtPacked, 8 for kCtInt8
  int64_t group_size = -1;          ///< columns per group; −1 = one group per row (per channel)
  const float* dense = nullptr;     ///< kDense
  const int32_t* packed = nullptr;  ///< kGptq qweight, kCtPacked weight_packed
  const int8_t* int8_weight = nullptr;  ///< kCtInt8
  const int32_t* zeros =
      nullptr;  ///< kGptq qzeros (required); kCtPacked weight_zero_point (null = symmetric)
  const void* scales = nullptr;  ///< kGptq [G, out]; kCtPacked [out, G]; kCtInt8 [out, 1]
  ScaleType scale_type = ScaleType::kF16;
  const int32_t* g_idx = nullptr;  ///< [in] group of each input column; null = column / group_size
  const float* bias = nullptr;     ///< [out] or null
  int64_t act_bits = 0;            ///< 0 = float activations (A16); 8 = int8 per token, dynamic

  int64_t groups() const { return group_size <= 0 ? 1 : (in + group_size - 1) / group_size; }
};

/// Checks a view's shape, bits, group size and pointers (KernelError naming what is wrong).
void check_view(const QuantWeightView& w);

/// The weight as float32 [out, in] (= scale · (code − zero), scales converted exactly): the
/// cpu-ref definition every other kernel is compared against.
void dequantize_ref(const QuantWeightView& w, float* weight_out);

/// y[m, out] = act(x[m, in]) · Wᵀ + bias on `backend`.
void qlinear(Backend backend, const QuantWeightView& w, const float* x, int64_t m, float* y);

/// The MoE block of lathe's engine (compressor/model/decoder_layer.cpp: route + moe), on quantized
/// experts. Routing is computed in fp32 on the host for every backend (it is tiny and its ties
/// decide which experts run); the experts run on `backend`.
struct MoeRouting {
  /// kCmoe: a carved dense FFN's router (lathe's cmoe pass): s = |(Wc x) ⊙ SiLU(Wg x)| with Wg
  /// = MoeBlockView::router and Wc = router_up, p = softmax(s), selection on p + selection_bias
  /// (summed in fp64),
  /// weight 1 + p·router_scale (renormalize and scaling_factor unused).
  enum class Scoring { kSoftmax, kSigmoid, kCmoe } scoring = Scoring::kSoftmax;
  int64_t top_k = 2;
  bool renormalize = true;      ///< divide the k weights by their sum (sigmoid: sum + 1e−20)
  double scaling_factor = 1.0;  ///< routed_scaling_factor
  int64_t num_groups = 1;       ///< group-limited routing when > 1
  int64_t topk_groups = 1;
  const float* selection_bias = nullptr;  ///< [E] (sigmoid and cmoe routers), or null
  const float* router_up = nullptr;       ///< kCmoe: Wc [E, hidden] fp32
  const float* router_scale = nullptr;    ///< kCmoe: extra_scale [E] fp32
};

struct MoeBlockView {
  int64_t hidden = 0;
  int64_t num_experts = 0;
  const float* router = nullptr;  ///< [E, hidden] fp32
  MoeRouting routing;
  /// Routed experts: gate/up [I, hidden], down [hidden, I]; SiLU(gate(x)) * up(x) → down.
  std::vector<QuantWeightView> gate, up, down;
  /// Optional shared expert (same SwiGLU), added to every token; scaled by
  /// sigmoid(x · shared_expert_gate) when that [hidden] vector is given.
  bool has_shared = false;
  QuantWeightView shared_gate, shared_up, shared_down;
  const float* shared_expert_gate = nullptr;
};

/// The router's choice for x[m, hidden]: experts[m, k] (best first) and weights[m, k], exactly as
/// the engine's route() (softmax or sigmoid, group limits, bias for selection only,
/// renormalisation, scaling). Host code, shared by every backend.
void moe_route(const MoeBlockView& block, const float* x, int64_t m, int32_t* experts,
               float* weights);

/// y[m, hidden] = Σ_k weight_k · expert_k(x) (+ shared expert) on `backend`.
void moe_block(Backend backend, const MoeBlockView& block, const float* x, int64_t m, float* y);

/// Normalised mean squared error Σ(a − b)² / Σ b² (b the reference; 0 when both are all zero,
/// +inf when b is all zero and a is not). NaN anywhere in `a` gives NaN; an Inf in `a` where `b`
/// has no Inf of the same sign at that index gives +inf.
double nmse(const float* a, const float* b, int64_t n);

}  // namespace lathe::kernels
