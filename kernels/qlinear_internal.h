// Helpers shared by the CPU kernels (qlinear.cpp, qlinear_ref.cpp, qlinear_fast.cpp, moe.cpp) and
// the harness: exact half-precision conversions, the packed-bit-stream reader of FORMATS.md §3/§4,
// and the per-token int8 activation quantizer. Not part of the public kernel interface.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/qlinear.h"

namespace lathe::kernels::detail {

/// IEEE binary16 → float32, exact (subnormals, infinities, NaN payloads kept).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise the mantissa
      int e = -1;
      uint32_t m = man;
      do {
        ++e;
        m <<= 1;
      } while ((m & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((m & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// bfloat16 → float32, exact.
inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// float32 → binary16, round to nearest even (overflow → ±inf, NaN stays NaN).
uint16_t float_to_half(float f);
/// float32 → bfloat16, round to nearest even.
uint16_t float_to_bf16(float f);

/// Element `index` of a view's scale array, converted exactly to float32.
inline float scale_at(const QuantWeightView& w, int64_t index) {
  switch (w.scale_type) {
    case ScaleType::kF16: return half_to_float(static_cast<const uint16_t*>(w.scales)[index]);
    case ScaleType::kBF16: return bf16_to_float(static_cast<const uint16_t*>(w.scales)[index]);
    case ScaleType::kF32: return static_cast<const float*>(w.scales)[index];
  }
  return 0.f;
}

/// Value j of a little-endian bit stream of 32-bit words (word k at words[k·stride]): stream bits
/// [bits·j, bits·j + bits). For b ∈ {2, 4, 8} that is value j % (32/b) of word j / (32/b) at bit
/// b·(j % (32/b)); for b = 3 it is the 32-values-in-3-words scheme of FORMATS.md §3.
inline uint32_t stream_value(const int32_t* words, int64_t stride, int64_t j, int64_t bits) {
  const int64_t bit = j * bits, k = bit >> 5, s = bit & 31;
  uint64_t v = static_cast<uint32_t>(words[k * stride]);
  if (s + bits > 32)
    v |= static_cast<uint64_t>(static_cast<uint32_t>(words[(k + 1) * stride])) << 32;
  return static_cast<uint32_t>((v >> s) & ((uint64_t{1} << bits) - 1));
}

/// Input columns per packed unit along the input: GPTQ needs `in` and `out` to be multiples of
/// it (32/b; 32 for 3 bits). 0 for other bits.
inline int64_t gptq_pack_width(int64_t bits) {
  return bits == 2 ? 16 : bits == 3 ? 32 : bits == 4 ? 8 : bits == 8 ? 4 : 0;
}

/// Group of input column i (g_idx, or i / group_size, 0 for per-channel).
inline int64_t group_of(const QuantWeightView& w, int64_t i) {
  if (w.g_idx) return w.g_idx[i];
  return w.group_size <= 0 ? 0 : i / w.group_size;
}

/// The per-token int8 quantization of qlinear.h (the engine's quantize_activations_per_token):
/// s = max|x| / 127 (fp32; 1 for an all-zero row), q = clamp(nearbyint(x / s), ±127). Writes q
/// (when non-null) and x̂ = q·s (when non-null); returns s.
float quantize_activation_row(const float* x, int64_t n, int8_t* q, float* x_hat);

/// y[m, out] on the reference / fast CPU backends (the view already checked).
void qlinear_cpu_ref(const QuantWeightView& w, const float* x, int64_t m, float* y);
void qlinear_cpu_fast(const QuantWeightView& w, const float* x, int64_t m, float* y);

/// g_idx null or equal to i / group_size everywhere (the layout a fast kernel can stream).
bool trivial_g_idx(const QuantWeightView& w);

}  // namespace lathe::kernels::detail
