// The block layouts follow ggml-common.h; the arithmetic follows gguf-py's quants.py (which the
// tests compare against bit for bit): each value is one float32 product (and one float32 sum or
// difference), computed in the order written there. This file is compiled with -ffp-contract=off
// (CMakeLists.txt) so that no product and sum are fused into one rounding.
#include "export/gguf_quants.h"

#include <cstring>

#include "compressor/common/errors.h"
#include "compressor/model/dtype.h"
#include "export/gguf.h"

namespace lathe::gguf {
namespace {

constexpr int kQK = 256;  // QK_K: values per K-quant super-block

float half_at(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return f16_to_f32(bits);
}

// ---- 32-value blocks
// -----------------------------------------------------------------------------

// Q4_0: f16 d, 16 bytes of nibbles (values 0-15: low nibbles, 16-31: high); x = d · (q − 8).
void q4_0(const uint8_t* b, float* y) {
  const float d = half_at(b);
  for (int i = 0; i < 16; ++i) {
    y[i] = d * static_cast<float>((b[2 + i] & 0x0F) - 8);
    y[i + 16] = d * static_cast<float>((b[2 + i] >> 4) - 8);
  }
}

// Q4_1: f16 d, f16 m, 16 bytes of nibbles; x = d · q + m.
void q4_1(const uint8_t* b, float* y) {
  const float d = half_at(b), m = half_at(b + 2);
  for (int i = 0; i < 16; ++i) {
    y[i] = d * static_cast<float>(b[4 + i] & 0x0F) + m;
    y[i + 16] = d * static_cast<float>(b[4 + i] >> 4) + m;
  }
}

/// The fifth bit of each of the 32 values of a Q5 block: bit i of a little-endian u32.
uint32_t high_bits(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

// Q5_0: f16 d, u32 high bits, 16 bytes of nibbles; x = d · (q − 16).
void q5_0(const uint8_t* b, float* y) {
  const float d = half_at(b);
  const uint32_t qh = high_bits(b + 2);
  for (int i = 0; i < 16; ++i) {
    const int lo = (b[6 + i] & 0x0F) | static_cast<int>((qh >> i) & 1) << 4;
    const int hi = (b[6 + i] >> 4) | static_cast<int>((qh >> (i + 16)) & 1) << 4;
    y[i] = d * static_cast<float>(lo - 16);
    y[i + 16] = d * static_cast<float>(hi - 16);
  }
}

// Q5_1: f16 d, f16 m, u32 high bits, 16 bytes of nibbles; x = d · q + m.
void q5_1(const uint8_t* b, float* y) {
  const float d = half_at(b), m = half_at(b + 2);
  const uint32_t qh = high_bits(b + 4);
  for (int i = 0; i < 16; ++i) {
    const int lo = (b[8 + i] & 0x0F) | static_cast<int>((qh >> i) & 1) << 4;
    const int hi = (b[8 + i] >> 4) | static_cast<int>((qh >> (i + 16)) & 1) << 4;
    y[i] = d * static_cast<float>(lo) + m;
    y[i + 16] = d * static_cast<float>(hi) + m;
  }
}

// Q8_0: f16 d, 32 int8; x = q · d.
void q8_0(const uint8_t* b, float* y) {
  const float d = half_at(b);
  for (int i = 0; i < 32; ++i) y[i] = static_cast<float>(static_cast<int8_t>(b[2 + i])) * d;
}

// ---- 256-value super-blocks (K-quants)
// --------------------------------------------------------------

// Q2_K: 16 bytes of scales (low nibble: scale, high: min, per 16 values), 64 bytes of 2-bit codes,
// f16 d, f16 dmin; x = (d · sc) · q − (dmin · mn). Value e's code: byte 32·(e/128) + e%32, bits
// 2·((e%128)/32).
void q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = half_at(b + 80), dmin = half_at(b + 82);
  for (int e = 0; e < kQK; ++e) {
    const int j = e / 16;
    const float dl = d * static_cast<float>(scales[j] & 0x0F),
                ml = dmin * static_cast<float>(scales[j] >> 4);
    const int q = (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
    y[e] = dl * static_cast<float>(q) - ml;
  }
}

// Q3_K: 32 bytes of high-bit masks, 64 bytes of 2-bit codes, 12 bytes of 6-bit scales, f16 d;
// x = (d · (sc − 32)) · (q − 4·(1 − h)).
void q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = half_at(b + 108);
  float dl[16];
  for (int k = 0; k < 16; ++k) {
    const int low = (k < 8 ? sc[k] : sc[k - 8] >> 4) & 0x0F;
    const int high = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
    dl[k] = d * static_cast<float>(static_cast<int8_t>(static_cast<uint8_t>(low | high << 4)) - 32);
  }
  for (int e = 0; e < kQK; ++e) {
    const int ql = (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
    const int h = ((hmask[e % 32] >> (e / 32)) & 1) ^ 1;
    y[e] = dl[e / 16] * static_cast<float>(ql - (h << 2));
  }
}

/// The eight 6-bit scales and mins of a Q4_K / Q5_K super-block (12 bytes).
void scale_min_k4(const uint8_t* s, int* sc, int* mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 0x3F;
    mn[j] = s[4 + j] & 0x3F;
    sc[4 + j] = (s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30);
    mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
  }
}

// Q4_K: f16 d, f16 dmin, 12 bytes of scales and mins, 128 bytes of nibbles (value e: byte
// 32·(e/64) + e%32, high nibble when (e/32) is odd); x = (d · sc) · q − (dmin · mn), per 32 values.
void q4_k(const uint8_t* b, float* y) {
  const float d = half_at(b), dmin = half_at(b + 2);
  int sc[8], mn[8];
  scale_min_k4(b + 4, sc, mn);
  const uint8_t* qs = b + 16;
  for (int e = 0; e < kQK; ++e) {
    const int j = e / 32;
    const int q = (qs[32 * (j / 2) + e % 32] >> (4 * (j % 2))) & 0x0F;
    y[e] = d * static_cast<float>(sc[j]) * static_cast<float>(q) - dmin * static_cast<float>(mn[j]);
  }
}

// Q5_K: as Q4_K with 32 bytes of fifth bits after the scales (value e: bit e/32 of byte e%32).
void q5_k(const uint8_t* b, float* y) {
  const float d = half_at(b), dmin = half_at(b + 2);
  int sc[8], mn[8];
  scale_min_k4(b + 4, sc, mn);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int e = 0; e < kQK; ++e) {
    const int j = e / 32;
    const int q = ((qs[32 * (j / 2) + e % 32] >> (4 * (j % 2))) & 0x0F) | ((qh[e % 32] >> j) & 1)
                                                                              << 4;
    y[e] = d * static_cast<float>(sc[j]) * static_cast<float>(q) - dmin * static_cast<float>(mn[j]);
  }
}

// Q6_K: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 int8 scales, f16 d;
// x = (d · sc) · (q − 32), per 16 values.
void q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half_at(b + 208);
  for (int e = 0; e < kQK; ++e) {
    const int c = e / 128, r = e % 128;
    const int lo = (ql[64 * c + r % 64] >> (4 * (r / 64))) & 0x0F;
    const int hi = (qh[32 * c + r % 32] >> (2 * (r / 32))) & 3;
    y[e] = d * static_cast<float>(sc[e / 16]) * static_cast<float>((lo | hi << 4) - 32);
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn block_fn(uint32_t type) {
  switch (static_cast<TensorType>(type)) {
    case TensorType::kQ4_0: return q4_0;
    case TensorType::kQ4_1: return q4_1;
    case TensorType::kQ5_0: return q5_0;
    case TensorType::kQ5_1: return q5_1;
    case TensorType::kQ8_0: return q8_0;
    case TensorType::kQ2_K: return q2_k;
    case TensorType::kQ3_K: return q3_k;
    case TensorType::kQ4_K: return q4_k;
    case TensorType::kQ5_K: return q5_k;
    case TensorType::kQ6_K: return q6_k;
    default: return nullptr;
  }
}

}  // namespace

bool can_dequantize(uint32_t type) {
  const auto t = static_cast<TensorType>(type);
  return t == TensorType::kF32 || t == TensorType::kF16 || t == TensorType::kBF16 ||
         block_fn(type) != nullptr;
}

void dequantize(uint32_t type, const uint8_t* data, uint64_t numel, float* out,
                const std::string& label, const std::string& tensor) {
  const std::optional<TypeTraits> traits = type_traits(type);
  if (!traits || !can_dequantize(type)) {
    throw UnsupportedError(
        label, tensor,
        std::string("GGUF type ") + (traits ? traits->name : std::to_string(type).c_str()) +
            " is not supported (lathe reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and "
            "Q2_K-Q6_K): convert the model with one of those");
  }
  if (numel % traits->block_size != 0) {
    throw InternalError(
        label, tensor, std::to_string(numel) + " values are not whole " + traits->name + " blocks");
  }
  if (numel == 0) return;  // an empty tensor (a zero dimension): `out` and `data` may be null
  switch (static_cast<TensorType>(type)) {
    case TensorType::kF32: std::memcpy(out, data, numel * 4); return;
    case TensorType::kF16:
      for (uint64_t i = 0; i < numel; ++i) out[i] = half_at(data + 2 * i);
      return;
    case TensorType::kBF16:
      for (uint64_t i = 0; i < numel; ++i) {
        uint16_t bits;
        std::memcpy(&bits, data + 2 * i, 2);
        out[i] = bf16_to_f32(bits);
      }
      return;
    default: break;
  }
  const BlockFn fn = block_fn(type);
  const uint64_t blocks = numel / traits->block_size;
  for (uint64_t k = 0; k < blocks; ++k)
    fn(data + k * traits->type_size, out + k * traits->block_size);
}

}  // namespace lathe::gguf
