// Fingerprints (FORMATS.md §7): known answers computed from the documented byte encoding, and the
// properties callers rely on: sharding-independence, sensitivity to one byte, one value or one
// option, insensitivity to key order and whitespace.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "compressor/common/errors.h"
#include "compressor/common/sha256.h"
#include "compressor/model/fingerprint.h"
#include "compressor/model/weight_store.h"
#include "tests/unit/safetensors_builder.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::Bytes;
using testing::expect_error;
using testing::le_bytes;
using testing::SafetensorsBuilder;
using testing::TempDir;

const fs::path kModels = fs::path(LATHE_SOURCE_DIR) / "data/models";

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

Sha256::Digest digest_of(const void* data, size_t size) {
  Sha256 sha;
  sha.update(data, size);
  return sha.finish();
}

// The documented per-tensor record: name 0x00 dtype 0x00 shape 0x00 SHA-256(bytes).
void add_record(Sha256& sha, const std::string& name, const std::string& dtype,
                const std::string& shape, const void* data, size_t size) {
  const std::string head = name + '\0' + dtype + '\0' + shape + '\0';
  sha.update(head);
  const Sha256::Digest digest = digest_of(data, size);
  sha.update(digest.data(), digest.size());
}

std::string prefixed(Sha256& sha) {
  return "sha256:" + sha.finish_hex();
}

const Bytes kBf16 = le_bytes<uint16_t>({0x3F80, 0xC000, 0x0000});
const Bytes kF32 = le_bytes<float>({1.0f, -2.0f, 0.5f, 3.25f});
const Bytes kI64 = le_bytes<int64_t>({7});

// Four tensors added out of order: a matrix, a vector, a scalar and an empty tensor.
Bytes hand_built_model() {
  return SafetensorsBuilder()
      .add("layers.1.w", "F32", {2, 2}, kF32)
      .add("layers.0.w", "BF16", {3}, kBf16)
      .add("count", "I64", {}, kI64)
      .add("empty", "F16", {0, 4}, {})
      .metadata("format", "pt")
      .build();
}

TEST(WeightsFingerprint, KnownAnswerFromTheDocumentedEncoding) {
  TempDir dir;
  const WeightStore store(dir.write("model.safetensors", hand_built_model()));
  Sha256 expected;
  add_record(expected, "count", "I64", "", kI64.data(), kI64.size());
  add_record(expected, "empty", "F16", "0,4", nullptr, 0);
  add_record(expected, "layers.0.w", "BF16", "3", kBf16.data(), kBf16.size());
  add_record(expected, "layers.1.w", "F32", "2,2", kF32.data(), kF32.size());
  const std::string fingerprint = weights_fingerprint(store);
  EXPECT_EQ(fingerprint, prefixed(expected));
  // The same value from Python's hashlib over the same encoding, pinned so that a change of the
  // encoding (which would orphan every stored statistic) cannot go unnoticed.
  EXPECT_EQ(fingerprint, "sha256:f72e8941039cac547adb62d14f37176ed72f44faf14ddaca1a60d696f5a4359c");
  EXPECT_TRUE(is_fingerprint(fingerprint));
}

TEST(WeightsFingerprint, IgnoresMetadataAndTheOrderOfTensorsInTheFile) {
  TempDir dir;
  const Bytes reordered = SafetensorsBuilder()
                              .add("empty", "F16", {0, 4}, {})
                              .add("count", "I64", {}, kI64)
                              .add("layers.0.w", "BF16", {3}, kBf16)
                              .add("layers.1.w", "F32", {2, 2}, kF32)
                              .metadata("producer", "something else")
                              .build(4);
  const WeightStore a(dir.write("a.safetensors", hand_built_model()));
  const WeightStore b(dir.write("b.safetensors", reordered));
  EXPECT_EQ(weights_fingerprint(a), weights_fingerprint(b));
}

TEST(WeightsFingerprint, DtypeShapeAndNameArePartOfIt) {
  TempDir dir;
  const Bytes bytes = le_bytes<float>({1, 2, 3, 4});
  const auto fingerprint = [&](const std::string& name, const std::string& dtype,
                               const std::vector<int64_t>& shape) {
    const std::string file = dir.write(name + dtype + std::to_string(shape.size()) + ".safetensors",
                                       SafetensorsBuilder().add(name, dtype, shape, bytes).build());
    return weights_fingerprint(WeightStore(file));
  };
  const std::string base = fingerprint("w", "F32", {2, 2});
  EXPECT_NE(base, fingerprint("w", "F32", {4}));
  EXPECT_NE(base, fingerprint("w", "I32", {2, 2}));
  EXPECT_NE(base, fingerprint("v", "F32", {2, 2}));
  EXPECT_EQ(base, fingerprint("w", "F32", {2, 2}));
}

TEST(WeightsFingerprint, SingleFileAndShardedCheckpointsAgree) {
  const fs::path single = kModels / "llama";
  const fs::path sharded = kModels / "llama-sharded";
  if (!fs::exists(single) || !fs::exists(sharded)) GTEST_SKIP() << "data/models not built";
  const WeightStore a(single.string());
  const WeightStore b(sharded.string());
  ASSERT_FALSE(a.sharded());
  ASSERT_TRUE(b.sharded());
  ASSERT_GT(b.shard_paths().size(), 1u);
  EXPECT_EQ(weights_fingerprint(a), weights_fingerprint(b));
  // A different model gives a different value (the fingerprint is not constant).
  const fs::path other = kModels / "qwen2";
  if (fs::exists(other)) {
    EXPECT_NE(weights_fingerprint(WeightStore(other.string())), weights_fingerprint(a));
  }
}

// Recomputes the llama fingerprint from the file alone (header JSON + raw bytes), without
// WeightStore, so a bug shared by WeightStore and the fingerprint cannot hide.
TEST(WeightsFingerprint, MatchesAnIndependentReadingOfARealCheckpoint) {
  const fs::path file = kModels / "llama/model.safetensors";
  if (!fs::exists(file)) GTEST_SKIP() << "data/models not built";
  const std::string bytes = read_file(file);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  const json header = json::parse(bytes.substr(8, header_size));
  const size_t data_start = 8 + header_size;
  Sha256 expected;
  for (const auto& [name, entry] : header.items()) {  // nlohmann iterates keys in sorted order
    if (name == "__metadata__") continue;
    std::string shape;
    for (const auto& dim : entry["shape"]) shape += (shape.empty() ? "" : ",") + dim.dump();
    const uint64_t begin = entry["data_offsets"][0], end = entry["data_offsets"][1];
    add_record(expected, name, entry["dtype"], shape, bytes.data() + data_start + begin,
               end - begin);
  }
  EXPECT_EQ(weights_fingerprint(WeightStore(file.string())), prefixed(expected));
}

TEST(WeightsFingerprint, OneChangedByteOfOneTensorChangesItAndOnlyThatTensorsPart) {
  const fs::path source = kModels / "llama/model.safetensors";
  if (!fs::exists(source)) GTEST_SKIP() << "data/models not built";
  TempDir dir;
  const std::string copy = dir.file("model.safetensors");
  fs::copy_file(source, copy);
  const WeightStore original(copy);
  const std::string before = weights_fingerprint(original);

  // Flip the lowest bit of the middle byte of one tensor.
  const std::string changed = "model.layers.2.mlp.up_proj.weight";
  const TensorInfo& info = original.info(changed);
  std::vector<std::string> others;
  for (const auto& name : original.names()) {
    if (name != changed) others.push_back(name);
  }
  const std::string others_before = tensor_fingerprint(original, others);
  const std::string changed_before = tensor_fingerprint(original, {changed});
  std::string bytes = read_file(copy);
  bytes[info.begin + info.nbytes() / 2] ^= 1;
  const std::string mutated = dir.write("mutated.safetensors", Bytes(bytes.begin(), bytes.end()));

  const WeightStore after(mutated);
  EXPECT_NE(weights_fingerprint(after), before);
  EXPECT_NE(tensor_fingerprint(after, {changed}), changed_before);
  EXPECT_EQ(tensor_fingerprint(after, others), others_before);
}

TEST(TensorFingerprint, IsASetFunctionOfNamesAndCoversWeightsFingerprint) {
  TempDir dir;
  const WeightStore store(dir.write("model.safetensors", hand_built_model()));
  EXPECT_EQ(tensor_fingerprint(store, store.names()), weights_fingerprint(store));
  EXPECT_EQ(tensor_fingerprint(store, {"layers.1.w", "count", "layers.1.w"}),
            tensor_fingerprint(store, {"count", "layers.1.w"}));
  EXPECT_NE(tensor_fingerprint(store, {"count"}), tensor_fingerprint(store, {"count", "empty"}));

  Sha256 expected;
  add_record(expected, "layers.0.w", "BF16", "3", kBf16.data(), kBf16.size());
  EXPECT_EQ(tensor_fingerprint(store, {"layers.0.w"}), prefixed(expected));
  EXPECT_EQ(tensor_fingerprint(store, {}),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(TensorFingerprint, AMissingNameIsADataErrorNamingIt) {
  TempDir dir;
  const WeightStore store(dir.write("model.safetensors", hand_built_model()));
  expect_error(
      [&] {
        tensor_fingerprint(store, {"count", "layers.9.w"});
      },
      ErrorKind::kData, "layers.9.w", "");
}

TEST(ConfigFingerprint, IsTheSha256OfSortedKeysWithoutWhitespace) {
  const json config =
      json::parse(R"( { "b": 1, "a": [1.5, "x", null, true], "c": {"z": 0, "y": -2} } )");
  const std::string canonical = R"({"a":[1.5,"x",null,true],"b":1,"c":{"y":-2,"z":0}})";
  EXPECT_EQ(config_fingerprint(config), "sha256:" + sha256_hex(canonical.data(), canonical.size()));
}

TEST(ConfigFingerprint, KeyOrderAndWhitespaceDoNotMatterButOneValueDoes) {
  const fs::path file = kModels / "llama/config.json";
  if (!fs::exists(file)) GTEST_SKIP() << "data/models not built";
  const json config = json::parse(read_file(file));
  // The same object written with reversed key order and indentation.
  nlohmann::ordered_json reversed;
  for (auto it = config.rbegin(); it != config.rend(); ++it) reversed[it.key()] = *it;
  const std::string rewritten = reversed.dump(4);
  ASSERT_NE(rewritten, read_file(file));
  ASSERT_LT(rewritten.find("\"vocab_size\""), rewritten.find("\"architectures\""));
  EXPECT_EQ(config_fingerprint(json::parse(rewritten)), config_fingerprint(config));

  json changed = config;
  changed["rms_norm_eps"] = 1e-5;
  EXPECT_NE(config_fingerprint(changed), config_fingerprint(config));
  changed = config;
  changed["rope_parameters"]["rope_theta"] = 10001.0;
  EXPECT_NE(config_fingerprint(changed), config_fingerprint(config));
}

TEST(FileFingerprint, HashesTheContentInPieces) {
  TempDir dir;
  std::string text(3 * (1 << 20) + 17, '\0');
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>(i * 131 % 251);
  const std::string path = dir.write("big.bin", text);
  EXPECT_EQ(file_fingerprint(path), "sha256:" + sha256_hex(text.data(), text.size()));
  EXPECT_EQ(file_fingerprint(dir.write("empty.bin", std::string())),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  expect_error([&] { file_fingerprint(dir.file("missing.json")); }, ErrorKind::kResource, "",
               "cannot open");
}

// The documented Fingerprinter encoding: length-prefixed fields (u64 little-endian) and a type
// byte per part.
std::string field(const std::string& bytes) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>(static_cast<uint64_t>(bytes.size()) >> (8 * i));
  return out + bytes;
}

TEST(Fingerprinter, KnownAnswerFromTheDocumentedEncoding) {
  const uint32_t ids[] = {1, 258};
  const std::string fingerprint = Fingerprinter("lathe.test/1")
                                      .add("task", "prose")
                                      .add("samples", int64_t{-12})
                                      .add_json("options", json::parse(R"({"b":2,"a":1})"))
                                      .add_bytes("ids", ids, sizeof(ids))
                                      .finish();
  const std::string message = field("lathe.test/1") + field("task") + "s" + field("prose") +
                              field("samples") + "i" + field("-12") + field("options") + "j" +
                              field(R"({"a":1,"b":2})") + field("ids") + "b" +
                              field(std::string("\x01\0\0\0\x02\x01\0\0", 8));
  EXPECT_EQ(fingerprint, "sha256:" + sha256_hex(message.data(), message.size()));
}

TEST(Fingerprinter, PartsAreUnambiguous) {
  const std::string base = Fingerprinter("p").add("n", int64_t{5}).finish();
  EXPECT_EQ(base, Fingerprinter("p").add("n", int64_t{5}).finish());
  EXPECT_NE(base, Fingerprinter("p").add("n", "5").finish());  // integer vs text
  EXPECT_NE(base, Fingerprinter("p").add("n", int64_t{6}).finish());
  EXPECT_NE(base, Fingerprinter("q").add("n", int64_t{5}).finish());  // purpose
  EXPECT_NE(Fingerprinter("p").add("ab", "c").finish(), Fingerprinter("p").add("a", "bc").finish());
  EXPECT_NE(Fingerprinter("p").add("a", "x").add("b", "y").finish(),
            Fingerprinter("p").add("b", "y").add("a", "x").finish());
  EXPECT_EQ(Fingerprinter("p").add_json("o", json::parse(R"({"x":1,"y":[2]})")).finish(),
            Fingerprinter("p").add_json("o", json::parse(R"({ "y": [2], "x": 1 })")).finish());
}

TEST(Fingerprint, IsFingerprintChecksPrefixLengthAndLowerCaseHex) {
  const std::string hex(64, 'a');
  EXPECT_TRUE(is_fingerprint("sha256:" + hex));
  EXPECT_FALSE(is_fingerprint("sha256:" + hex.substr(1)));
  EXPECT_FALSE(is_fingerprint("sha256:" + std::string(64, 'A')));
  EXPECT_FALSE(is_fingerprint("sha512:" + hex));
  EXPECT_FALSE(is_fingerprint(hex));
  EXPECT_FALSE(is_fingerprint(""));
}

}  // namespace
}  // namespace lathe
