#include <gtest/gtest.h>

#include "compressor/common/errors.h"

namespace lathe {
namespace {

TEST(Errors, MessageNamesFileAndField) {
  const DataError e("model.safetensors", "model.norm.weight",
                    "shape [4] needs 16 bytes, range holds 10");
  EXPECT_STREQ(e.what(),
               "model.safetensors: model.norm.weight: shape [4] needs 16 bytes, range holds 10");
  EXPECT_EQ(e.kind(), ErrorKind::kData);
  EXPECT_EQ(e.where(), "model.safetensors");
  EXPECT_EQ(e.field(), "model.norm.weight");
}

TEST(Errors, EmptyPartsAreLeftOut) {
  EXPECT_STREQ(ConfigError("", "bits", "must be 2, 3, 4 or 8").what(),
               "bits: must be 2, 3, 4 or 8");
  EXPECT_STREQ(ResourceError("x.json", "", "not found").what(), "x.json: not found");
}

TEST(Errors, EachKindHasItsOwnExitCode) {
  EXPECT_EQ(exit_code(ErrorKind::kConfig), 2);
  EXPECT_EQ(exit_code(ErrorKind::kData), 3);
  EXPECT_EQ(exit_code(ErrorKind::kUnsupported), 4);
  EXPECT_EQ(exit_code(ErrorKind::kResource), 5);
  EXPECT_EQ(exit_code(ErrorKind::kInternal), 70);
  EXPECT_STREQ(kind_name(ErrorKind::kUnsupported), "unsupported");
}

TEST(Errors, ContextKeepsTheKindAndNamesPassAndLayer) {
  try {
    rethrow_with_context(DataError("out/quant/model-00002-of-00005.safetensors",
                                   "model.layers.1.mlp.down_proj.weight", "codes out of range"),
                         "gptq, layer 1");
    FAIL() << "expected a DataError";
  } catch (const DataError& e) {
    EXPECT_STREQ(e.what(),
                 "gptq, layer 1 (out/quant/model-00002-of-00005.safetensors): "
                 "model.layers.1.mlp.down_proj.weight: codes out of range");
    EXPECT_EQ(e.kind(), ErrorKind::kData);
  }
  try {
    rethrow_with_context(ConfigError("", "gptq.group-size", "32 does not divide 48"),
                         "gptq, decide");
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "gptq, decide: gptq.group-size: 32 does not divide 48");
  }
  EXPECT_THROW(rethrow_with_context(InternalError("", "", "bug"), "rtn, layer 0"), InternalError);
  EXPECT_THROW(rethrow_with_context(ResourceError("f", "", "disk full"), "x"), ResourceError);
  EXPECT_THROW(rethrow_with_context(UnsupportedError("f", "", "no"), "x"), UnsupportedError);
}

}  // namespace
}  // namespace lathe
