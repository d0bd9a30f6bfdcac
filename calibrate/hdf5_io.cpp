#include "calibrate/hdf5_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace lathe::h5 {

// ---- errors ------------------------------------------------------------------------------------
// HDF5 prints its error stack to stderr by default and the C++ wrapper's exceptions only say
// which API call failed ("H5Fopen failed"). Instead of printing (as H5::Exception::dontPrint()
// would silence it), lathe's handler keeps the innermost cause ("truncated file: eof = ..."),
// which is what a user needs, for the error it raises. Error stacks and handlers are per thread.
namespace {

thread_local std::string t_hdf5_reason;

herr_t keep_innermost(unsigned n, const H5E_error2_t* error, void* reason) {
  if (n == 0 && error->desc != nullptr) *static_cast<std::string*>(reason) = error->desc;
  return 0;
}

herr_t record_hdf5_error(hid_t stack, void*) {
  if (!t_hdf5_reason.empty()) return 0;  // the first failure is the cause; later ones cleanup
  std::string reason;
  H5Ewalk2(stack, H5E_WALK_UPWARD, keep_innermost, &reason);
  t_hdf5_reason = reason.empty() ? "unknown HDF5 error" : reason;
  return 0;
}

}  // namespace

std::string& last_reason() {
  return t_hdf5_reason;
}

void install_error_handler() {
  H5Eset_auto2(H5E_DEFAULT, record_hdf5_error, nullptr);
  t_hdf5_reason.clear();
}

// ---- attributes --------------------------------------------------------------------------------
H5::StrType utf8_string_type() {
  H5::StrType type(H5::PredType::C_S1, H5T_VARIABLE);
  type.setCset(H5T_CSET_UTF8);
  return type;
}

void write_string(const H5::H5Object& object, const char* name, const std::string& value) {
  const H5::StrType type = utf8_string_type();
  H5::Attribute attribute = object.createAttribute(name, type, H5::DataSpace(H5S_SCALAR));
  attribute.write(type, value);
}

void write_int(const H5::H5Object& object, const char* name, int64_t value) {
  H5::Attribute attribute =
      object.createAttribute(name, H5::PredType::STD_I64LE, H5::DataSpace(H5S_SCALAR));
  attribute.write(H5::PredType::NATIVE_INT64, &value);
}

// Reads a scalar attribute of the expected class; nullopt when absent. DataError (field =
// `field`) when present with another type or shape.
H5::Attribute open_scalar_attribute(const H5::H5Object& object, const char* name,
                                    H5T_class_t expected, const std::string& where,
                                    const std::string& field) {
  H5::Attribute attribute = object.openAttribute(name);
  const bool scalar = attribute.getSpace().getSimpleExtentNpoints() == 1;
  if (attribute.getTypeClass() != expected || !scalar) {
    throw DataError(where, field,
                    std::string("attribute '") + name + "' has an unexpected type or shape");
  }
  return attribute;
}

std::optional<std::string> read_string(const H5::H5Object& object, const char* name,
                                       const std::string& where, const std::string& field) {
  if (!object.attrExists(name)) return std::nullopt;
  const H5::Attribute attribute = open_scalar_attribute(object, name, H5T_STRING, where, field);
  std::string value;
  attribute.read(attribute.getStrType(), value);
  return value;
}

std::optional<int64_t> read_int(const H5::H5Object& object, const char* name,
                                const std::string& where, const std::string& field) {
  if (!object.attrExists(name)) return std::nullopt;
  const H5::Attribute attribute = open_scalar_attribute(object, name, H5T_INTEGER, where, field);
  int64_t value = 0;
  attribute.read(H5::PredType::NATIVE_INT64, &value);
  return value;
}

std::string required_string(const H5::H5Object& object, const char* name, const std::string& where,
                            const std::string& field) {
  std::optional<std::string> value = read_string(object, name, where, field);
  if (!value) throw DataError(where, field, std::string("attribute '") + name + "' is missing");
  return *value;
}

// ---- files -------------------------------------------------------------------------------------
// Locking is best effort: on filesystems without flock (some Lustre/NFS mounts) HDF5 would
// otherwise refuse to open any file.
H5::FileAccPropList file_access() {
  H5::FileAccPropList fapl;
  h5_check(H5Pset_file_locking(fapl.getId(), true, true), "H5Pset_file_locking");
  return fapl;
}

// Groups and datasets record no modification times, so files are byte-reproducible.
void set_untimed(hid_t object_create_plist) {
  h5_check(H5Pset_obj_track_times(object_create_plist, false), "H5Pset_obj_track_times");
}

H5::Group open_or_create_group(const H5::Group& parent, const std::string& name) {
  if (!parent.nameExists(name)) {
    const CId gcpl(H5Pcreate(H5P_GROUP_CREATE), H5Pclose, "H5Pcreate");
    set_untimed(gcpl.get());
    const CId group(H5Gcreate2(parent.getId(), name.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT),
                    H5Gclose, "H5Gcreate2");
  }
  return parent.openGroup(name);
}

void fsync_path(const std::string& path, const std::string& where) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) {
    const std::string reason = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    throw ResourceError(where, "", "cannot sync " + path + ": " + reason);
  }
  ::close(fd);
}

}  // namespace lathe::h5
