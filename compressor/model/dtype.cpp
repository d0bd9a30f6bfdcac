#include "compressor/model/dtype.h"

#include <cmath>
#include <cstring>

namespace lathe {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; lathe reads it in place on little-endian hosts");

struct DTypeTraits {
  DType dtype;
  const char* name;
  int bits;
  bool floating;
};

constexpr DTypeTraits kTraits[] = {
    {DType::kBool, "BOOL", 8, false},     {DType::kU8, "U8", 8, false},
    {DType::kI8, "I8", 8, false},         {DType::kI16, "I16", 16, false},
    {DType::kU16, "U16", 16, false},      {DType::kF16, "F16", 16, true},
    {DType::kBF16, "BF16", 16, true},     {DType::kI32, "I32", 32, false},
    {DType::kU32, "U32", 32, false},      {DType::kF32, "F32", 32, true},
    {DType::kF64, "F64", 64, true},       {DType::kI64, "I64", 64, false},
    {DType::kU64, "U64", 64, false},      {DType::kF8E4M3, "F8_E4M3", 8, true},
    {DType::kF8E5M2, "F8_E5M2", 8, true},
};

const DTypeTraits& traits(DType dtype) {
  return kTraits[static_cast<size_t>(dtype)];
}

template <typename T>
T load(const uint8_t* data, size_t index) {
  T value;
  std::memcpy(&value, data + index * sizeof(T), sizeof(T));
  return value;
}

float bits_to_f32(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Value of a small float format with `exp_bits` exponent and `man_bits` mantissa bits whose
// exponent field is not all ones: ±(1.m)·2^(e−bias), or ±(0.m)·2^(1−bias) when e = 0.
float small_float_to_f32(uint32_t sign, uint32_t exponent, uint32_t mantissa, int man_bits,
                         int bias) {
  const float magnitude = exponent == 0
                              ? std::ldexp(static_cast<float>(mantissa), 1 - bias - man_bits)
                              : std::ldexp(static_cast<float>(mantissa | (1u << man_bits)),
                                           static_cast<int>(exponent) - bias - man_bits);
  return sign ? -magnitude : magnitude;
}

}  // namespace

static_assert(sizeof(kTraits) / sizeof(kTraits[0]) == sizeof(kAllDTypes) / sizeof(kAllDTypes[0]),
              "one traits row per DType");

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& row : kTraits) {
    if (name == row.name) return row.dtype;
  }
  return std::nullopt;
}

bool is_known_unsupported_dtype(std::string_view name) {
  static constexpr const char* kNames[] = {"F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4",
                                           "F6_E2M3", "F6_E3M2",     "C64"};
  for (const char* known : kNames) {
    if (name == known) return true;
  }
  return false;
}

const char* dtype_name(DType dtype) {
  return traits(dtype).name;
}

int dtype_bits(DType dtype) {
  return traits(dtype).bits;
}

bool is_floating(DType dtype) {
  return traits(dtype).floating;
}

float f16_to_f32(uint16_t bits) {
  const uint32_t sign = bits >> 15;
  const uint32_t exponent = (bits >> 10) & 0x1F;
  const uint32_t mantissa = bits & 0x3FF;
  if (exponent == 0x1F) {
    // Inf, or NaN: the payload moves to the top of float32's mantissa and, as IEEE 754 §6.2
    // conversion and x86 F16C (torch's vectorised path) do, a signalling NaN comes out quiet.
    const uint32_t quiet = mantissa != 0 ? 0x400000u : 0u;
    return bits_to_f32((sign << 31) | 0x7F800000u | (mantissa << 13) | quiet);
  }
  return small_float_to_f32(sign, exponent, mantissa, 10, 15);
}

float bf16_to_f32(uint16_t bits) {
  return bits_to_f32(static_cast<uint32_t>(bits) << 16);
}

float f8_e4m3_to_f32(uint8_t bits) {
  const uint32_t sign = bits >> 7;
  const uint32_t exponent = (bits >> 3) & 0xF;
  const uint32_t mantissa = bits & 0x7;
  if (exponent == 0xF && mantissa == 0x7) {  // the only NaN: sign kept, payload on top (as c10)
    return bits_to_f32((sign << 31) | 0x7F800000u | (mantissa << 20));
  }
  return small_float_to_f32(sign, exponent, mantissa, 3, 7);
}

float f8_e5m2_to_f32(uint8_t bits) {
  // e5m2 is the top byte of an IEEE binary16, so the f16 rules (inf, NaN, subnormals) apply.
  return f16_to_f32(static_cast<uint16_t>(bits << 8));
}

namespace {

template <typename T, typename Convert>
void convert_loop(const uint8_t* data, size_t count, float* out, Convert convert) {
  for (size_t i = 0; i < count; ++i) out[i] = convert(load<T>(data, i));
}

}  // namespace

void convert_to_f32(DType dtype, const uint8_t* data, size_t count, float* out) {
  const auto cast = [](auto v) { return static_cast<float>(v); };
  switch (dtype) {
    case DType::kBool:
      return convert_loop<uint8_t>(data, count, out, [](uint8_t v) { return v ? 1.0f : 0.0f; });
    case DType::kU8: return convert_loop<uint8_t>(data, count, out, cast);
    case DType::kI8: return convert_loop<int8_t>(data, count, out, cast);
    case DType::kI16: return convert_loop<int16_t>(data, count, out, cast);
    case DType::kU16: return convert_loop<uint16_t>(data, count, out, cast);
    case DType::kF16: return convert_loop<uint16_t>(data, count, out, f16_to_f32);
    case DType::kBF16: return convert_loop<uint16_t>(data, count, out, bf16_to_f32);
    case DType::kI32: return convert_loop<int32_t>(data, count, out, cast);
    case DType::kU32: return convert_loop<uint32_t>(data, count, out, cast);
    case DType::kF32:
      if (count > 0) std::memcpy(out, data, count * sizeof(float));
      return;
    case DType::kF64: return convert_loop<double>(data, count, out, cast);
    case DType::kI64: return convert_loop<int64_t>(data, count, out, cast);
    case DType::kU64: return convert_loop<uint64_t>(data, count, out, cast);
    case DType::kF8E4M3: return convert_loop<uint8_t>(data, count, out, f8_e4m3_to_f32);
    case DType::kF8E5M2: return convert_loop<uint8_t>(data, count, out, f8_e5m2_to_f32);
  }
}

float element_to_f32(DType dtype, const uint8_t* data, size_t index) {
  switch (dtype) {
    case DType::kBool: return data[index] != 0 ? 1.0f : 0.0f;
    case DType::kU8: return static_cast<float>(data[index]);
    case DType::kI8: return static_cast<float>(load<int8_t>(data, index));
    case DType::kI16: return static_cast<float>(load<int16_t>(data, index));
    case DType::kU16: return static_cast<float>(load<uint16_t>(data, index));
    case DType::kF16: return f16_to_f32(load<uint16_t>(data, index));
    case DType::kBF16: return bf16_to_f32(load<uint16_t>(data, index));
    case DType::kI32: return static_cast<float>(load<int32_t>(data, index));
    case DType::kU32: return static_cast<float>(load<uint32_t>(data, index));
    case DType::kF32: return load<float>(data, index);
    case DType::kF64: return static_cast<float>(load<double>(data, index));
    case DType::kI64: return static_cast<float>(load<int64_t>(data, index));
    case DType::kU64: return static_cast<float>(load<uint64_t>(data, index));
    case DType::kF8E4M3: return f8_e4m3_to_f32(data[index]);
    case DType::kF8E5M2: return f8_e5m2_to_f32(data[index]);
  }
  return 0.0f;
}

}  // namespace lathe
