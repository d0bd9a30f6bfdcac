// DType names and exact scalar conversions. The float conversions are checked exhaustively against
// c10's independent implementations (c10::Half, c10::BFloat16, c10::Float8_*), bit for bit.
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e5m2.h>
#include <c10/util/Half.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "compressor/model/dtype.h"

namespace lathe {
namespace {

uint32_t bits_of(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

// Same value including the sign of zero; any NaN equals any NaN of the same sign.
void expect_same_float(float actual, float expected, uint32_t pattern) {
  if (std::isnan(expected)) {
    EXPECT_TRUE(std::isnan(actual)) << "pattern 0x" << std::hex << pattern;
    EXPECT_EQ(std::signbit(actual), std::signbit(expected)) << "pattern 0x" << std::hex << pattern;
  } else {
    EXPECT_EQ(bits_of(actual), bits_of(expected)) << "pattern 0x" << std::hex << pattern;
  }
}

TEST(DType, NamesRoundTripAndAreCaseSensitive) {
  for (const DType dtype : kAllDTypes) {
    const auto parsed = parse_dtype(dtype_name(dtype));
    ASSERT_TRUE(parsed.has_value()) << dtype_name(dtype);
    EXPECT_EQ(*parsed, dtype);
  }
  EXPECT_EQ(dtype_name(DType::kF8E4M3), std::string("F8_E4M3"));
  EXPECT_EQ(dtype_name(DType::kBF16), std::string("BF16"));
  EXPECT_FALSE(parse_dtype("bf16").has_value());
  EXPECT_FALSE(parse_dtype("F8_E8M0").has_value());
  EXPECT_FALSE(parse_dtype("").has_value());
  EXPECT_TRUE(is_known_unsupported_dtype("F8_E8M0"));
  EXPECT_TRUE(is_known_unsupported_dtype("F4"));
  EXPECT_FALSE(is_known_unsupported_dtype("F32"));
}

TEST(DType, BitsAndKinds) {
  EXPECT_EQ(dtype_bits(DType::kBool), 8);
  EXPECT_EQ(dtype_bits(DType::kF8E5M2), 8);
  EXPECT_EQ(dtype_bits(DType::kBF16), 16);
  EXPECT_EQ(dtype_bits(DType::kU32), 32);
  EXPECT_EQ(dtype_bits(DType::kF64), 64);
  EXPECT_EQ(dtype_size(DType::kI64), 8u);
  EXPECT_TRUE(is_floating(DType::kF8E4M3));
  EXPECT_TRUE(is_floating(DType::kBF16));
  EXPECT_FALSE(is_floating(DType::kI32));
  EXPECT_FALSE(is_floating(DType::kBool));
}

TEST(DType, F16KnownValues) {
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);                  // largest finite
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));     // smallest normal
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x03FF), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(f16_to_f32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_f32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7C01)));          // signalling NaN stays NaN, not inf
  EXPECT_EQ(bits_of(f16_to_f32(0x8000)), 0x80000000u);  // −0 keeps its sign
}

TEST(DType, Bf16KnownValues) {
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xC0A0), -5.0f);
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
  EXPECT_EQ(bf16_to_f32(0x7F80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(bf16_to_f32(0xFF80), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(bf16_to_f32(0x7FC0)));
  EXPECT_TRUE(std::isnan(bf16_to_f32(0xFF81)));
}

TEST(DType, Float8KnownValues) {
  EXPECT_EQ(f8_e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(f8_e4m3_to_f32(0x7E), 448.0f);                // largest finite
  EXPECT_EQ(f8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(f8_e4m3_to_f32(0x78), 256.0f);                // 0x78 is finite in the fn variant
  EXPECT_TRUE(std::isnan(f8_e4m3_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(f8_e4m3_to_f32(0xFF)));
  EXPECT_EQ(f8_e5m2_to_f32(0x3C), 1.0f);
  EXPECT_EQ(f8_e5m2_to_f32(0x7B), 57344.0f);
  EXPECT_EQ(f8_e5m2_to_f32(0x01), std::ldexp(1.0f, -16));
  EXPECT_EQ(f8_e5m2_to_f32(0x7C), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f8_e5m2_to_f32(0x7D)));
}

TEST(DType, NanBitPatterns) {
  EXPECT_EQ(bits_of(f16_to_f32(0x7C01)), 0x7FC02000u);  // signalling → quiet, payload kept
  EXPECT_EQ(bits_of(f16_to_f32(0xFE00)), 0xFFC00000u);
  EXPECT_EQ(bits_of(f16_to_f32(0x7FFF)), 0x7FFFE000u);
  EXPECT_EQ(bits_of(bf16_to_f32(0x7F81)), 0x7F810000u);  // bfloat16 maps bit for bit
  EXPECT_EQ(bits_of(f8_e4m3_to_f32(0x7F)), 0x7FF00000u);
  EXPECT_EQ(bits_of(f8_e4m3_to_f32(0xFF)), 0xFFF00000u);
  EXPECT_EQ(bits_of(f8_e5m2_to_f32(0x7D)), 0x7FE00000u);
}

TEST(DType, F16MatchesC10ForEveryBitPattern) {
  for (uint32_t p = 0; p <= 0xFFFF; ++p) {
    const float expected =
        static_cast<float>(c10::Half(static_cast<uint16_t>(p), c10::Half::from_bits()));
    expect_same_float(f16_to_f32(static_cast<uint16_t>(p)), expected, p);
  }
}

TEST(DType, Bf16MatchesC10ForEveryBitPattern) {
  for (uint32_t p = 0; p <= 0xFFFF; ++p) {
    const float expected =
        static_cast<float>(c10::BFloat16(static_cast<uint16_t>(p), c10::BFloat16::from_bits()));
    expect_same_float(bf16_to_f32(static_cast<uint16_t>(p)), expected, p);
  }
}

TEST(DType, Float8MatchesC10ForEveryBitPattern) {
  for (uint32_t p = 0; p <= 0xFF; ++p) {
    const auto b = static_cast<uint8_t>(p);
    expect_same_float(f8_e4m3_to_f32(b),
                      static_cast<float>(c10::Float8_e4m3fn(b, c10::Float8_e4m3fn::from_bits())),
                      p);
    expect_same_float(f8_e5m2_to_f32(b),
                      static_cast<float>(c10::Float8_e5m2(b, c10::Float8_e5m2::from_bits())), p);
  }
}

TEST(DType, ElementToF32ReadsUnalignedLittleEndian) {
  // One leading byte puts every element at an odd address.
  const uint8_t bytes[] = {0xEE, 0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0x40};
  EXPECT_EQ(element_to_f32(DType::kF32, bytes + 1, 0), 1.0f);
  EXPECT_EQ(element_to_f32(DType::kF32, bytes + 1, 1), 2.0f);
  const uint8_t i16[] = {0xFE, 0xFF, 0x02, 0x01};
  EXPECT_EQ(element_to_f32(DType::kI16, i16, 0), -2.0f);
  EXPECT_EQ(element_to_f32(DType::kU16, i16, 1), 258.0f);
  const uint8_t flags[] = {0, 1, 7};
  EXPECT_EQ(element_to_f32(DType::kBool, flags, 2), 1.0f);
}

TEST(DType, ConvertToF32MatchesElementwise) {
  const uint8_t bytes[16] = {1, 2, 3, 4, 5, 6, 7, 0x80, 0xFF, 0x7F, 0, 0x3C, 9, 10, 11, 0xC0};
  for (const DType dtype : kAllDTypes) {
    const size_t n = sizeof(bytes) / dtype_size(dtype);
    std::vector<float> out(n);
    convert_to_f32(dtype, bytes, n, out.data());
    for (size_t i = 0; i < n; ++i) {
      expect_same_float(out[i], element_to_f32(dtype, bytes, i), static_cast<uint32_t>(i));
    }
  }
  const uint8_t u64_max[8] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
  EXPECT_EQ(element_to_f32(DType::kU64, u64_max, 0), 18446744073709551616.0f);
  EXPECT_EQ(element_to_f32(DType::kI64, u64_max, 0), -1.0f);
}

}  // namespace
}  // namespace lathe
