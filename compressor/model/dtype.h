// Element types of safetensors files (FORMATS.md §1) and exact scalar conversions to float32.
// Torch-free: the parsers, the fuzz targets and the CLI use it without LibTorch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace lathe {

/// The safetensors dtypes lathe reads. Names follow the safetensors spelling (dtype_name()).
/// F8_E4M3 is the "fn" variant (no infinities, one NaN pattern per sign), as in torch and in the
/// safetensors reference implementation.
enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
  kF8E4M3,
  kF8E5M2,
};

/// Every DType, in declaration order (for tests and listings).
inline constexpr DType kAllDTypes[] = {DType::kBool, DType::kU8,     DType::kI8,    DType::kI16,
                                       DType::kU16,  DType::kF16,    DType::kBF16,  DType::kI32,
                                       DType::kU32,  DType::kF32,    DType::kF64,   DType::kI64,
                                       DType::kU64,  DType::kF8E4M3, DType::kF8E5M2};

/// The DType spelled `name` in a safetensors header ("BF16", "F8_E4M3", ...); nullopt for any
/// other string. Case-sensitive, as the format is.
std::optional<DType> parse_dtype(std::string_view name);

/// True for dtypes the safetensors format defines but lathe does not read yet (F8_E8M0, the FNUZ
/// float8 variants, F4, F6_E2M3, F6_E3M2, C64): a file holding one is valid but unsupported.
bool is_known_unsupported_dtype(std::string_view name);

/// The safetensors spelling of `dtype`, e.g. "BF16".
const char* dtype_name(DType dtype);

/// Bits per element: 8 for BOOL and the 8-bit types, up to 64.
int dtype_bits(DType dtype);

/// Bytes per element (dtype_bits / 8); also the alignment a typed pointer to it needs.
inline size_t dtype_size(DType dtype) {
  return static_cast<size_t>(dtype_bits(dtype)) / 8;
}

/// True for F16, BF16, F32, F64 and the float8 types (values that can be NaN or infinite).
bool is_floating(DType dtype);

/// Exact float32 value of an IEEE binary16 bit pattern (subnormals, ±0, ±inf). A NaN keeps its
/// sign and payload (shifted to the top of float32's mantissa) and comes out quiet, as in
/// IEEE 754 conversion: 0x7C01 → 0x7FC02000.
float f16_to_f32(uint16_t bits);

/// Exact float32 value of a bfloat16 bit pattern (bfloat16 is the top half of a float32, so
/// every pattern, NaN payloads included, maps bit for bit).
float bf16_to_f32(uint16_t bits);

/// Exact float32 value of a float8 e4m3fn bit pattern (bias 7; no infinity; S.1111.111 is NaN,
/// returned as 0x7FF00000 with the sign, as c10::Float8_e4m3fn does).
float f8_e4m3_to_f32(uint8_t bits);

/// Exact float32 value of a float8 e5m2 bit pattern (bias 15; IEEE-style inf and NaN).
float f8_e5m2_to_f32(uint8_t bits);

/// Float32 value of element `index` of a little-endian array of `dtype` starting at `data`,
/// which need not be aligned. Integers convert with static_cast rounding (round to nearest even),
/// BOOL gives 1 for any non-zero byte.
float element_to_f32(DType dtype, const uint8_t* data, size_t index);

/// Converts `count` little-endian elements of `dtype` at `data` (any alignment) to float32 in
/// `out`, with the same rules as element_to_f32.
void convert_to_f32(DType dtype, const uint8_t* data, size_t count, float* out);

}  // namespace lathe
