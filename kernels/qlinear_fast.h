// Internal interface of the cpu-fast backend: qlinear_fast.cpp prepares per-call data (scaled
// activations, group sums, decoded zero points) and splits outputs over OpenMP threads;
// qlinear_fast_avx2.cpp holds the AVX2/FMA/F16C workers, compiled per function with
// __attribute__((target)) so the build stays portable (a runtime check picks them).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/qlinear.h"

namespace lathe::kernels::fast {

/// The CPU has AVX2, FMA and F16C and LATHE_KERNELS_NO_AVX2 is unset (checked once).
bool avx2_supported();

/// Decodes weight row o (all `in` columns) into row[0, in) as float32 = scale · (code − zero).
/// Any format, any g_idx; scalar.
void decode_row_scalar(const QuantWeightView& w, int64_t o, float* row);

/// One run of input columns of a GPTQ GEMV inside one group: 32-input blocks [k0, k1); `first`
/// and `last` mark the group's first and last band (accumulators reset / folded with the group's
/// scale and zero).
struct Band {
  int64_t k0, k1, group;
  bool first, last;
  float xsum;  ///< Σ x over the group (set on the last band)
};

/// GPTQ GEMV (m = 1, trivial g_idx, in % 32 == 0, bands as above): y[o] for o ∈ [o0, o1), o0 and
/// o1 multiples of 8. xs: x pre-scaled per position in its 32-block (see the .cpp). scratch:
/// 2·(o1 − o0) floats.
void gptq_gemv_avx2(const QuantWeightView& w, const float* xs, const std::vector<Band>& bands,
                    int64_t o0, int64_t o1, float* scratch, float* y);

/// compressed-tensors GEMV (m = 1, trivial g_idx, in and the group size multiples of 8·32/B): rows
/// [o0, o1). xd: x regrouped per 8-word chunk as [value j][lane] and scaled by 2^−B·j (the top
/// value unscaled); xsum [G]: Σ x per group.
void ct_gemv_avx2(const QuantWeightView& w, const float* xd, const float* xsum, int64_t o0,
                  int64_t o1, float* y);

/// GPTQ via k-major tiles (any g_idx, any m): outputs [o0, o1) (o0 multiple of 64). sf, zf:
/// scales and zeros as float32 [G, out]. x [m, in]. y [m, out] written (bias added).
void gptq_tiles_avx2(const QuantWeightView& w, const float* sf, const float* zf, const float* x,
                     int64_t m, int64_t o0, int64_t o1, float* y);

/// Row-major formats (dense, compressed-tensors, int8 weights with float activations): rows
/// [o0, o1) decoded four at a time (vectorised for trivial groups, else decode_row_scalar) and
/// dotted with x [m, in]. y [m, out] written (bias added). vector_decode: trivial g_idx and groups
/// of whole 32-column blocks (the caller checks once per call).
void rows_avx2(const QuantWeightView& w, bool vector_decode, const float* x, int64_t m, int64_t o0,
               int64_t o1, float* y);

/// W8A8: xq [m, ldx] int16 (the int8 codes, zero-padded to ldx ≥ in, a multiple of 16), xscale [m]
/// per-token scales; int32 sums of int8 × int8, then y = s_t · s_w · sum (+ bias). Rows [o0, o1).
void w8a8_avx2(const QuantWeightView& w, const int16_t* xq, int64_t ldx, const float* xscale,
               int64_t m, int64_t o0, int64_t o1, float* y);

}  // namespace lathe::kernels::fast
