#include "calibrate/golden_store.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>
#include <unistd.h>

#include "calibrate/hdf5_io.h"
#include "compressor/common/errors.h"

namespace fs = std::filesystem;

namespace lathe {
namespace {

using namespace h5;

constexpr const char* kFormat = "lathe-golden";
constexpr int64_t kVersion = 1;

void write_matrix(const H5::Group& parent, const std::string& name, const at::Tensor& value) {
  const at::Tensor v = value.to(at::kFloat).contiguous();
  if (v.dim() != 2) throw InternalError(name, "", "golden datasets are 2-D");
  const hsize_t dims[2] = {static_cast<hsize_t>(v.size(0)), static_cast<hsize_t>(v.size(1))};
  const H5::DataSpace space(2, dims);
  const H5::DSetCreatPropList dcpl;
  set_untimed(dcpl.getId());
  const H5::DataSet d = parent.createDataSet(name, H5::PredType::IEEE_F32LE, space, dcpl);
  if (v.numel() > 0) d.write(v.data_ptr(), H5::PredType::NATIVE_FLOAT);
}

at::Tensor read_matrix(const H5::Group& parent, const std::string& name, const std::string& path,
                       const std::string& field) {
  if (!parent.nameExists(name) || parent.childObjType(name) != H5O_TYPE_DATASET) {
    throw DataError(path, field, "missing dataset");
  }
  const H5::DataSet d = parent.openDataSet(name);
  if (d.getTypeClass() != H5T_FLOAT || d.getFloatType().getSize() != 4)
    throw DataError(path, field, "expected float32 values");
  const H5::DataSpace space = d.getSpace();
  if (space.getSimpleExtentNdims() != 2) throw DataError(path, field, "expected a 2-D dataset");
  hsize_t dims[2] = {0, 0};
  space.getSimpleExtentDims(dims);
  if (dims[0] > (1u << 24) || dims[1] > (1u << 26) || dims[0] * dims[1] > (hsize_t{1} << 32)) {
    throw DataError(path, field, fmt::format("implausible shape [{}, {}]", dims[0], dims[1]));
  }
  at::Tensor v =
      at::empty({static_cast<int64_t>(dims[0]), static_cast<int64_t>(dims[1])}, at::kFloat);
  if (v.numel() > 0) d.read(v.data_ptr(), H5::PredType::NATIVE_FLOAT);
  return v;
}

int64_t required_int(const H5::H5Object& o, const char* name, const std::string& path,
                     const std::string& field) {
  const std::optional<int64_t> v = read_int(o, name, path, field);
  if (!v) throw DataError(path, field, std::string("attribute '") + name + "' is missing");
  return *v;
}

std::vector<std::string> children(const H5::Group& g) {
  std::vector<std::string> names;
  for (hsize_t i = 0; i < g.getNumObjs(); ++i) names.push_back(g.getObjnameByIdx(i));
  return names;
}

}  // namespace

std::string golden_file_name(int64_t layer) {
  return fmt::format("layer_{:05d}.h5", layer);
}

void write_golden_layer(const std::string& path, const GoldenLayer& g) {
  for (const auto& l : g.linears) {
    auto it = g.inputs.find(l.input);
    if (it == g.inputs.end())
      throw InternalError(path, l.module, "golden input '" + l.input + "' is missing");
    if (it->second.size(0) != l.y.size(0))
      throw InternalError(path, l.module, "golden input and output rows differ");
  }
  const std::string temp = path + ".tmp-" + std::to_string(::getpid());
  with_hdf5(ErrorKind::kResource, path, "", "cannot write golden vectors", [&] {
    H5::FileCreatPropList fcpl;
    set_untimed(fcpl.getId());
    H5::H5File file(temp, H5F_ACC_TRUNC, fcpl, file_access());
    const H5::Group root = file.openGroup("/");
    write_string(root, "format", kFormat);
    write_int(root, "format_version", kVersion);
    write_int(root, "layer", g.layer);
    write_string(root, "source", g.source);
    write_string(root, "lathe_version", LATHE_VERSION);
    const H5::Group inputs = open_or_create_group(root, "inputs");
    for (const auto& [name, x] : g.inputs) write_matrix(inputs, name, x);
    const H5::Group linears = open_or_create_group(root, "linears");
    int64_t order = 0;
    for (const auto& l : g.linears) {
      const H5::Group m = open_or_create_group(linears, l.module);
      write_string(m, "input", l.input);
      write_int(m, "order", order++);
      write_int(m, "bits", l.bits);
      write_int(m, "group_size", l.group_size);
      write_int(m, "sym", l.sym ? 1 : 0);
      write_int(m, "act_bits", l.act_bits);
      if (!l.sparsity.empty()) write_string(m, "sparsity", l.sparsity);
      write_matrix(m, "y", l.y);
    }
    if (g.moe_y) {
      const H5::Group moe = open_or_create_group(root, "moe");
      write_string(moe, "input", "mlp_in");
      write_matrix(moe, "y", *g.moe_y);
    }
    file.flush(H5F_SCOPE_GLOBAL);
    file.close();
  });
  fsync_path(temp, path);  // on disk before the rename makes it visible, like the statistics store
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    std::remove(temp.c_str());
    throw ResourceError(path, "", "cannot rename " + temp + " into place: " + reason);
  }
}

GoldenLayer read_golden_layer(const std::string& path) {
  if (!fs::is_regular_file(path)) throw ResourceError(path, "", "no such file");
  return with_hdf5(
      ErrorKind::kData, path, "", "cannot be read as HDF5 (truncated or corrupt)", [&] {
        if (!H5::H5File::isHdf5(path))
          throw DataError(path, "", "not an HDF5 file; not a golden-vector file");
        const H5::H5File file(path, H5F_ACC_RDONLY, H5::FileCreatPropList::DEFAULT, file_access());
        const H5::Group root = file.openGroup("/");
        const std::optional<std::string> format = read_string(root, "format", path, "format");
        if (format != std::string(kFormat)) {
          throw DataError(path, "format",
                          "expected '" + std::string(kFormat) + "', found " +
                              (format ? "'" + *format + "'" : "nothing"));
        }
        const int64_t version = required_int(root, "format_version", path, "format_version");
        if (version != kVersion) {
          throw UnsupportedError(
              path, "format_version",
              fmt::format("version {}; this lathe reads version {}", version, kVersion));
        }
        GoldenLayer g;
        g.layer = required_int(root, "layer", path, "layer");
        if (g.layer < 0) throw DataError(path, "layer", "expected >= 0");
        g.source = read_string(root, "source", path, "source").value_or("");
        int64_t rows = -1;
        auto check_rows = [&](const at::Tensor& t, const std::string& field) {
          if (rows < 0) rows = t.size(0);
          if (t.size(0) != rows)
            throw DataError(path, field,
                            fmt::format("{} rows, other datasets have {}", t.size(0), rows));
        };
        if (!root.nameExists("inputs")) throw DataError(path, "inputs", "missing group");
        const H5::Group inputs = root.openGroup("inputs");
        for (const auto& name : children(inputs)) {
          at::Tensor x = read_matrix(inputs, name, path, "inputs/" + name);
          check_rows(x, "inputs/" + name);
          g.inputs[name] = x;
        }
        if (root.nameExists("linears")) {
          const H5::Group linears = root.openGroup("linears");
          std::vector<std::pair<int64_t, GoldenLinear>> ordered;
          for (const auto& module : children(linears)) {
            const std::string field = "linears/" + module;
            if (linears.childObjType(module) != H5O_TYPE_GROUP)
              throw DataError(path, field, "expected a group");
            const H5::Group m = linears.openGroup(module);
            GoldenLinear l;
            l.module = module;
            l.input = read_string(m, "input", path, field).value_or("");
            if (!g.inputs.count(l.input))
              throw DataError(path, field, "input '" + l.input + "' is not under /inputs");
            const int64_t order = required_int(m, "order", path, field);
            l.bits = required_int(m, "bits", path, field);
            l.group_size = required_int(m, "group_size", path, field);
            l.sym = required_int(m, "sym", path, field) != 0;
            l.act_bits = required_int(m, "act_bits", path, field);
            l.sparsity = read_string(m, "sparsity", path, field).value_or("");
            l.y = read_matrix(m, "y", path, field + "/y");
            check_rows(l.y, field + "/y");
            ordered.emplace_back(order, std::move(l));
          }
          std::stable_sort(ordered.begin(), ordered.end(),
                           [](const auto& a, const auto& b) { return a.first < b.first; });
          for (auto& [order, l] : ordered) g.linears.push_back(std::move(l));
        }
        if (root.nameExists("moe")) {
          const H5::Group moe = root.openGroup("moe");
          if (!g.inputs.count("mlp_in"))
            throw DataError(path, "moe", "the MoE block's input mlp_in is not under /inputs");
          at::Tensor y = read_matrix(moe, "y", path, "moe/y");
          check_rows(y, "moe/y");
          if (y.size(1) != g.inputs["mlp_in"].size(1))
            throw DataError(path, "moe/y", "width differs from inputs/mlp_in");
          g.moe_y = y;
        }
        return g;
      });
}

std::vector<std::string> list_golden_files(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> files;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.size() != 14 || name.rfind("layer_", 0) != 0 || e.path().extension() != ".h5")
      continue;
    const std::string digits = name.substr(6, 5);
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    files.emplace_back(std::stoll(digits), e.path().string());
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> out;
  for (auto& f : files) out.push_back(f.second);
  return out;
}

}  // namespace lathe
