// StatsStore: exact round trips of every stored dtype with their attributes, refusal of stale
// entries naming the input that changed, atomic commits (killed writers, temporary files), and
// rejection of files that are not complete lathe stores.
#include <H5Cpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "calibrate/stats_store.h"
#include "compressor/common/errors.h"
#include "compressor/common/sha256.h"
#include "compressor/model/fingerprint.h"
#include "tests/unit/safetensors_builder.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;
using testing::TempDir;

StatsFingerprints fingerprints(int64_t weights, int64_t calibration, int64_t options) {
  return {Fingerprinter("test.weights").add("v", weights).finish(),
          Fingerprinter("test.calibration").add("v", calibration).finish(),
          Fingerprinter("test.options").add("v", options).finish()};
}

const StatsFingerprints kInputs = fingerprints(1, 1, 1);

// A tensor holding exactly `bytes` (little-endian element bit patterns).
template <typename T>
at::Tensor from_bits(std::vector<T> bits, at::IntArrayRef shape, c10::ScalarType dtype) {
  return at::from_blob(bits.data(), shape, at::TensorOptions().dtype(dtype)).clone();
}

// Same dtype, shape and bytes (so NaN payloads and -0.0 count).
void expect_identical(const at::Tensor& actual, const at::Tensor& expected) {
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type());
  ASSERT_EQ(actual.sizes(), expected.sizes());
  ASSERT_TRUE(actual.is_contiguous());
  if (actual.nbytes() == 0) return;
  EXPECT_EQ(std::memcmp(actual.data_ptr(), expected.contiguous().data_ptr(), actual.nbytes()), 0);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// open() must refuse `path` with a DataError naming it; the reason depends on how much of the
// file the killed writer got to flush (not HDF5 yet, truncated, or complete = 0).
void expect_refused(const std::string& path) {
  try {
    StatsStore::open(path);
    ADD_FAILURE() << "opened an unfinished store " << path;
  } catch (const DataError& e) {
    EXPECT_EQ(e.where(), path) << e.what();
  }
}

std::vector<std::string> directory_listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

struct Case {
  StatsKey key;
  at::Tensor value;
  std::string dtype;
  int64_t tokens;
};

std::vector<Case> every_dtype() {
  const float nan_payload = [] {
    const uint32_t bits = 0x7FC00123u;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }();
  const float inf = std::numeric_limits<float>::infinity();
  return {
      {{"channel_abs_max", 0, "mlp.in", "prose"},
       from_bits<float>(
           {1.5f, -0.0f, inf, -inf, nan_payload, 1e-40f, std::numeric_limits<float>::max(), 3.0f},
           {2, 4}, at::kFloat),
       "F32",
       4096},
      {{"router_mass", 3, "router.logits", "code"},
       from_bits<double>({1.0 / 3, -1e300, 5e-324}, {3}, at::kDouble),
       "F64",
       2048},
      {{"tokens_per_expert", StatsKey::kAllLayers, "router.logits", "all"},
       from_bits<int64_t>({std::numeric_limits<int64_t>::min(), -1, 0, 1, 1LL << 40,
                           std::numeric_limits<int64_t>::max()},
                          {2, 3}, at::kLong),
       "I64",
       6144},
      {{"selection_count", 12, "router.logits", "prose"},
       from_bits<int64_t>({42}, {}, at::kLong),
       "I64",
       1},
      {{"top_k_histogram", 1, "router.logits", "prose"},
       from_bits<int32_t>({-7, 0, 1 << 30, 5, 9}, {5}, at::kInt),
       "I32",
       10},
      {{"atopk_markers", 2, "expert[5].act", "prose"},
       from_bits<uint8_t>({0, 1, 127, 128, 200, 255, 3, 4}, {2, 2, 2}, at::kByte),
       "U8",
       7},
      {{"neuron_active", 2, "expert[5].act", "code"},
       from_bits<uint8_t>({1, 0, 1, 1, 0}, {5}, at::kBool),
       "BOOL",
       0},
      {{"block_input", 0, "layer.out", "prose"},
       from_bits<uint16_t>({0x3C00, 0x0001, 0x7C00, 0xFBFF}, {4}, at::kHalf),
       "F16",
       4},
      {{"block_input", 0, "attn.in", "prose"},
       from_bits<uint16_t>({0x3F80, 0xC0A0, 0x0001}, {1, 3}, at::kBFloat16),
       "BF16",
       3},
      {{"hessian", 1, "mlp.in", "empty"}, at::zeros({0, 3}, at::kFloat), "F32", 0},
  };
}

TEST(StatsStore, RoundTripsEveryDtypeWithItsAttributes) {
  TempDir dir;
  const std::string path = dir.file("stats.h5");
  const std::vector<Case> cases = every_dtype();
  {
    StatsStore store = StatsStore::create(path);
    for (const Case& c : cases) store.put(c.key, c.value, kInputs, c.tokens);
    // Readable before commit too, from the temporary file.
    expect_identical(store.get(cases[0].key, kInputs), cases[0].value);
    store.commit();
    EXPECT_FALSE(store.writable());
    expect_identical(store.get(cases[1].key, kInputs), cases[1].value);
  }
  const StatsStore store = StatsStore::open(path);
  std::vector<StatsKey> expected_keys;
  for (const Case& c : cases) {
    SCOPED_TRACE(to_string(c.key));
    expected_keys.push_back(c.key);
    expect_identical(store.get(c.key, kInputs), c.value);
    const StatsInfo info = store.info(c.key);
    EXPECT_EQ(info.dtype, c.dtype);
    EXPECT_EQ(info.shape, c.value.sizes().vec());
    EXPECT_EQ(info.tokens, c.tokens);
    EXPECT_EQ(info.fingerprints.weights, kInputs.weights);
    EXPECT_EQ(info.fingerprints.calibration, kInputs.calibration);
    EXPECT_EQ(info.fingerprints.options, kInputs.options);
    EXPECT_EQ(info.lathe_version, LATHE_VERSION);
    EXPECT_TRUE(store.contains(c.key));
    EXPECT_TRUE(store.is_current(c.key, kInputs));
  }
  std::sort(expected_keys.begin(), expected_keys.end());
  EXPECT_EQ(store.keys(), expected_keys);
}

TEST(StatsStore, UsesTheDocumentedHdf5Layout) {
  TempDir dir;
  const std::string path = dir.file("stats.h5");
  StatsStore store = StatsStore::create(path);
  store.put({"router_mass", 3, "router.logits", "code"}, at::ones({4}, at::kDouble), kInputs, 9);
  store.put({"tokens", StatsKey::kAllLayers, "router", "all"}, at::ones({2}, at::kLong), kInputs,
            9);
  store.commit();
  EXPECT_EQ(to_string({"router_mass", 3, "router.logits", "code"}),
            "router_mass/layer_3/router.logits/code");

  H5::H5File file(path, H5F_ACC_RDONLY);
  const H5::DataSet dataset = file.openDataSet("/router_mass/layer_3/router.logits/code");
  EXPECT_EQ(dataset.getTypeClass(), H5T_FLOAT);
  EXPECT_TRUE(file.nameExists("/tokens/all_layers/router/all"));
  uint8_t complete = 0;
  file.openGroup("/").openAttribute("complete").read(H5::PredType::NATIVE_UINT8, &complete);
  EXPECT_EQ(complete, 1);
  int64_t tokens = 0;
  dataset.openAttribute("tokens").read(H5::PredType::NATIVE_INT64, &tokens);
  EXPECT_EQ(tokens, 9);
  std::string weights;
  const H5::Attribute attribute = dataset.openAttribute("weights_fingerprint");
  attribute.read(attribute.getStrType(), weights);
  EXPECT_EQ(weights, kInputs.weights);
}

// The 16-bit float types describe their bit layouts to HDF5 itself: a reader converting to
// float32 through HDF5 (as h5py does) gets the right values.
TEST(StatsStore, HalfPrecisionTypesConvertCorrectlyInsideHdf5) {
  TempDir dir;
  const std::string path = dir.file("stats.h5");
  const at::Tensor f16 = from_bits<uint16_t>({0x3C00, 0x0001, 0xC500, 0x7BFF}, {4}, at::kHalf);
  const at::Tensor bf16 = from_bits<uint16_t>({0x3F80, 0xC0A0, 0x4049, 0x0080}, {4}, at::kBFloat16);
  StatsStore store = StatsStore::create(path);
  store.put({"x", 0, "t", "f16"}, f16, kInputs, 1);
  store.put({"x", 0, "t", "bf16"}, bf16, kInputs, 1);
  store.commit();

  H5::H5File file(path, H5F_ACC_RDONLY);
  for (const auto& [name, tensor] : {std::pair{"f16", f16}, std::pair{"bf16", bf16}}) {
    SCOPED_TRACE(name);
    std::vector<float> values(4);
    file.openDataSet(std::string("/x/layer_0/t/") + name)
        .read(values.data(), H5::PredType::NATIVE_FLOAT);
    const at::Tensor expected = tensor.to(at::kFloat);
    for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(values[i], expected[i].item<float>());
  }
}

TEST(StatsStore, PutReplacesAnEntryWithTheSameKey) {
  TempDir dir;
  const std::string path = dir.file("stats.h5");
  const StatsKey key{"norms", 0, "mlp.in", "prose"};
  StatsStore store = StatsStore::create(path);
  store.put(key, at::full({3}, 1.0, at::kFloat), kInputs, 5);
  store.put(key, at::full({2, 2}, 7, at::kLong), fingerprints(2, 2, 2), 11);
  store.commit();
  expect_identical(store.get(key, fingerprints(2, 2, 2)), at::full({2, 2}, 7, at::kLong));
  EXPECT_EQ(store.info(key).tokens, 11);
  EXPECT_EQ(store.keys().size(), 1u);
}

TEST(StatsStore, SameWritesGiveAByteIdenticalFile) {
  TempDir dir;
  for (const std::string name : {"a.h5", "b.h5"}) {
    StatsStore store = StatsStore::create(dir.file(name));
    for (const Case& c : every_dtype()) store.put(c.key, c.value, kInputs, c.tokens);
    store.commit();
  }
  const std::string a = read_file(dir.file("a.h5"));
  ASSERT_GT(a.size(), 1000u);
  EXPECT_TRUE(a == read_file(dir.file("b.h5")));
}

// One refusal per input, each naming that input (and only it) with both fingerprints.
TEST(StatsStore, RefusesAStatisticWhoseInputsChangedNamingTheInput) {
  TempDir dir;
  const StatsKey key{"router_mass", 1, "router.logits", "code"};
  StatsStore store = StatsStore::create(dir.file("stats.h5"));
  store.put(key, at::ones({8}, at::kDouble), kInputs, 100);
  store.commit();

  struct Refusal {
    StatsFingerprints now;
    std::string stored, current, says;
  };
  const StatsFingerprints weights = fingerprints(2, 1, 1), data = fingerprints(1, 2, 1),
                          options = fingerprints(1, 1, 2);
  const Refusal refusals[] = {
      {weights, kInputs.weights, weights.weights, "model weights changed"},
      {data, kInputs.calibration, data.calibration, "calibration data changed"},
      {options, kInputs.options, options.options, "collector options changed"},
  };
  const char* all_clauses[] = {"model weights", "calibration data", "collector options"};
  for (const Refusal& r : refusals) {
    SCOPED_TRACE(r.says);
    const std::string what =
        expect_error([&] { store.get(key, r.now); }, ErrorKind::kData, to_string(key), r.says);
    EXPECT_NE(what.find(r.says + ": stored " + r.stored + ", now " + r.current), std::string::npos)
        << what;
    EXPECT_NE(what.find(dir.file("stats.h5")), std::string::npos) << what;
    for (const char* clause : all_clauses) {
      if (r.says.rfind(clause, 0) != 0) {
        EXPECT_EQ(what.find(clause), std::string::npos) << what;
      }
    }
    EXPECT_FALSE(store.is_current(key, r.now));
  }
  const std::string both = expect_error([&] { store.get(key, fingerprints(2, 2, 1)); },
                                        ErrorKind::kData, to_string(key), "model weights changed");
  EXPECT_NE(both.find("calibration data changed"), std::string::npos) << both;
  EXPECT_TRUE(store.is_current(key, kInputs));
}

TEST(StatsStore, AMissingKeyIsADataErrorNamingIt) {
  TempDir dir;
  StatsStore store = StatsStore::create(dir.file("stats.h5"));
  store.put({"norms", 0, "mlp.in", "prose"}, at::ones({2}), kInputs, 1);
  store.commit();
  // Missing at every depth: unknown kind, layer, tap and task.
  const StatsKey missing[] = {{"hessian", 0, "mlp.in", "prose"},
                              {"norms", 1, "mlp.in", "prose"},
                              {"norms", 0, "attn.in", "prose"},
                              {"norms", 0, "mlp.in", "code"}};
  for (const StatsKey& key : missing) {
    SCOPED_TRACE(to_string(key));
    EXPECT_FALSE(store.contains(key));
    EXPECT_FALSE(store.is_current(key, kInputs));
    expect_error([&] { store.get(key, kInputs); }, ErrorKind::kData, to_string(key),
                 "no such statistic");
    expect_error([&] { store.info(key); }, ErrorKind::kData, to_string(key), "no such statistic");
  }
}

TEST(StatsStore, RejectsBadKeysDtypesFingerprintsAndWritesToAReadOnlyStore) {
  TempDir dir;
  StatsStore store = StatsStore::create(dir.file("stats.h5"));
  const at::Tensor value = at::ones({2});
  const StatsKey slash{"norms", 0, "mlp.in", "a/b"};
  expect_error([&] { store.put(slash, value, kInputs, 1); }, ErrorKind::kConfig, to_string(slash),
               "task 'a/b' is not a valid name");
  const StatsKey empty_tap{"norms", 0, "", "prose"};
  expect_error([&] { store.put(empty_tap, value, kInputs, 1); }, ErrorKind::kConfig,
               to_string(empty_tap), "tap");
  const StatsKey dot{".", 0, "mlp.in", "prose"};
  expect_error([&] { store.put(dot, value, kInputs, 1); }, ErrorKind::kConfig, to_string(dot),
               "kind");
  const StatsKey negative{"norms", -2, "mlp.in", "prose"};
  expect_error([&] { store.put(negative, value, kInputs, 1); }, ErrorKind::kConfig,
               to_string(negative), "layer");

  const StatsKey key{"norms", 0, "mlp.in", "prose"};
  expect_error([&] { store.put(key, at::ones({2}, at::kShort), kInputs, 1); },
               ErrorKind::kUnsupported, to_string(key), "cannot store dtype Short");
  StatsFingerprints bad = kInputs;
  bad.calibration = "sha256:abc";
  expect_error([&] { store.put(key, value, bad, 1); }, ErrorKind::kInternal, to_string(key),
               "calibration fingerprint 'sha256:abc'");
  expect_error([&] { store.put(key, value, kInputs, -1); }, ErrorKind::kInternal, to_string(key),
               "token count");
  EXPECT_TRUE(store.keys().empty());  // nothing half-written by the refused puts

  store.put(key, value, kInputs, 1);
  store.commit();
  StatsStore reader = StatsStore::open(dir.file("stats.h5"));
  EXPECT_FALSE(reader.writable());
  expect_error([&] { reader.put(key, value, kInputs, 1); }, ErrorKind::kInternal, "", "put needs");
  expect_error([&] { reader.commit(); }, ErrorKind::kInternal, "", "commit needs");
}

TEST(StatsStore, WritesOnlyATemporaryFileUntilCommit) {
  TempDir dir;
  const std::string path = dir.file("stats.h5");
  const std::string temp = path + ".tmp-" + std::to_string(::getpid());
  {
    StatsStore store = StatsStore::create(path);
    store.put({"norms", 0, "mlp.in", "prose"}, at::ones({4}), kInputs, 3);
    EXPECT_EQ(directory_listing(dir.path()), std::vector<std::string>{fs::path(temp).filename()});
    // A raw copy of the unfinished file (what a killed run leaves) is refused by open().
    fs::copy_file(temp, dir.file("copy.h5"));
    expect_refused(dir.file("copy.h5"));
    fs::remove(dir.file("copy.h5"));
    // Destroyed without commit: the temporary file goes, nothing appears at `path`.
  }
  EXPECT_TRUE(directory_listing(dir.path()).empty());
}

// Writes an HDF5 file by hand: root attributes of a lathe store (any of them may be left out).
void write_fake_store(const std::string& path, const char* format, int64_t version,
                      std::optional<uint8_t> complete, bool stray_dataset = false) {
  H5::H5File file(path, H5F_ACC_TRUNC);
  const H5::Group root = file.openGroup("/");
  const H5::StrType string_type(H5::PredType::C_S1, H5T_VARIABLE);
  if (format != nullptr) {
    root.createAttribute("format", string_type, H5::DataSpace(H5S_SCALAR))
        .write(string_type, std::string(format));
  }
  root.createAttribute("format_version", H5::PredType::STD_I64LE, H5::DataSpace(H5S_SCALAR))
      .write(H5::PredType::NATIVE_INT64, &version);
  if (complete) {
    root.createAttribute("complete", H5::PredType::STD_U8LE, H5::DataSpace(H5S_SCALAR))
        .write(H5::PredType::NATIVE_UINT8, &*complete);
  }
  if (stray_dataset) {
    const hsize_t dims[1] = {2};
    file.createDataSet("loose", H5::PredType::STD_I32LE, H5::DataSpace(1, dims));
  }
}

TEST(StatsStore, OpenRefusesAStoreWithoutTheCompleteFlag) {
  TempDir dir;
  write_fake_store(dir.file("zero.h5"), "lathe-stats", 1, uint8_t{0});
  write_fake_store(dir.file("absent.h5"), "lathe-stats", 1, std::nullopt);
  write_fake_store(dir.file("good.h5"), "lathe-stats", 1, uint8_t{1});
  for (const char* name : {"zero.h5", "absent.h5"}) {
    const std::string what = expect_error([&] { StatsStore::open(dir.file(name)); },
                                          ErrorKind::kData, "complete", "incomplete");
    EXPECT_NE(what.find(dir.file(name)), std::string::npos) << what;
  }
  EXPECT_TRUE(StatsStore::open(dir.file("good.h5")).keys().empty());
}

TEST(StatsStore, OpenRefusesHdf5FilesThatAreNotLatheStores) {
  TempDir dir;
  write_fake_store(dir.file("other.h5"), nullptr, 1, uint8_t{1});
  expect_error([&] { StatsStore::open(dir.file("other.h5")); }, ErrorKind::kData, "format",
               "not a lathe statistics store");
  write_fake_store(dir.file("foreign.h5"), "something-else", 1, uint8_t{1});
  expect_error([&] { StatsStore::open(dir.file("foreign.h5")); }, ErrorKind::kData, "format",
               "'something-else'");
  write_fake_store(dir.file("newer.h5"), "lathe-stats", 2, uint8_t{1});
  expect_error([&] { StatsStore::open(dir.file("newer.h5")); }, ErrorKind::kUnsupported,
               "format_version", "newer");
  write_fake_store(dir.file("stray.h5"), "lathe-stats", 1, uint8_t{1}, true);
  const StatsStore stray = StatsStore::open(dir.file("stray.h5"));
  expect_error([&] { stray.keys(); }, ErrorKind::kData, "loose", "unexpected object");
}

TEST(StatsStore, OpenRefusesMissingNonHdf5AndTruncatedFilesNamingThem) {
  TempDir dir;
  expect_error([&] { StatsStore::open(dir.file("missing.h5")); }, ErrorKind::kResource, "",
               "no such file");
  for (const std::string& text : {std::string("not an hdf5 file at all\n"), std::string()}) {
    const std::string path = dir.write("text.h5", text);
    const std::string what =
        expect_error([&] { StatsStore::open(path); }, ErrorKind::kData, "", "not an HDF5 file");
    EXPECT_EQ(what.rfind(path + ": ", 0), 0u) << what;
  }

  const std::string path = dir.file("stats.h5");
  StatsStore store = StatsStore::create(path);
  store.put({"hessian", 0, "mlp.in", "all"}, at::ones({128, 128}), kInputs, 64);
  store.commit();
  const std::string bytes = read_file(path);
  for (const size_t keep : {bytes.size() / 2, bytes.size() - 1, size_t{96}}) {
    SCOPED_TRACE(keep);
    const std::string truncated = dir.write("truncated.h5", bytes.substr(0, keep));
    const std::string what =
        expect_error([&] { StatsStore::open(truncated); }, ErrorKind::kData, "", "truncated");
    EXPECT_EQ(what.rfind(truncated + ": ", 0), 0u) << what;
  }
}

TEST(StatsStore, ReadingNeverModifiesTheFile) {
  TempDir dir;
  const std::string path = dir.file("stats.h5");
  const StatsKey key{"norms", 0, "mlp.in", "prose"};
  {
    StatsStore store = StatsStore::create(path);
    store.put(key, at::arange(6, at::kFloat), kInputs, 6);
    store.commit();
  }
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  const std::string bytes = read_file(path);
  ::usleep(20000);  // a write now would carry a later mtime
  {
    const StatsStore store = StatsStore::open(path);
    store.get(key, kInputs);
    store.info(key);
    store.keys();
    EXPECT_THROW(store.get(key, fingerprints(2, 1, 1)), DataError);
    StatsStore abandoned = StatsStore::update(path);  // never committed
    abandoned.put({"norms", 1, "mlp.in", "prose"}, at::ones({2}), kInputs, 1);
  }
  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_EQ(before.st_mtim.tv_sec, after.st_mtim.tv_sec);
  EXPECT_EQ(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
  EXPECT_EQ(before.st_ino, after.st_ino);
  EXPECT_TRUE(read_file(path) == bytes);
  EXPECT_EQ(directory_listing(dir.path()), std::vector<std::string>{"stats.h5"});
}

TEST(StatsStore, UpdateAddsAndReplacesEntriesThroughANewFile) {
  TempDir dir;
  const std::string path = dir.file("stats.h5");
  const StatsKey kept{"norms", 0, "mlp.in", "prose"}, replaced{"norms", 1, "mlp.in", "prose"},
      added{"router_mass", 1, "router.logits", "code"};
  {
    StatsStore store = StatsStore::create(path);
    store.put(kept, at::arange(4, at::kDouble), kInputs, 4);
    store.put(replaced, at::ones({3}), kInputs, 3);
    store.commit();
  }
  const std::string original = read_file(path);
  StatsStore store = StatsStore::update(path);
  EXPECT_TRUE(store.writable());
  EXPECT_EQ(store.keys(), (std::vector<StatsKey>{kept, replaced}));
  store.put(replaced, at::full({3}, 2.0), fingerprints(2, 1, 1), 30);
  store.put(added, at::zeros({2}, at::kLong), kInputs, 8);
  EXPECT_TRUE(read_file(path) == original);  // untouched until commit
  store.commit();

  const StatsStore reread = StatsStore::open(path);
  EXPECT_EQ(reread.keys(), (std::vector<StatsKey>{kept, replaced, added}));
  expect_identical(reread.get(kept, kInputs), at::arange(4, at::kDouble));
  EXPECT_EQ(reread.info(kept).tokens, 4);
  expect_identical(reread.get(replaced, fingerprints(2, 1, 1)), at::full({3}, 2.0));
  EXPECT_EQ(reread.info(replaced).tokens, 30);
  expect_identical(reread.get(added, kInputs), at::zeros({2}, at::kLong));
  EXPECT_EQ(directory_listing(dir.path()), std::vector<std::string>{"stats.h5"});
}

TEST(StatsStore, CommitReplacesAnExistingFileAndCreateNeedsItsDirectory) {
  TempDir dir;
  const std::string path = dir.write("stats.h5", std::string("old contents"));
  StatsStore store = StatsStore::create(path);
  EXPECT_EQ(read_file(path), "old contents");
  store.put({"norms", 0, "mlp.in", "prose"}, at::ones({1}), kInputs, 1);
  StatsStore moved = std::move(store);
  moved.commit();
  EXPECT_EQ(StatsStore::open(path).keys().size(), 1u);

  expect_error([&] { StatsStore::create(dir.file("no/such/dir/stats.h5")); }, ErrorKind::kResource,
               "", "does not exist");
}

TEST(StatsStore, OneProcessCannotWriteTheSamePathTwiceAtOnce) {
  TempDir dir;
  const std::string path = dir.file("stats.h5");
  {
    StatsStore first = StatsStore::create(path);
    expect_error([&] { StatsStore::create(path); }, ErrorKind::kInternal, "", "already writing");
    first.put({"norms", 0, "mlp.in", "prose"}, at::ones({1}), kInputs, 1);
    first.commit();
  }
  StatsStore again = StatsStore::create(path);  // the name is free again after commit
  again.commit();
  EXPECT_TRUE(StatsStore::open(path).keys().empty());
}

// A writer killed with SIGKILL mid-run leaves only its `.tmp-<pid>` file, which open() refuses.
TEST(StatsStore, AKilledWriterLeavesNoStoreAtThePath) {
  TempDir dir;
  const std::string path = dir.file("stats.h5");
  const at::Tensor value = at::ones({64, 64});  // made before fork: the child runs no torch ops
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::alarm(30);
    try {
      StatsStore store = StatsStore::create(path);
      for (int64_t layer = 0; layer < 4; ++layer) {
        store.put({"hessian", layer, "mlp.in", "all"}, value, kInputs, 64);
      }
      ::raise(SIGKILL);
    } catch (...) {
    }
    ::_exit(3);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;

  const std::string temp = path + ".tmp-" + std::to_string(child);
  EXPECT_FALSE(fs::exists(path));
  ASSERT_TRUE(fs::exists(temp));
  expect_refused(temp);
  expect_error([&] { StatsStore::open(path); }, ErrorKind::kResource, "", "no such file");
}

}  // namespace
}  // namespace lathe
