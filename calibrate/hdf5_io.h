// Small helpers over the HDF5 C++ API shared by lathe's HDF5 files (the statistics store,
// calibrate/stats_store.h, and the golden vectors of the verification harness,
// calibrate/golden_store.h): errors that name the file and keep HDF5's innermost reason, scalar
// attributes, untimed (byte-reproducible) groups, best-effort file locking, fsync.
#pragma once

#include <H5Cpp.h>

#include <cstdint>
#include <optional>
#include <string>

#include "compressor/common/errors.h"

namespace lathe::h5 {

/// The innermost cause of the last HDF5 failure on this thread (filled by the error handler
/// with_hdf5 installs).
std::string& last_reason();
/// Installs lathe's HDF5 error handler on this thread and clears last_reason().
void install_error_handler();

/// Runs `action`, turning an H5::Exception into a lathe error of `kind` (DataError while reading,
/// ResourceError while writing) naming the file and the key; lathe errors pass through.
template <typename Action>
auto with_hdf5(ErrorKind kind, const std::string& where, const std::string& field,
               const std::string& doing, Action&& action) -> decltype(action()) {
  install_error_handler();
  try {
    return action();
  } catch (const H5::Exception& e) {
    const std::string reason = last_reason().empty() ? e.getDetailMsg() : last_reason();
    throw_error(kind, where, field, doing + ": " + reason);
  }
}

/// For the few C API calls the C++ wrapper lacks: a negative result becomes an H5::Exception.
template <typename Result>
Result h5_check(Result result, const char* function) {
  if (result < 0) throw H5::Exception(function, "failed");
  return result;
}

H5::StrType utf8_string_type();
void write_string(const H5::H5Object& object, const char* name, const std::string& value);
void write_int(const H5::H5Object& object, const char* name, int64_t value);
/// Scalar attributes; nullopt when absent, DataError (field = `field`) when of another type or
/// shape.
std::optional<std::string> read_string(const H5::H5Object& object, const char* name,
                                       const std::string& where, const std::string& field);
std::optional<int64_t> read_int(const H5::H5Object& object, const char* name,
                                const std::string& where, const std::string& field);
std::string required_string(const H5::H5Object& object, const char* name, const std::string& where,
                            const std::string& field);

/// File access with best-effort locking (filesystems without flock would otherwise refuse).
H5::FileAccPropList file_access();

/// Owns an id from the C API, closing it on scope exit.
class CId {
 public:
  CId(hid_t id, herr_t (*close)(hid_t), const char* function)
      : id_(h5_check(id, function)), close_(close) {}
  ~CId() { close_(id_); }
  CId(const CId&) = delete;
  CId& operator=(const CId&) = delete;
  hid_t get() const { return id_; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

/// Objects created with this property list record no modification times.
void set_untimed(hid_t object_create_plist);
/// `parent/name`, created (untimed) when missing.
H5::Group open_or_create_group(const H5::Group& parent, const std::string& name);

/// fsync(2) of a file or directory; ResourceError naming `where` on failure.
void fsync_path(const std::string& path, const std::string& where);

}  // namespace lathe::h5
