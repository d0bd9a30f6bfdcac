// parse_safetensors_header against FORMATS.md §1: one test per rejection, each checking the error
// kind and that the field names the tensor or key at fault.
#include <gtest/gtest.h>

#include <string>

#include "compressor/common/errors.h"
#include "compressor/model/safetensors.h"
#include "tests/unit/safetensors_builder.h"

namespace lathe {
namespace {

using testing::Bytes;
using testing::expect_error;
using testing::safetensors_bytes;
using testing::SafetensorsBuilder;

SafetensorsHeader parse(const Bytes& file) {
  return parse_safetensors_header(file.data(), file.size(), "test.safetensors");
}

// Expects `header` + `data_size` zero bytes to be rejected as data with this field and message.
void expect_bad(const std::string& header, size_t data_size, const std::string& field,
                const std::string& message_part) {
  const Bytes file = safetensors_bytes(header, Bytes(data_size, 0));
  const std::string what =
      expect_error([&] { parse(file); }, ErrorKind::kData, field, message_part);
  EXPECT_EQ(what.rfind("test.safetensors: ", 0), 0u) << "the file is named first: " << what;
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

// --- well-formed files ---------------------------------------------------------------------------

TEST(SafetensorsHeader, ParsesTensorsMetadataAndAbsoluteOffsets) {
  const Bytes file = SafetensorsBuilder()
                         .metadata("format", "pt")
                         .add("b.weight", "F32", {2, 2}, Bytes(16, 1))
                         .add("a.bias", "BF16", {3}, Bytes(6, 2))
                         .add("scalar", "I64", {}, Bytes(8, 3))
                         .add("empty", "F16", {0, 4}, {})
                         .build();
  const SafetensorsHeader header = parse(file);
  EXPECT_EQ(header.data_begin, 8 + header.header_bytes);
  EXPECT_EQ(header.data_bytes, 30u);
  EXPECT_EQ(header.data_begin + header.data_bytes, file.size());
  ASSERT_EQ(header.tensors.size(), 4u);
  EXPECT_EQ(header.tensors[0].name, "a.bias");  // sorted by name, not by offset
  EXPECT_EQ(header.tensors[1].name, "b.weight");
  EXPECT_EQ(header.tensors[2].name, "empty");
  EXPECT_EQ(header.tensors[3].name, "scalar");
  const SafetensorsEntry* weight = header.find("b.weight");
  ASSERT_NE(weight, nullptr);
  EXPECT_EQ(weight->dtype, DType::kF32);
  EXPECT_EQ(weight->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(weight->begin, header.data_begin);
  EXPECT_EQ(weight->end, header.data_begin + 16);
  EXPECT_EQ(header.find("a.bias")->begin, header.data_begin + 16);
  EXPECT_EQ(header.find("scalar")->numel(), 1);
  EXPECT_EQ(header.find("scalar")->shape.size(), 0u);
  EXPECT_EQ(header.find("empty")->numel(), 0);
  EXPECT_EQ(header.find("empty")->nbytes(), 0u);
  EXPECT_EQ(header.find("missing"), nullptr);
  EXPECT_EQ(header.metadata.at("format"), "pt");
}

TEST(SafetensorsHeader, EmptyObjectIsAValidFileWithoutTensors) {
  const SafetensorsHeader header = parse(safetensors_bytes("{}", {}, 1));
  EXPECT_TRUE(header.tensors.empty());
  EXPECT_EQ(header.data_bytes, 0u);
}

TEST(SafetensorsHeader, AcceptsTrailingSpacesAndBufferOrderDifferentFromKeyOrder) {
  const std::string header =
      "{" + entry("z", "U8", "[2]", "[0,2]") + "," + entry("a", "U8", "[3]", "[2,5]") + "}     ";
  const SafetensorsHeader parsed = parse(safetensors_bytes(header, Bytes(5, 0), 1));
  EXPECT_EQ(parsed.find("z")->begin, parsed.data_begin);
  EXPECT_EQ(parsed.find("a")->begin, parsed.data_begin + 2);
}

TEST(SafetensorsHeader, EmptyTensorsMayShareAnOffsetWithOthers) {
  const std::string header = "{" + entry("e0", "F32", "[0]", "[0,0]") + "," +
                             entry("x", "F32", "[1]", "[0,4]") + "," +
                             entry("e1", "F32", "[2,0]", "[4,4]") + "}";
  EXPECT_EQ(parse(safetensors_bytes(header, Bytes(4, 0))).tensors.size(), 3u);
}

TEST(SafetensorsHeader, NullMetadataIsEmpty) {
  EXPECT_TRUE(parse(safetensors_bytes("{\"__metadata__\":null}", {})).metadata.empty());
}

TEST(SafetensorsHeader, HugeDimensionTimesZeroIsAnEmptyTensorNotAnOverflow) {
  const std::string header = "{" + entry("e", "F64", "[4294967296,4294967296,0]", "[0,0]") + "}";
  EXPECT_EQ(parse(safetensors_bytes(header, {})).find("e")->numel(), 0);
}

// --- rule 1: lengths
// -------------------------------------------------------------------------------

TEST(SafetensorsHeader, RejectsFileShorterThanEightBytes) {
  const Bytes file = {1, 0, 0};
  expect_error([&] { parse(file); }, ErrorKind::kData, "header length", "has 3 bytes");
}

TEST(SafetensorsHeader, RejectsHeaderLengthBeyondTheFile) {
  Bytes file = safetensors_bytes("{}", {}, 1);
  file[0] = 200;  // claims 200 header bytes; 2 follow
  expect_error([&] { parse(file); }, ErrorKind::kData, "header length",
               "header length 200 runs past the end of the file (2 bytes");
}

TEST(SafetensorsHeader, RejectsHeaderLengthAboveTheLimit) {
  Bytes file = safetensors_bytes("{}", {}, 1);
  const uint64_t n = kMaxSafetensorsHeaderBytes + 1;
  for (int i = 0; i < 8; ++i) file[i] = static_cast<uint8_t>(n >> (8 * i));
  expect_error([&] { parse(file); }, ErrorKind::kData, "header length", "exceeds the limit");
}

TEST(SafetensorsHeader, RejectsHeaderLengthWithHighBitsSet) {
  Bytes file = safetensors_bytes("{}", {}, 1);
  file[7] = 0xFF;  // ~2^63: must not wrap around in any arithmetic
  expect_error([&] { parse(file); }, ErrorKind::kData, "header length", "exceeds the limit");
}

// --- rule 2: the JSON text
// -------------------------------------------------------------------------

TEST(SafetensorsHeader, RejectsHeaderThatIsNotJson) {
  expect_bad("{\"a\": }", 0, "header", "not valid JSON");
  expect_bad("{\"a\": {\"dtype\": \"F32\"", 0, "header", "not valid JSON");  // never closed
}

TEST(SafetensorsHeader, RejectsHeaderThatIsNotAnObject) {
  expect_bad("[1, 2]", 0, "header", "starting with '{', found '['");
  expect_bad(" {}", 0, "header", "starting with '{', found byte 0x20");
  expect_bad("", 0, "header", "an empty header");
}

TEST(SafetensorsHeader, RejectsHeaderThatIsNotUtf8) {
  expect_bad("{\"a\xff\": 1}", 0, "header", "not valid UTF-8: byte 0xff at header offset 3");
  expect_bad("{\"\xc0\xaf\": 1}", 0, "header", "not valid UTF-8");          // overlong '/'
  expect_bad("{\"\xed\xa0\x80\": 1}", 0, "header", "not valid UTF-8");      // UTF-16 surrogate
  expect_bad("{\"\xf4\x90\x80\x80\": 1}", 0, "header", "not valid UTF-8");  // above U+10FFFF
  expect_bad("{\"\xe2\x82", 0, "header", "not valid UTF-8");  // truncated sequence at the end
}

TEST(SafetensorsHeader, AcceptsMultibyteUtf8Names) {
  const std::string header =
      "{" + entry("gewicht.\xc3\xa4\xe2\x82\xac\xf0\x9f\x98\x80", "U8", "[1]", "[0,1]") + "}";
  EXPECT_EQ(parse(safetensors_bytes(header, Bytes(1, 0))).tensors.size(), 1u);
}

TEST(SafetensorsHeader, RejectsDuplicateTensorNames) {
  const std::string header =
      "{" + entry("w", "U8", "[1]", "[0,1]") + "," + entry("w", "U8", "[1]", "[1,2]") + "}";
  expect_bad(header, 2, "w", "duplicate key 'w' in the top-level object");
}

TEST(SafetensorsHeader, RejectsDuplicateKeysInsideAnEntry) {
  const std::string header =
      "{\"w\":{\"dtype\":\"U8\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1]}}";
  expect_bad(header, 1, "dtype", "in the value of 'w'");
}

TEST(SafetensorsHeader, RejectsDuplicateMetadataKeys) {
  expect_bad("{\"__metadata__\":{\"format\":\"pt\",\"format\":\"tf\"}}", 0, "format",
             "in the value of '__metadata__'");
}

TEST(SafetensorsHeader, RejectsTrailingBytesAfterTheObject) {
  expect_bad("{}x", 0, "header", "only spaces may follow the JSON object, found 'x'");
  expect_bad("{}\n", 0, "header", "found byte 0x0a");
  expect_bad("{}  {}", 0, "header", "at header offset 4");
  expect_bad("{}}", 0, "header", "found '}'");
  expect_bad(std::string("{}\0\0", 4), 0, "header", "found byte 0x00");
}

TEST(SafetensorsHeader, BracesInsideStringsDoNotEndTheObject) {
  const std::string header = "{\"__metadata__\":{\"note\":\"} \\\" {\"}}";
  EXPECT_EQ(parse(safetensors_bytes(header, {})).metadata.at("note"), "} \" {");
}

TEST(SafetensorsHeader, RejectsDeepNesting) {
  expect_bad("{\"a\":[[[[[[[[[[1]]]]]]]]]]}", 0, "header", "nests deeper than 8 levels");
}

// --- rule 3: entries
// -------------------------------------------------------------------------------

TEST(SafetensorsHeader, RejectsUnknownDtype) {
  expect_bad("{" + entry("w", "F17", "[1]", "[0,4]") + "}", 4, "w", "unknown dtype 'F17'");
  expect_bad("{" + entry("w", "f32", "[1]", "[0,4]") + "}", 4, "w", "unknown dtype 'f32'");
  expect_bad("{\"w\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "w",
             "dtype must be a string, found 32");
}

TEST(SafetensorsHeader, NewerDtypesAreValidButUnsupported) {
  const Bytes file = safetensors_bytes("{" + entry("w", "F4", "[2]", "[0,1]") + "}", Bytes(1, 0));
  expect_error([&] { parse(file); }, ErrorKind::kUnsupported, "w", "dtype F4");
}

TEST(SafetensorsHeader, RejectsNegativeOrNonIntegerShape) {
  expect_bad("{" + entry("w", "U8", "[-1]", "[0,1]") + "}", 1, "w",
             "shape[0] must be a non-negative integer, found -1");
  expect_bad("{" + entry("w", "U8", "[1, 1.5]", "[0,1]") + "}", 1, "w", "shape[1]");
  expect_bad("{" + entry("w", "U8", "[\"1\"]", "[0,1]") + "}", 1, "w", "shape[0]");
  expect_bad("{" + entry("w", "U8", "[1e0]", "[0,1]") + "}", 1, "w", "shape[0]");
  expect_bad("{" + entry("w", "U8", "[9223372036854775808]", "[0,1]") + "}", 1, "w",
             "shape[0]");  // > int64 max
  expect_bad("{" + entry("w", "U8", "4", "[0,1]") + "}", 1, "w", "shape must be an array");
}

TEST(SafetensorsHeader, RejectsRankAboveEight) {
  expect_bad("{" + entry("w", "U8", "[1,1,1,1,1,1,1,1,1]", "[0,1]") + "}", 1, "w",
             "rank 9; at most 8");
  const std::string rank8 = "{" + entry("w", "U8", "[1,1,1,1,1,1,1,1]", "[0,1]") + "}";
  EXPECT_EQ(parse(safetensors_bytes(rank8, Bytes(1, 0))).find("w")->shape.size(), 8u);
}

TEST(SafetensorsHeader, RejectsOffsetsThatAreNotTwoIntegers) {
  for (const char* offsets :
       {"[0]", "[0,1,1]", "[0,\"1\"]", "[-1,1]", "[0,1.0]", "{}", "[0,18446744073709551616]"}) {
    SCOPED_TRACE(offsets);
    expect_bad("{" + entry("w", "U8", "[1]", offsets) + "}", 1, "w",
               "data_offsets must be two non-negative integers");
  }
}

TEST(SafetensorsHeader, RejectsMalformedEntries) {
  expect_bad("{\"w\":[1]}", 0, "w", "entry must be an object");
  expect_bad("{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "w", "entry has no data_offsets");
  expect_bad("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":1}}", 1, "w",
             "unexpected key 'x'");
}

TEST(SafetensorsHeader, RejectsEmptyTensorName) {
  expect_bad("{" + entry("", "U8", "[1]", "[0,1]") + "}", 1, "tensor name", "empty name");
}

TEST(SafetensorsHeader, RejectsNonStringMetadata) {
  expect_bad("{\"__metadata__\":{\"format\":\"pt\",\"step\":1}}", 0, "__metadata__.step",
             "metadata value of 'step' must be a string, found 1");
  expect_bad("{\"__metadata__\":[\"pt\"]}", 0, "__metadata__", "must be an object of strings");
}

// --- rules 4 and 5: byte counts and bounds -------------------------------------------------------

TEST(SafetensorsHeader, RejectsBeginAfterEnd) {
  expect_bad("{" + entry("w", "U8", "[0]", "[8,4]") + "}", 8, "w",
             "data_offsets [8, 4) end before they begin");
}

TEST(SafetensorsHeader, RejectsEndBeyondTheBuffer) {
  expect_bad("{" + entry("w", "F32", "[4]", "[0,16]") + "}", 8, "w",
             "data_offsets [0, 16) run past the 8-byte data buffer");
  expect_bad("{" + entry("w", "U8", "[0]", "[18446744073709551615,18446744073709551615]") + "}", 8,
             "w", "run past");
}

TEST(SafetensorsHeader, RejectsByteCountThatDisagreesWithShape) {
  expect_bad("{" + entry("model.norm.weight", "F32", "[4]", "[10,20]") + "}", 20,
             "model.norm.weight",
             "data_offsets [10, 20) hold 10 bytes but shape [4] of F32 needs 16");
  expect_bad("{" + entry("w", "BF16", "[3]", "[0,3]") + "}", 3, "w", "of BF16 needs 6");
}

TEST(SafetensorsHeader, RejectsShapeWhoseByteCountOverflows) {
  // 2^32 · 2^32 overflows the element count; 2^62 elements of 4 bytes overflow the bit count.
  expect_bad("{" + entry("w", "F32", "[4294967296,4294967296,2]", "[0,8]") + "}", 8, "w",
             "shape [4294967296, 4294967296, 2] of F32 overflows a 64-bit byte count");
  expect_bad("{" + entry("w", "F32", "[4611686018427387904]", "[0,0]") + "}", 0, "w", "overflows");
  // 2^61 · 8 bits = 2^64 bits wraps to 0: must not be taken for an empty tensor.
  expect_bad("{" + entry("w", "U8", "[2305843009213693952]", "[0,0]") + "}", 0, "w", "overflows");
}

// --- rule 6: tiling
// ---------------------------------------------------------------------------------

TEST(SafetensorsHeader, RejectsOverlappingRanges) {
  const std::string header =
      "{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "F32", "[2]", "[4,12]") + "}";
  expect_bad(header, 12, "b", "data_offsets [4, 12) overlap tensor 'a' at [0, 8)");
}

TEST(SafetensorsHeader, RejectsTwoTensorsOnTheSameBytes) {
  const std::string header =
      "{" + entry("a", "U8", "[4]", "[0,4]") + "," + entry("b", "U8", "[4]", "[0,4]") + "}";
  expect_bad(header, 4, "b", "overlap tensor 'a'");
}

TEST(SafetensorsHeader, RejectsEmptyTensorInsideAnother) {
  const std::string header =
      "{" + entry("a", "U8", "[4]", "[0,4]") + "," + entry("e", "U8", "[0]", "[2,2]") + "}";
  expect_bad(header, 4, "e", "overlap tensor 'a'");
}

TEST(SafetensorsHeader, RejectsGapsBetweenTensors) {
  const std::string header =
      "{" + entry("a", "F32", "[1]", "[0,4]") + "," + entry("b", "F32", "[1]", "[8,12]") + "}";
  expect_bad(header, 12, "b", "gap: bytes [4, 8) of the data buffer belong to no tensor");
  expect_bad("{" + entry("a", "F32", "[1]", "[4,8]") + "}", 8, "a", "gap: bytes [0, 4)");
}

TEST(SafetensorsHeader, RejectsBytesLeftAtTheEndOfTheBuffer) {
  expect_bad("{" + entry("a", "F32", "[1]", "[0,4]") + "}", 12, "data buffer",
             "bytes [4, 12) at the end of the data buffer belong to no tensor (last tensor: 'a')");
  expect_bad("{}", 3, "data buffer", "bytes [0, 3)");
}

}  // namespace
}  // namespace lathe
