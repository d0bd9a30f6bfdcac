#include "calibrate/stats_store.h"

#include <H5Cpp.h>
#include <fcntl.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>
#include <tuple>

#include "calibrate/hdf5_io.h"
#include "compressor/common/errors.h"
#include "compressor/model/fingerprint.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;
using namespace h5;

constexpr const char* kFormat = "lathe-stats";
constexpr int64_t kFormatVersion = 1;
constexpr const char* kAllLayersGroup = "all_layers";
constexpr const char* kLayerPrefix = "layer_";

// ---- element types -----------------------------------------------------------------------------
// Types are data: one row per storable dtype, with the HDF5 type written to the file and the one
// read into memory (HDF5 converts between them, e.g. on a big-endian reader).
H5::DataType bool_type() {
  H5::EnumType type(H5::PredType::NATIVE_INT8);  // h5py's spelling of numpy bool
  int8_t value = 0;
  type.insert("FALSE", &value);
  value = 1;
  type.insert("TRUE", &value);
  return type;
}

// 16-bit floats: HDF5 has no predefined ones; this is how h5py describes float16 (and the same
// construction with bfloat16's 8-bit exponent).
H5::DataType half_type(size_t exponent_bits, size_t mantissa_bits, size_t bias) {
  H5::FloatType type(H5::PredType::IEEE_F32LE);
  type.setFields(15, mantissa_bits, exponent_bits, 0, mantissa_bits);
  type.setSize(2);
  type.setEbias(bias);
  return type;
}

struct ElementType {
  const char* dtype;  // the `dtype` attribute, safetensors spelling
  c10::ScalarType scalar;
  H5T_class_t h5_class;
  size_t size;
  H5::DataType (*file_type)();
  H5::DataType (*memory_type)();
};

const std::vector<ElementType>& element_types() {
  static const std::vector<ElementType> types = {
      {"F32", c10::ScalarType::Float, H5T_FLOAT, 4,
       [] { return H5::DataType(H5::PredType::IEEE_F32LE); },
       [] { return H5::DataType(H5::PredType::NATIVE_FLOAT); }},
      {"F64", c10::ScalarType::Double, H5T_FLOAT, 8,
       [] { return H5::DataType(H5::PredType::IEEE_F64LE); },
       [] { return H5::DataType(H5::PredType::NATIVE_DOUBLE); }},
      {"F16", c10::ScalarType::Half, H5T_FLOAT, 2, [] { return half_type(5, 10, 15); },
       [] { return half_type(5, 10, 15); }},
      {"BF16", c10::ScalarType::BFloat16, H5T_FLOAT, 2, [] { return half_type(8, 7, 127); },
       [] { return half_type(8, 7, 127); }},
      {"I64", c10::ScalarType::Long, H5T_INTEGER, 8,
       [] { return H5::DataType(H5::PredType::STD_I64LE); },
       [] { return H5::DataType(H5::PredType::NATIVE_INT64); }},
      {"I32", c10::ScalarType::Int, H5T_INTEGER, 4,
       [] { return H5::DataType(H5::PredType::STD_I32LE); },
       [] { return H5::DataType(H5::PredType::NATIVE_INT32); }},
      {"U8", c10::ScalarType::Byte, H5T_INTEGER, 1,
       [] { return H5::DataType(H5::PredType::STD_U8LE); },
       [] { return H5::DataType(H5::PredType::NATIVE_UINT8); }},
      {"BOOL", c10::ScalarType::Bool, H5T_ENUM, 1, bool_type, bool_type},
  };
  return types;
}

const ElementType* find_type(c10::ScalarType scalar) {
  for (const ElementType& t : element_types()) {
    if (t.scalar == scalar) return &t;
  }
  return nullptr;
}

const ElementType* find_type(const std::string& dtype) {
  for (const ElementType& t : element_types()) {
    if (dtype == t.dtype) return &t;
  }
  return nullptr;
}

// ---- keys --------------------------------------------------------------------------------------
std::string layer_group(int64_t layer) {
  return layer == StatsKey::kAllLayers ? kAllLayersGroup : kLayerPrefix + std::to_string(layer);
}

// Inverse of layer_group; nullopt for any name it would not produce ("layer_03", "layer_-1").
std::optional<int64_t> parse_layer_group(const std::string& name) {
  if (name == kAllLayersGroup) return StatsKey::kAllLayers;
  const std::string digits = name.substr(0, 6) == kLayerPrefix ? name.substr(6) : "";
  if (digits.empty() || digits.size() > 18) return std::nullopt;
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  const int64_t layer = std::stoll(digits);
  if (layer_group(layer) != name) return std::nullopt;
  return layer;
}

// The four link names of `key`, after checking each is one valid HDF5 link name.
std::vector<std::string> key_links(const StatsKey& key, const std::string& where) {
  if (key.layer < StatsKey::kAllLayers) {
    throw ConfigError(where, to_string(key), "layer must be >= 0 (or kAllLayers)");
  }
  const std::pair<const char*, const std::string*> parts[] = {
      {"kind", &key.kind}, {"tap", &key.tap}, {"task", &key.task}};
  for (const auto& [part, name] : parts) {
    const bool bad = name->empty() || *name == "." || *name == ".." ||
                     name->find_first_of(std::string("/\0", 2)) != std::string::npos;
    if (bad) {
      throw ConfigError(where, to_string(key),
                        std::string(part) + " '" + *name +
                            "' is not a valid name (non-empty, no '/' or NUL, not '.' or '..')");
    }
  }
  return {key.kind, layer_group(key.layer), key.tap, key.task};
}

// Temporary paths being written by StatsStores of this process: a second writer of the same final
// path would share the `.tmp-<pid>` name and destroy the first one's file.
std::mutex g_temp_mutex;
std::set<std::string> g_temp_paths;

std::string temp_path_key(const std::string& temp) {
  return fs::absolute(temp).lexically_normal().string();
}

std::string claim_temp_path(const std::string& path) {
  const std::string temp = path + ".tmp-" + std::to_string(::getpid());
  const std::string key = temp_path_key(temp);
  std::lock_guard<std::mutex> lock(g_temp_mutex);
  if (!g_temp_paths.insert(key).second) {
    throw InternalError(path, "", "this process is already writing this statistics store");
  }
  return temp;
}

void release_temp_path(const std::string& temp) {
  const std::string key = temp_path_key(temp);
  std::lock_guard<std::mutex> lock(g_temp_mutex);
  g_temp_paths.erase(key);
}

}  // namespace

// ---- StatsKey ----------------------------------------------------------------------------------
bool StatsKey::operator==(const StatsKey& other) const {
  return std::tie(kind, layer, tap, task) ==
         std::tie(other.kind, other.layer, other.tap, other.task);
}

bool StatsKey::operator<(const StatsKey& other) const {
  return std::tie(kind, layer, tap, task) <
         std::tie(other.kind, other.layer, other.tap, other.task);
}

std::string to_string(const StatsKey& key) {
  return key.kind + "/" + layer_group(key.layer) + "/" + key.tap + "/" + key.task;
}

// ---- StatsStore --------------------------------------------------------------------------------
struct StatsStore::Impl {
  std::string path;       // final path
  std::string temp_path;  // non-empty while writable
  H5::H5File file;

  ~Impl() { discard(); }

  bool writable() const { return !temp_path.empty(); }

  // Closes and deletes an uncommitted temporary file. Never throws (runs in destructors).
  void discard() noexcept {
    if (!writable()) return;
    try {
      file.close();
    } catch (...) {
    }
    std::error_code ignored;
    fs::remove(temp_path, ignored);
    release_temp_path(temp_path);
    temp_path.clear();
  }

  void require_writable(const char* operation) const {
    if (!writable()) {
      throw InternalError(
          path, "", std::string(operation) + " needs a store from StatsStore::create or ::update");
    }
  }

  // The dataset of `key`, or nullopt. Walks link by link: HDF5 1.10 fails, rather than answering
  // false, when asked about a path whose intermediate group is missing.
  std::optional<H5::DataSet> find(const StatsKey& key) const {
    const std::vector<std::string> links = key_links(key, path);
    H5::Group group = file.openGroup("/");
    for (size_t i = 0; i + 1 < links.size(); ++i) {
      if (!group.nameExists(links[i]) || group.childObjType(links[i]) != H5O_TYPE_GROUP) {
        return std::nullopt;
      }
      group = group.openGroup(links[i]);
    }
    if (!group.nameExists(links.back()) || group.childObjType(links.back()) != H5O_TYPE_DATASET) {
      return std::nullopt;
    }
    return group.openDataSet(links.back());
  }

  H5::DataSet require(const StatsKey& key) const {
    std::optional<H5::DataSet> dataset = find(key);
    if (!dataset) throw DataError(path, to_string(key), "no such statistic in this store");
    return *dataset;
  }

  void open_readonly();
  void check_root() const;
  void create_file();
  void copy_entries_from(const H5::H5File& source);
  StatsInfo read_info(const H5::DataSet& dataset, const std::string& field) const;
  void write_entry(const StatsKey& key, const at::Tensor& value, const ElementType& type,
                   const StatsFingerprints& fingerprints, int64_t tokens);
  void collect_keys(std::vector<StatsKey>& keys) const;
};

void StatsStore::Impl::open_readonly() {
  std::error_code error;
  if (!fs::exists(path, error)) throw ResourceError(path, "", "no such file");
  if (!fs::is_regular_file(path, error)) throw ResourceError(path, "", "not a regular file");
  with_hdf5(ErrorKind::kData, path, "", "cannot be read as HDF5 (truncated or corrupt)", [&] {
    if (!H5::H5File::isHdf5(path)) {
      throw DataError(path, "", "not an HDF5 file (no HDF5 signature); not a statistics store");
    }
    file = H5::H5File(path, H5F_ACC_RDONLY, H5::FileCreatPropList::DEFAULT, file_access());
    check_root();
  });
}

void StatsStore::Impl::check_root() const {
  const H5::Group root = file.openGroup("/");
  const std::optional<std::string> format = read_string(root, "format", path, "format");
  if (format != std::string(kFormat)) {
    throw DataError(path, "format",
                    std::string("not a lathe statistics store: root attribute format is ") +
                        (format ? "'" + *format + "'" : "missing") + ", expected '" + kFormat +
                        "'");
  }
  const std::optional<int64_t> version = read_int(root, "format_version", path, "format_version");
  if (!version || *version < 1) throw DataError(path, "format_version", "missing or invalid");
  if (*version > kFormatVersion) {
    throw UnsupportedError(path, "format_version",
                           "version " + std::to_string(*version) + " is newer than this lathe (" +
                               std::to_string(kFormatVersion) + ")");
  }
  if (read_int(root, "complete", path, "complete").value_or(0) != 1) {
    throw DataError(path, "complete",
                    "incomplete statistics store (complete != 1): the run writing it did not "
                    "finish; recompute it");
  }
}

void StatsStore::Impl::create_file() {
  const fs::path parent = fs::path(path).parent_path();
  std::error_code error;
  if (!parent.empty() && !fs::is_directory(parent, error)) {
    throw ResourceError(path, "", "directory " + parent.string() + " does not exist");
  }
  temp_path = claim_temp_path(path);
  // A leftover of a killed run whose pid this process now has; this process owns the name.
  fs::remove(temp_path, error);
  with_hdf5(ErrorKind::kResource, path, "", "cannot create " + temp_path, [&] {
    const H5::FileCreatPropList fcpl;  // the root group's creation properties too
    set_untimed(fcpl.getId());
    file = H5::H5File(temp_path, H5F_ACC_EXCL, fcpl, file_access());
    const H5::Group root = file.openGroup("/");
    write_string(root, "format", kFormat);
    write_int(root, "format_version", kFormatVersion);
    write_string(root, "lathe_version", LATHE_VERSION);
    const uint8_t incomplete = 0;
    root.createAttribute("complete", H5::PredType::STD_U8LE, H5::DataSpace(H5S_SCALAR))
        .write(H5::PredType::NATIVE_UINT8, &incomplete);
  });
}

void StatsStore::Impl::copy_entries_from(const H5::H5File& source) {
  with_hdf5(ErrorKind::kResource, path, "", "cannot copy entries into " + temp_path, [&] {
    const H5::Group from = source.openGroup("/");
    const H5::Group to = file.openGroup("/");
    for (hsize_t i = 0; i < from.getNumObjs(); ++i) {
      const std::string name = from.getObjnameByIdx(i);
      h5_check(
          H5Ocopy(from.getId(), name.c_str(), to.getId(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT),
          "H5Ocopy");
    }
  });
}

StatsInfo StatsStore::Impl::read_info(const H5::DataSet& dataset, const std::string& field) const {
  StatsInfo info;
  info.fingerprints.weights = required_string(dataset, "weights_fingerprint", path, field);
  info.fingerprints.calibration = required_string(dataset, "calibration_fingerprint", path, field);
  info.fingerprints.options = required_string(dataset, "options_fingerprint", path, field);
  info.lathe_version = required_string(dataset, "lathe_version", path, field);
  info.dtype = required_string(dataset, "dtype", path, field);
  const std::optional<int64_t> tokens = read_int(dataset, "tokens", path, field);
  if (!tokens || *tokens < 0) throw DataError(path, field, "attribute 'tokens' missing or < 0");
  info.tokens = *tokens;

  const ElementType* type = find_type(info.dtype);
  const H5::DataType stored = dataset.getDataType();
  if (type == nullptr || stored.getClass() != type->h5_class || stored.getSize() != type->size) {
    throw DataError(path, field,
                    "dtype '" + info.dtype + "' is unknown or does not match the dataset's type");
  }
  const H5::DataSpace space = dataset.getSpace();
  std::vector<hsize_t> dims(static_cast<size_t>(std::max(space.getSimpleExtentNdims(), 0)));
  space.getSimpleExtentDims(dims.data());
  info.shape.assign(dims.begin(), dims.end());
  return info;
}

void StatsStore::Impl::write_entry(const StatsKey& key, const at::Tensor& value,
                                   const ElementType& type, const StatsFingerprints& fingerprints,
                                   int64_t tokens) {
  const std::vector<std::string> links = key_links(key, path);
  H5::Group group = file.openGroup("/");
  for (size_t i = 0; i + 1 < links.size(); ++i) group = open_or_create_group(group, links[i]);
  if (group.nameExists(links.back())) group.unlink(links.back());

  const std::vector<hsize_t> dims(value.sizes().begin(), value.sizes().end());
  const H5::DataSpace space = dims.empty()
                                  ? H5::DataSpace(H5S_SCALAR)
                                  : H5::DataSpace(static_cast<int>(dims.size()), dims.data());
  const H5::DSetCreatPropList dcpl;
  set_untimed(dcpl.getId());
  const H5::DataSet dataset = group.createDataSet(links.back(), type.file_type(), space, dcpl);
  if (value.numel() > 0) dataset.write(value.data_ptr(), type.memory_type());

  write_string(dataset, "weights_fingerprint", fingerprints.weights);
  write_string(dataset, "calibration_fingerprint", fingerprints.calibration);
  write_string(dataset, "options_fingerprint", fingerprints.options);
  write_string(dataset, "lathe_version", LATHE_VERSION);
  write_string(dataset, "dtype", type.dtype);
  write_int(dataset, "tokens", tokens);
}

void StatsStore::Impl::collect_keys(std::vector<StatsKey>& keys) const {
  // Every object must sit at depth 4 as group/group/group/dataset with names the layout allows.
  const auto expect = [&](const H5::Group& parent, const std::string& name, H5O_type_t type,
                          const std::string& at) {
    if (parent.childObjType(name) != type) {
      throw DataError(path, at,
                      "unexpected object: the store layout is <kind>/layer_<i>/<tap>/<task>");
    }
  };
  const H5::Group root = file.openGroup("/");
  for (hsize_t a = 0; a < root.getNumObjs(); ++a) {
    const std::string kind = root.getObjnameByIdx(a);
    expect(root, kind, H5O_TYPE_GROUP, kind);
    const H5::Group kind_group = root.openGroup(kind);
    for (hsize_t b = 0; b < kind_group.getNumObjs(); ++b) {
      const std::string layer_name = kind_group.getObjnameByIdx(b);
      const std::string at = kind + "/" + layer_name;
      const std::optional<int64_t> layer = parse_layer_group(layer_name);
      if (!layer) throw DataError(path, at, "group name is not layer_<i> or all_layers");
      expect(kind_group, layer_name, H5O_TYPE_GROUP, at);
      const H5::Group layer_group = kind_group.openGroup(layer_name);
      for (hsize_t c = 0; c < layer_group.getNumObjs(); ++c) {
        const std::string tap = layer_group.getObjnameByIdx(c);
        expect(layer_group, tap, H5O_TYPE_GROUP, at + "/" + tap);
        const H5::Group tap_group = layer_group.openGroup(tap);
        for (hsize_t d = 0; d < tap_group.getNumObjs(); ++d) {
          const std::string task = tap_group.getObjnameByIdx(d);
          expect(tap_group, task, H5O_TYPE_DATASET, at + "/" + tap + "/" + task);
          keys.push_back(StatsKey{kind, *layer, tap, task});
        }
      }
    }
  }
}

StatsStore::StatsStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StatsStore::~StatsStore() = default;
StatsStore::StatsStore(StatsStore&&) noexcept = default;
StatsStore& StatsStore::operator=(StatsStore&&) noexcept = default;

StatsStore StatsStore::create(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->create_file();
  return StatsStore(std::move(impl));
}

StatsStore StatsStore::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->open_readonly();
  return StatsStore(std::move(impl));
}

StatsStore StatsStore::update(const std::string& path) {
  StatsStore source = open(path);
  StatsStore store = create(path);
  store.impl_->copy_entries_from(source.impl_->file);
  return store;
}

const std::string& StatsStore::path() const {
  return impl_->path;
}

bool StatsStore::writable() const {
  return impl_->writable();
}

void StatsStore::put(const StatsKey& key, const at::Tensor& value,
                     const StatsFingerprints& fingerprints, int64_t tokens) {
  impl_->require_writable("put");
  const std::string field = to_string(key);
  key_links(key, impl_->path);
  const std::pair<const char*, const std::string*> inputs[] = {
      {"weights", &fingerprints.weights},
      {"calibration", &fingerprints.calibration},
      {"options", &fingerprints.options}};
  for (const auto& [input, fingerprint] : inputs) {
    if (!is_fingerprint(*fingerprint)) {
      throw InternalError(
          impl_->path, field,
          std::string(input) + " fingerprint '" + *fingerprint + "' is not sha256:<64 hex>");
    }
  }
  if (tokens < 0) throw InternalError(impl_->path, field, "token count must be >= 0");
  const ElementType* type = find_type(value.scalar_type());
  if (type == nullptr) {
    throw UnsupportedError(impl_->path, field,
                           std::string("cannot store dtype ") + c10::toString(value.scalar_type()) +
                               " (supported: float32/64, float16, bfloat16, int64, int32, "
                               "uint8, bool)");
  }
  const at::Tensor cpu = value.to(at::kCPU).contiguous();
  with_hdf5(ErrorKind::kResource, impl_->path, field, "cannot write statistic",
            [&] { impl_->write_entry(key, cpu, *type, fingerprints, tokens); });
}

StatsInfo StatsStore::info(const StatsKey& key) const {
  const std::string field = to_string(key);
  return with_hdf5(ErrorKind::kData, impl_->path, field, "cannot read statistic",
                   [&] { return impl_->read_info(impl_->require(key), field); });
}

namespace {

// One clause per input whose fingerprint differs, e.g. "calibration data changed: stored sha256:..,
// now sha256:.."; empty when every input matches.
std::string changed_inputs(const StatsFingerprints& stored, const StatsFingerprints& now) {
  const std::tuple<const char*, const std::string*, const std::string*> inputs[] = {
      {"model weights", &stored.weights, &now.weights},
      {"calibration data", &stored.calibration, &now.calibration},
      {"collector options", &stored.options, &now.options}};
  std::string message;
  for (const auto& [input, before, after] : inputs) {
    if (*before == *after) continue;
    if (!message.empty()) message += "; ";
    message += std::string(input) + " changed: stored " + *before + ", now " + *after;
  }
  return message;
}

}  // namespace

at::Tensor StatsStore::get(const StatsKey& key, const StatsFingerprints& expected) const {
  const std::string field = to_string(key);
  return with_hdf5(ErrorKind::kData, impl_->path, field, "cannot read statistic", [&] {
    const H5::DataSet dataset = impl_->require(key);
    const StatsInfo stored = impl_->read_info(dataset, field);
    const std::string changed = changed_inputs(stored.fingerprints, expected);
    if (!changed.empty()) {
      throw DataError(impl_->path, field, "stale statistic, recompute it: " + changed);
    }
    const ElementType& type = *find_type(stored.dtype);
    at::Tensor value = at::empty(stored.shape, at::TensorOptions().dtype(type.scalar));
    if (value.numel() > 0) dataset.read(value.data_ptr(), type.memory_type());
    if (type.scalar == c10::ScalarType::Bool && value.view(at::kByte).gt(1).any().item<bool>()) {
      throw DataError(impl_->path, field, "BOOL dataset holds values other than 0 and 1");
    }
    return value;
  });
}

at::Tensor StatsStore::get_as_stored(const StatsKey& key) const {
  return get(key, info(key).fingerprints);
}

bool StatsStore::is_current(const StatsKey& key, const StatsFingerprints& expected) const {
  if (!contains(key)) return false;
  return changed_inputs(info(key).fingerprints, expected).empty();
}

bool StatsStore::contains(const StatsKey& key) const {
  return with_hdf5(ErrorKind::kData, impl_->path, to_string(key), "cannot read store",
                   [&] { return impl_->find(key).has_value(); });
}

std::vector<StatsKey> StatsStore::keys() const {
  std::vector<StatsKey> keys;
  with_hdf5(ErrorKind::kData, impl_->path, "", "cannot list statistics",
            [&] { impl_->collect_keys(keys); });
  std::sort(keys.begin(), keys.end());
  return keys;
}

void StatsStore::commit() {
  impl_->require_writable("commit");
  Impl& impl = *impl_;
  try {
    with_hdf5(ErrorKind::kResource, impl.path, "", "cannot finish " + impl.temp_path, [&] {
      const uint8_t complete = 1;
      impl.file.openGroup("/")
          .openAttribute("complete")
          .write(H5::PredType::NATIVE_UINT8, &complete);
      impl.file.flush(H5F_SCOPE_GLOBAL);
      impl.file.close();
    });
    fsync_path(impl.temp_path, impl.path);
    if (std::rename(impl.temp_path.c_str(), impl.path.c_str()) != 0) {
      throw ResourceError(
          impl.path, "",
          "cannot rename " + impl.temp_path + " into place: " + std::strerror(errno));
    }
  } catch (...) {
    impl.discard();
    throw;
  }
  release_temp_path(impl.temp_path);
  impl.temp_path.clear();
  // The rename is durable only once the directory entry is on disk.
  const fs::path parent = fs::path(impl.path).parent_path();
  fsync_path(parent.empty() ? "." : parent.string(), impl.path);
  impl.open_readonly();
}

StatsKey calibration_description_key() {
  return {"calibration_description", StatsKey::kAllLayers, "input", "all"};
}

std::optional<std::string> stored_calibration_description(const StatsStore& store) {
  const StatsKey key = calibration_description_key();
  if (!store.contains(key)) return std::nullopt;
  const at::Tensor bytes = store.get_as_stored(key).contiguous();
  return std::string(static_cast<const char*>(bytes.data_ptr()),
                     static_cast<size_t>(bytes.numel()));
}

}  // namespace lathe
