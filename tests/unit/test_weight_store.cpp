// WeightStore and the tensor bridge: single files and shards, every dtype, zero-copy vs copy,
// lifetime, the input-is-never-modified rule, and the sharding checks of FORMATS.md §1.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <ATen/core/Tensor.h>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/common/sha256.h"
#include "compressor/model/mapped_file.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_store.h"
#include "tests/unit/safetensors_builder.h"

namespace lathe {
namespace {

using testing::Bytes;
using testing::expect_error;
using testing::le_bytes;
using testing::SafetensorsBuilder;
using testing::TempDir;

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> tensor_values(const at::Tensor& tensor) {
  const at::Tensor f = tensor.to(c10::ScalarType::Float).contiguous();
  return std::vector<float>(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
}

// One tensor per dtype with known values, as the bytes a writer would produce.
struct DTypeCase {
  std::string dtype;
  Bytes bytes;
  std::vector<float> values;
};

std::vector<DTypeCase> dtype_cases() {
  return {
      {"BOOL", {0, 1, 1}, {0, 1, 1}},
      {"U8", {0, 7, 255}, {0, 7, 255}},
      {"I8", le_bytes<int8_t>({-128, -1, 127}), {-128, -1, 127}},
      {"I16", le_bytes<int16_t>({-32768, 2, 300}), {-32768, 2, 300}},
      {"U16", le_bytes<uint16_t>({0, 65535, 258}), {0, 65535, 258}},
      {"F16", le_bytes<uint16_t>({0x3C00, 0x0001, 0xFC00}), {1, std::ldexp(1.0f, -24), -kInf}},
      {"BF16", le_bytes<uint16_t>({0x3F80, 0xC0A0, 0x7F80}), {1, -5, kInf}},
      {"I32", le_bytes<int32_t>({-7, 0, 1 << 30}), {-7, 0, 1 << 30}},
      {"U32", le_bytes<uint32_t>({0, 4000000000u, 3}), {0, 4000000000.0f, 3}},
      {"F32", le_bytes<float>({1.5f, -0.25f, 1e-40f}), {1.5f, -0.25f, 1e-40f}},
      {"F64", le_bytes<double>({0.5, -3.0, 1e300}), {0.5f, -3.0f, kInf}},
      {"I64", le_bytes<int64_t>({-1, 1LL << 40, 5}), {-1, std::ldexp(1.0f, 40), 5}},
      {"U64", le_bytes<uint64_t>({0, 1ULL << 63, 9}), {0, std::ldexp(1.0f, 63), 9}},
      {"F8_E4M3", {0x38, 0x7E, 0x01}, {1, 448, std::ldexp(1.0f, -9)}},
      {"F8_E5M2", {0x3C, 0xC0, 0x7C}, {1, -2, kInf}},
  };
}

TEST(WeightStore, RoundTripsEveryDtype) {
  TempDir dir;
  SafetensorsBuilder builder;
  for (const auto& c : dtype_cases()) builder.add("t." + c.dtype, c.dtype, {3}, c.bytes);
  const std::string path = dir.write("model.safetensors", builder.build());
  const WeightStore store(path);
  ASSERT_EQ(store.size(), dtype_cases().size());
  for (const auto& c : dtype_cases()) {
    SCOPED_TRACE(c.dtype);
    const std::string name = "t." + c.dtype;
    const TensorInfo& info = store.info(name);
    EXPECT_EQ(dtype_name(info.dtype), c.dtype);
    EXPECT_EQ(info.shape, std::vector<int64_t>{3});
    EXPECT_EQ(info.shard_path, path);
    const TensorView view = store.view(name);
    ASSERT_EQ(view.nbytes, c.bytes.size());
    EXPECT_EQ(Bytes(view.data, view.data + view.nbytes), c.bytes);
    EXPECT_EQ(store.to_f32(name), c.values);

    const at::Tensor tensor = load_tensor(store, name);
    EXPECT_EQ(tensor.scalar_type(), to_scalar_type(info.dtype));
    EXPECT_EQ(tensor.sizes().vec(), std::vector<int64_t>{3});
    EXPECT_EQ(std::memcmp(tensor.data_ptr(), c.bytes.data(), c.bytes.size()), 0);
    EXPECT_EQ(tensor_values(tensor), c.values) << "torch's conversion agrees with to_f32";
    EXPECT_EQ(tensor_values(load_tensor(store, name, c10::ScalarType::Float)), c.values);
  }
}

TEST(WeightStore, ZeroCopyWhenAlignedAndCopyWhenMisaligned) {
  TempDir dir;
  const Bytes values = le_bytes<float>({1, 2, 3, 4});
  const auto file = [&](size_t misalign) {
    return SafetensorsBuilder().add("w", "F32", {2, 2}, values).build(misalign);
  };
  const WeightStore aligned(dir.write("aligned.safetensors", file(0)));
  const WeightStore misaligned(dir.write("misaligned.safetensors", file(1)));

  const TensorView aligned_view = aligned.view("w");
  EXPECT_TRUE(aligned_view.aligned);
  const at::Tensor view_tensor = load_tensor(aligned, "w");
  EXPECT_EQ(view_tensor.data_ptr(), static_cast<const void*>(aligned_view.data));
  EXPECT_TRUE(aligned_view.mapping->contains(view_tensor.data_ptr()));

  const TensorView misaligned_view = misaligned.view("w");
  EXPECT_FALSE(misaligned_view.aligned);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(misaligned_view.data) % 4, 1u);
  const at::Tensor copy = load_tensor(misaligned, "w");
  EXPECT_FALSE(misaligned_view.mapping->contains(copy.data_ptr()));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(copy.data_ptr()) % 4, 0u);
  EXPECT_EQ(tensor_values(copy), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(misaligned.to_f32("w"), (std::vector<float>{1, 2, 3, 4}));
}

TEST(WeightStore, ConvertsHalfPrecisionIncludingSubnormalsInfAndNan) {
  TempDir dir;
  const Bytes bf16 = le_bytes<uint16_t>({0x0001, 0x7F80, 0xFF80, 0x7FC1, 0x3F80, 0x8000});
  const Bytes f16 = le_bytes<uint16_t>({0x0001, 0x03FF, 0x7C00, 0xFE00, 0x3555});
  const WeightStore store(dir.write(
      "model.safetensors",
      SafetensorsBuilder().add("b", "BF16", {6}, bf16).add("h", "F16", {5}, f16).build()));
  const std::vector<float> b = store.to_f32("b");
  EXPECT_EQ(b[0], std::ldexp(1.0f, -133));
  EXPECT_EQ(b[1], kInf);
  EXPECT_EQ(b[2], -kInf);
  EXPECT_TRUE(std::isnan(b[3]));
  EXPECT_EQ(b[4], 1.0f);
  EXPECT_TRUE(std::signbit(b[5]) && b[5] == 0.0f);
  const std::vector<float> h = store.to_f32("h");
  EXPECT_EQ(h[0], std::ldexp(1.0f, -24));
  EXPECT_EQ(h[1], std::ldexp(1023.0f, -24));
  EXPECT_EQ(h[2], kInf);
  EXPECT_TRUE(std::isnan(h[3]) && std::signbit(h[3]));
  EXPECT_EQ(h[4], 0.333251953125f);  // 0x3555 = 1365/4096
  EXPECT_EQ(store.count_non_finite("b"), 3u);
  EXPECT_EQ(store.count_non_finite("h"), 2u);
  // torch's BF16 → float agrees element for element (NaN aside).
  const std::vector<float> via_torch = tensor_values(load_tensor(store, "b"));
  EXPECT_EQ(via_torch[0], b[0]);
  EXPECT_EQ(via_torch[2], b[2]);
}

TEST(WeightStore, CountsNonFiniteOnlyInFloatTensors) {
  TempDir dir;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const WeightStore store(
      dir.write("model.safetensors",
                SafetensorsBuilder()
                    .add("f", "F32", {5}, le_bytes<float>({nan, 1, kInf, -kInf, 0}))
                    .add("d", "F64", {3}, le_bytes<double>({1e300, -1e300, std::nan("")}))
                    .add("i", "I32", {2}, le_bytes<int32_t>({-1, 0x7F800000}))
                    .add("e4", "F8_E4M3", {3}, {0x7F, 0x78, 0xFF})
                    .build()));
  EXPECT_EQ(store.count_non_finite("f"), 3u);
  EXPECT_EQ(store.count_non_finite("d"), 1u) << "finite doubles beyond float range are finite";
  EXPECT_EQ(store.count_non_finite("i"), 0u) << "an int holding inf's bit pattern is an int";
  EXPECT_EQ(store.count_non_finite("e4"), 2u);
}

TEST(WeightStore, LargeTensorCountsNonFiniteAcrossChunks) {
  TempDir dir;
  std::vector<uint16_t> halves(10000, 0x3C00);
  halves[4095] = halves[4096] = halves[9999] = 0x7C00;
  Bytes bytes(halves.size() * 2);
  std::memcpy(bytes.data(), halves.data(), bytes.size());
  const WeightStore store(dir.write(
      "model.safetensors", SafetensorsBuilder().add("h", "F16", {100, 100}, bytes).build()));
  EXPECT_EQ(store.count_non_finite("h"), 3u);
}

TEST(WeightStore, EmptyAndScalarTensors) {
  TempDir dir;
  const WeightStore store(
      dir.write("model.safetensors", SafetensorsBuilder()
                                         .add("empty", "BF16", {0, 4}, {})
                                         .add("scalar", "F32", {}, le_bytes<float>({2.5f}))
                                         .add("tail", "F32", {0}, {})
                                         .build()));
  EXPECT_TRUE(store.to_f32("empty").empty());
  EXPECT_EQ(store.count_non_finite("empty"), 0u);
  const at::Tensor empty = load_tensor(store, "empty");
  EXPECT_EQ(empty.sizes().vec(), (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(empty.scalar_type(), c10::ScalarType::BFloat16);
  EXPECT_EQ(load_tensor(store, "tail").numel(), 0);
  const at::Tensor scalar = load_tensor(store, "scalar");
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(tensor_values(scalar), std::vector<float>{2.5f});
  EXPECT_EQ(store.to_f32("scalar"), std::vector<float>{2.5f});
}

TEST(WeightStore, TensorOutlivesItsStore) {
  TempDir dir;
  const std::string path =
      dir.write("model.safetensors",
                SafetensorsBuilder().add("w", "F32", {3}, le_bytes<float>({7, 8, 9})).build());
  at::Tensor tensor;
  const void* mapped_address = nullptr;
  {
    const WeightStore store(path);
    tensor = load_tensor(store, "w");
    mapped_address = store.view("w").data;
  }
  ASSERT_EQ(tensor.data_ptr(), mapped_address) << "the tensor is the zero-copy view";
  EXPECT_EQ(tensor_values(tensor), (std::vector<float>{7, 8, 9}));
  tensor = at::Tensor();  // the last reference: unmaps without crashing
}

TEST(WeightStore, InputFileIsNeverModifiedEvenByAnInPlaceWrite) {
  TempDir dir;
  const Bytes original =
      SafetensorsBuilder().add("w", "F32", {4}, le_bytes<float>({1, 2, 3, 4})).build();
  const std::string path = dir.write("model.safetensors", original);
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  const std::string hash_before = sha256_hex(original.data(), original.size());
  {
    const WeightStore store(path);
    at::Tensor tensor = load_tensor(store, "w");
    ASSERT_TRUE(store.view("w").mapping->contains(tensor.data_ptr()));
    ASSERT_TRUE(store.view("w").mapping->copy_on_write());
    tensor.mul_(10);  // the mistake the copy-on-write mapping is for: no SIGSEGV, file untouched
    EXPECT_EQ(tensor_values(tensor), (std::vector<float>{10, 20, 30, 40}));
    store.to_f32("w");
  }
  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
  EXPECT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
  EXPECT_EQ(after.st_size, before.st_size);
  std::ifstream in(path, std::ios::binary);
  const Bytes now((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(sha256_hex(now.data(), now.size()), hash_before);
  EXPECT_EQ(WeightStore(path).to_f32("w"), (std::vector<float>{1, 2, 3, 4}));
}

TEST(WeightStore, ConvertingLoadReturnsTheViewForTheSameDtypeAndACopyOtherwise) {
  TempDir dir;
  const WeightStore store(dir.write(
      "model.safetensors",
      SafetensorsBuilder().add("w", "BF16", {2}, le_bytes<uint16_t>({0x3F80, 0x4040})).build()));
  const TensorView view = store.view("w");
  const at::Tensor same = load_tensor(store, "w", c10::ScalarType::BFloat16);
  EXPECT_EQ(same.data_ptr(), static_cast<const void*>(view.data));
  const at::Tensor f32 = load_tensor(store, "w", c10::ScalarType::Float);
  EXPECT_EQ(f32.scalar_type(), c10::ScalarType::Float);
  EXPECT_FALSE(view.mapping->contains(f32.data_ptr()));
  EXPECT_EQ(tensor_values(f32), (std::vector<float>{1, 3}));
}

TEST(WeightStore, RejectsBoolBytesOtherThanZeroOrOne) {
  TempDir dir;
  const WeightStore store(dir.write("model.safetensors",
                                    SafetensorsBuilder().add("m", "BOOL", {3}, {0, 2, 1}).build()));
  expect_error([&] { load_tensor(store, "m"); }, ErrorKind::kData, "m",
               "BOOL element 1 holds byte 2");
}

TEST(WeightStore, MissingTensorNameIsADataErrorNamingIt) {
  TempDir dir;
  const WeightStore store(
      dir.write("model.safetensors", SafetensorsBuilder().add("a", "U8", {1}, {1}).build()));
  EXPECT_TRUE(store.contains("a"));
  EXPECT_FALSE(store.contains("b"));
  expect_error([&] { store.info("lm_head.weight"); }, ErrorKind::kData, "lm_head.weight",
               "holds no tensor");
  expect_error([&] { load_tensor(store, "lm_head.weight"); }, ErrorKind::kData, "lm_head.weight",
               "holds no tensor");
}

TEST(WeightStore, OpensADirectoryAFileOrAnIndex) {
  TempDir dir;
  dir.write("model.safetensors", SafetensorsBuilder()
                                     .metadata("format", "pt")
                                     .add("b", "U8", {2}, {1, 2})
                                     .add("a", "U8", {1}, {3})
                                     .build());
  const WeightStore from_dir(dir.path());
  EXPECT_EQ(from_dir.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(from_dir.total_bytes(), 3u);
  EXPECT_FALSE(from_dir.sharded());
  EXPECT_EQ(from_dir.metadata().at("format"), "pt");
  EXPECT_EQ(from_dir.shard_paths(), std::vector<std::string>{dir.file("model.safetensors")});
  const WeightStore from_file(dir.file("model.safetensors"));
  EXPECT_EQ(from_file.names(), from_dir.names());
}

TEST(WeightStore, RejectsMissingPathsAndEmptyDirectories) {
  TempDir dir;
  expect_error([&] { WeightStore store(dir.file("nope")); }, ErrorKind::kResource, "",
               "no such file");
  expect_error([&] { WeightStore store(dir.path()); }, ErrorKind::kResource, "",
               "neither model.safetensors nor model.safetensors.index.json");
}

TEST(WeightStore, MalformedFileNamesTheFileAndTensor) {
  TempDir dir;
  const std::string path = dir.write(
      "model.safetensors",
      testing::safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,8]}}",
                                 Bytes(8, 0)));
  const std::string what =
      expect_error([&] { WeightStore store(dir.path()); }, ErrorKind::kData, "w", "needs 16");
  EXPECT_NE(what.find(path), std::string::npos) << what;
}

// --- sharded checkpoints -------------------------------------------------------------------------

// Two shards: a, b in shard 1; c in shard 2.
struct ShardedModel {
  TempDir dir;
  std::string shard1 = "model-00001-of-00002.safetensors";
  std::string shard2 = "model-00002-of-00002.safetensors";

  ShardedModel() {
    dir.write(shard1, SafetensorsBuilder()
                          .metadata("format", "pt")
                          .add("a", "F32", {1}, le_bytes<float>({1}))
                          .add("b", "F32", {2}, le_bytes<float>({2, 3}))
                          .build());
    dir.write(shard2,
              SafetensorsBuilder().add("c", "BF16", {1}, le_bytes<uint16_t>({0x4080})).build());
  }
  nlohmann::json index() const {
    return {{"metadata", {{"total_size", 14}}},
            {"weight_map", {{"a", shard1}, {"b", shard1}, {"c", shard2}}}};
  }
  void write_index(const nlohmann::json& index) const {
    dir.write("model.safetensors.index.json", index.dump(2));
  }
};

TEST(WeightStoreSharded, OpensEveryShardThroughTheIndex) {
  ShardedModel model;
  model.write_index(model.index());
  const WeightStore store(model.dir.path());
  EXPECT_TRUE(store.sharded());
  EXPECT_EQ(store.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(store.shard_paths(),
            (std::vector<std::string>{model.dir.file(model.shard1), model.dir.file(model.shard2)}));
  EXPECT_EQ(store.info("c").shard_path, model.dir.file(model.shard2));
  EXPECT_EQ(store.total_bytes(), 14u);
  EXPECT_EQ(store.index_total_size(), std::optional<uint64_t>(14));
  EXPECT_EQ(store.metadata().at("format"), "pt");
  EXPECT_EQ(store.to_f32("b"), (std::vector<float>{2, 3}));
  EXPECT_EQ(store.to_f32("c"), std::vector<float>{4});
  const WeightStore via_index(model.dir.file("model.safetensors.index.json"));
  EXPECT_EQ(via_index.names(), store.names());
}

TEST(WeightStoreSharded, RejectsAMissingShardFile) {
  ShardedModel model;
  std::filesystem::remove(model.dir.file(model.shard2));
  model.write_index(model.index());
  const std::string what = expect_error([&] { WeightStore store(model.dir.path()); },
                                        ErrorKind::kResource, model.shard2, "does not exist");
  EXPECT_NE(what.find("'c'"), std::string::npos) << what;
}

TEST(WeightStoreSharded, RejectsATensorStoredInTwoShards) {
  ShardedModel model;
  model.dir.write(model.shard2, SafetensorsBuilder()
                                    .add("b", "F32", {2}, le_bytes<float>({2, 3}))
                                    .add("c", "BF16", {1}, le_bytes<uint16_t>({0x4080}))
                                    .build());
  const std::string message =
      "tensor is stored twice: in shard '" + model.shard1 + "' and in shard '" + model.shard2 + "'";
  model.write_index(model.index());
  expect_error([&] { WeightStore store(model.dir.path()); }, ErrorKind::kData, "b", message);
  // Whichever shard the map names, the duplicate is what gets reported.
  nlohmann::json index = model.index();
  index["weight_map"]["b"] = model.shard2;
  model.write_index(index);
  expect_error([&] { WeightStore store(model.dir.path()); }, ErrorKind::kData, "b", message);
}

TEST(WeightStoreSharded, RejectsAMapEntryWhoseShardLacksTheTensor) {
  ShardedModel model;
  nlohmann::json index = model.index();
  index["weight_map"]["ghost"] = model.shard2;
  model.write_index(index);
  expect_error(
      [&] { WeightStore store(model.dir.path()); }, ErrorKind::kData, "ghost",
      "weight_map puts the tensor in shard '" + model.shard2 + "', which does not hold it");
}

TEST(WeightStoreSharded, RejectsATensorInAShardButNotInTheMap) {
  ShardedModel model;
  nlohmann::json index = model.index();
  index["weight_map"].erase("b");
  model.write_index(index);
  expect_error([&] { WeightStore store(model.dir.path()); }, ErrorKind::kData, "b",
               "but not in the weight_map");
}

TEST(WeightStoreSharded, RejectsAMapThatPutsATensorInTheWrongShard) {
  ShardedModel model;
  nlohmann::json index = model.index();
  index["weight_map"]["b"] = model.shard2;
  model.write_index(index);
  expect_error([&] { WeightStore store(model.dir.path()); }, ErrorKind::kData, "b",
               "the weight_map puts it in '" + model.shard2 + "'");
}

TEST(WeightStoreSharded, RejectsShardNamesThatLeaveTheDirectory) {
  for (const std::string bad : {"../model.safetensors", "sub/model.safetensors", "..",
                                "/etc/passwd", "a\\b.safetensors", ""}) {
    SCOPED_TRACE(bad);
    ShardedModel model;
    nlohmann::json index = model.index();
    index["weight_map"]["c"] = bad;
    model.write_index(index);
    expect_error([&] { WeightStore store(model.dir.path()); }, ErrorKind::kData, "c",
                 "shard name '" + bad + "' must be a plain file name");
  }
}

TEST(WeightStoreSharded, RejectsAnIndexThatIsNotJson) {
  ShardedModel model;
  model.dir.write("model.safetensors.index.json", std::string("{\"weight_map\": {"));
  expect_error([&] { WeightStore store(model.dir.path()); }, ErrorKind::kData, "index",
               "not valid JSON");
}

TEST(WeightStoreSharded, RejectsDuplicateKeysInTheWeightMap) {
  ShardedModel model;
  model.dir.write("model.safetensors.index.json", "{\"weight_map\": {\"a\": \"" + model.shard1 +
                                                      "\", \"a\": \"" + model.shard2 + "\"}}");
  expect_error([&] { WeightStore store(model.dir.path()); }, ErrorKind::kData, "a",
               "duplicate key 'a' in the value of 'weight_map'");
}

TEST(WeightStoreSharded, RejectsAnIndexWithoutAWeightMap) {
  ShardedModel model;
  model.write_index({{"metadata", {{"total_size", 14}}}});
  expect_error([&] { WeightStore store(model.dir.path()); }, ErrorKind::kData, "weight_map",
               "needs a weight_map object");
  model.write_index({{"weight_map", {{"a", 3}}}});
  expect_error([&] { WeightStore store(model.dir.path()); }, ErrorKind::kData, "a",
               "must be a shard file name, found 3");
}

TEST(WeightStoreSharded, AMalformedShardIsNamed) {
  ShardedModel model;
  model.dir.write(model.shard2, Bytes{1, 2, 3});
  model.write_index(model.index());
  const std::string what = expect_error([&] { WeightStore store(model.dir.path()); },
                                        ErrorKind::kData, "header length", "has 3 bytes");
  EXPECT_NE(what.find(model.shard2), std::string::npos) << what;
}

// --- the CLI -------------------------------------------------------------------------------------

// Runs `lathe <args>`, returns {exit status, stdout}.
std::pair<int, std::string> run_lathe(const std::string& args) {
  const std::string command = std::string(LATHE_BINARY) + " " + args + " 2>/dev/null";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return {-1, ""};
  std::string out;
  char buffer[4096];
  for (size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) out.append(buffer, n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(TensorsCommand, ListsTensorsWithChecksumsAsJson) {
  ShardedModel model;
  model.write_index(model.index());
  const auto [status, out] = run_lathe("tensors " + model.dir.path() + " --json --sha256");
  ASSERT_EQ(status, 0) << out;
  const nlohmann::json listing = nlohmann::json::parse(out);
  EXPECT_EQ(listing["sharded"], true);
  EXPECT_EQ(listing["total_bytes"], 14);
  EXPECT_EQ(listing["sha256_of"], "raw");
  ASSERT_EQ(listing["tensors"].size(), 3u);
  const nlohmann::json& b = listing["tensors"][1];
  EXPECT_EQ(b["name"], "b");
  EXPECT_EQ(b["dtype"], "F32");
  EXPECT_EQ(b["shape"], nlohmann::json::array({2}));
  EXPECT_EQ(b["shard"], model.shard1);
  EXPECT_EQ(b["bytes"], 8);
  const Bytes b_bytes = le_bytes<float>({2, 3});
  EXPECT_EQ(b["sha256"], sha256_hex(b_bytes.data(), b_bytes.size()));

  const auto [f32_status, f32_out] =
      run_lathe("tensors " + model.dir.path() + " --json --sha256 --as f32");
  ASSERT_EQ(f32_status, 0);
  const nlohmann::json c = nlohmann::json::parse(f32_out)["tensors"][2];
  const Bytes four = le_bytes<float>({4});  // BF16 0x4080 is 4.0
  EXPECT_EQ(c["sha256"], sha256_hex(four.data(), four.size()));
}

TEST(TensorsCommand, ExitCodesFollowTheErrorKind) {
  TempDir dir;
  dir.write("model.safetensors", Bytes{1, 2, 3});
  EXPECT_EQ(run_lathe("tensors " + dir.path()).first, 3) << "malformed file: data error";
  EXPECT_EQ(run_lathe("tensors " + dir.file("missing")).first, 5) << "missing: resource error";
  EXPECT_EQ(run_lathe("tensors " + dir.path() + " --as f32").first, 2) << "--as needs --sha256";
  EXPECT_EQ(run_lathe("tensors " + dir.path() + " --sha256 --as f64").first, 2);
}

TEST(TensorsCommand, PrintsAnAlignedTable) {
  TempDir dir;
  dir.write("model.safetensors",
            SafetensorsBuilder().add("w", "BF16", {2, 3}, Bytes(12, 0)).build());
  const auto [status, out] = run_lathe("tensors " + dir.path());
  ASSERT_EQ(status, 0);
  EXPECT_NE(out.find("w     BF16     [2, 3]  model.safetensors  12"), std::string::npos) << out;
  EXPECT_NE(out.find("1 tensors, 12 bytes in 1 file(s)"), std::string::npos) << out;
}

}  // namespace
}  // namespace lathe
