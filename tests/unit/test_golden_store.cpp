// Golden-vector files (calibrate/golden_store.h): exact round trip, model order kept, and every
// malformed file refused with a DataError naming the object.
#include <H5Cpp.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <filesystem>
#include <fstream>

#include "calibrate/golden_store.h"
#include "compressor/common/errors.h"
#include "tests/unit/safetensors_builder.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;
using testing::TempDir;

GoldenLayer sample_layer() {
  at::manual_seed(3);
  GoldenLayer g;
  g.layer = 2;
  g.source = "unit test";
  g.inputs["attn_in"] = at::randn({5, 8});
  g.inputs["mlp_in"] = at::randn({5, 8});
  g.inputs["expert_act.3"] = at::randn({5, 12});
  g.linears.push_back(
      {"model.layers.2.self_attn.q_proj", "attn_in", 4, 32, true, 0, at::randn({5, 16})});
  g.linears.push_back(
      {"model.layers.2.mlp.experts.3.up_proj", "mlp_in", 8, -1, false, 8, at::randn({5, 12})});
  g.linears.push_back({"model.layers.2.mlp.experts.3.down_proj", "expert_act.3", 2, 16, true, 0,
                       at::randn({5, 8})});
  g.linears[0].sparsity = "2:4";  // pruned, then quantized
  g.moe_y = at::randn({5, 8});
  return g;
}

TEST(GoldenStore, RoundTripIsExactAndKeepsModelOrder) {
  TempDir dir;
  const std::string path = (fs::path(dir.path()) / golden_file_name(2)).string();
  EXPECT_EQ(golden_file_name(2), "layer_00002.h5");
  const GoldenLayer g = sample_layer();
  write_golden_layer(path, g);
  const GoldenLayer r = read_golden_layer(path);
  EXPECT_EQ(r.layer, 2);
  EXPECT_EQ(r.source, "unit test");
  ASSERT_EQ(r.inputs.size(), 3u);
  for (const auto& [name, x] : g.inputs) EXPECT_TRUE(at::equal(r.inputs.at(name), x)) << name;
  ASSERT_EQ(r.linears.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {  // written order, not HDF5's alphabetical order
    EXPECT_EQ(r.linears[i].module, g.linears[i].module);
    EXPECT_EQ(r.linears[i].input, g.linears[i].input);
    EXPECT_EQ(r.linears[i].bits, g.linears[i].bits);
    EXPECT_EQ(r.linears[i].group_size, g.linears[i].group_size);
    EXPECT_EQ(r.linears[i].sym, g.linears[i].sym);
    EXPECT_EQ(r.linears[i].act_bits, g.linears[i].act_bits);
    EXPECT_EQ(r.linears[i].sparsity, g.linears[i].sparsity);  // optional: "" when absent
    EXPECT_TRUE(at::equal(r.linears[i].y, g.linears[i].y));
  }
  ASSERT_TRUE(r.moe_y.has_value());
  EXPECT_TRUE(at::equal(*r.moe_y, *g.moe_y));
  // No temporary file is left behind, and the listing finds the file by layer.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);
  write_golden_layer((fs::path(dir.path()) / golden_file_name(10)).string(), g);
  std::ofstream((fs::path(dir.path()) / "layer_x.h5").string()) << "not one of ours";
  const std::vector<std::string> files = list_golden_files(dir.path());
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(fs::path(files[0]).filename(), "layer_00002.h5");
  EXPECT_EQ(fs::path(files[1]).filename(), "layer_00010.h5");
  EXPECT_TRUE(list_golden_files((fs::path(dir.path()) / "missing").string()).empty());
}

TEST(GoldenStore, WriterRefusesInconsistentLayers) {
  TempDir dir;
  GoldenLayer g = sample_layer();
  g.linears[0].input = "nowhere";
  expect_error([&] { write_golden_layer((fs::path(dir.path()) / "a.h5").string(), g); },
               ErrorKind::kInternal, "model.layers.2.self_attn.q_proj", "missing");
  g = sample_layer();
  g.linears[1].y = at::randn({4, 12});
  expect_error([&] { write_golden_layer((fs::path(dir.path()) / "a.h5").string(), g); },
               ErrorKind::kInternal, "model.layers.2.mlp.experts.3.up_proj", "rows");
}

// Writes a valid file, then lets `edit` break it with the raw HDF5 API.
template <typename Edit>
std::string broken(const TempDir& dir, Edit&& edit) {
  const std::string path = (fs::path(dir.path()) / "broken.h5").string();
  fs::remove(path);
  write_golden_layer(path, sample_layer());
  {
    H5::H5File f(path, H5F_ACC_RDWR);
    edit(f);
  }
  return path;
}

TEST(GoldenStore, ReaderRefusesMalformedFiles) {
  TempDir dir;
  const std::string q = "linears/model.layers.2.self_attn.q_proj";
  expect_error([&] { read_golden_layer((fs::path(dir.path()) / "none.h5").string()); },
               ErrorKind::kResource, "", "no such file");
  const std::string text = (fs::path(dir.path()) / "text.h5").string();
  std::ofstream(text) << "hello";
  expect_error([&] { read_golden_layer(text); }, ErrorKind::kData, "", "not an HDF5 file");

  std::string p = broken(dir, [](H5::H5File& f) {
    f.openGroup("/").removeAttr("format");
    H5::StrType t(H5::PredType::C_S1, H5T_VARIABLE);
    f.openGroup("/")
        .createAttribute("format", t, H5::DataSpace(H5S_SCALAR))
        .write(t, std::string("lathe-stats"));
  });
  expect_error([&] { read_golden_layer(p); }, ErrorKind::kData, "format", "lathe-stats");

  p = broken(dir, [](H5::H5File& f) {
    f.openGroup("/").removeAttr("format_version");
    const int64_t v = 9;
    f.openGroup("/")
        .createAttribute("format_version", H5::PredType::STD_I64LE, H5::DataSpace(H5S_SCALAR))
        .write(H5::PredType::NATIVE_INT64, &v);
  });
  expect_error([&] { read_golden_layer(p); }, ErrorKind::kUnsupported, "format_version",
               "version 9");

  p = broken(dir, [&](H5::H5File& f) { f.openGroup(q).removeAttr("bits"); });
  expect_error([&] { read_golden_layer(p); }, ErrorKind::kData, q, "'bits' is missing");

  p = broken(dir, [&](H5::H5File& f) {
    H5::Group g = f.openGroup(q);
    g.removeAttr("input");
    H5::StrType t(H5::PredType::C_S1, H5T_VARIABLE);
    g.createAttribute("input", t, H5::DataSpace(H5S_SCALAR)).write(t, std::string("mlp_act"));
  });
  expect_error([&] { read_golden_layer(p); }, ErrorKind::kData, q,
               "'mlp_act' is not under /inputs");

  p = broken(dir, [&](H5::H5File& f) {  // float64 values
    H5::Group g = f.openGroup(q);
    g.unlink("y");
    const hsize_t dims[2] = {5, 16};
    std::vector<double> v(80, 1.0);
    g.createDataSet("y", H5::PredType::IEEE_F64LE, H5::DataSpace(2, dims))
        .write(v.data(), H5::PredType::NATIVE_DOUBLE);
  });
  expect_error([&] { read_golden_layer(p); }, ErrorKind::kData, q + "/y", "float32");

  p = broken(dir, [&](H5::H5File& f) {  // 4 rows where the inputs have 5
    H5::Group g = f.openGroup(q);
    g.unlink("y");
    const hsize_t dims[2] = {4, 16};
    std::vector<float> v(64, 1.0f);
    g.createDataSet("y", H5::PredType::IEEE_F32LE, H5::DataSpace(2, dims))
        .write(v.data(), H5::PredType::NATIVE_FLOAT);
  });
  expect_error([&] { read_golden_layer(p); }, ErrorKind::kData, q + "/y", "4 rows");

  p = broken(dir, [&](H5::H5File& f) { f.openGroup("moe").unlink("y"); });
  expect_error([&] { read_golden_layer(p); }, ErrorKind::kData, "moe/y", "missing dataset");

  p = broken(dir, [&](H5::H5File& f) { f.openGroup("/").unlink("inputs"); });
  expect_error([&] { read_golden_layer(p); }, ErrorKind::kData, "inputs", "missing group");
}

}  // namespace
}  // namespace lathe
