// Typed reads from untrusted report/eval JSON, each failure a DataError naming the file and the
// field path ("layers[3].rel_err"). Internal to compressor/report. Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace lathe::report_detail {

/// A short description of a JSON value's type for messages: `string "abc"`, `array`, ...
std::string describe(const nlohmann::json& value);

/// Reads fields of one object; `path` is the object's own field path ("" at the top level).
class FieldReader {
 public:
  /// Throws DataError(where, path) unless `object` is a JSON object.
  FieldReader(const nlohmann::json& object, std::string where, std::string path);

  /// "path.key" (or "key" at the top level).
  std::string field(const std::string& key) const;
  /// The value under `key`, nullptr when absent; null values are returned, not skipped.
  const nlohmann::json* find(const std::string& key) const;
  /// The value under `key`; throws when absent.
  const nlohmann::json& required(const std::string& key) const;

  std::string string(const std::string& key) const;
  /// A required integer not below `min`.
  int64_t integer(const std::string& key, int64_t min = 0) const;
  /// An integer not below `min`; nullopt when absent or null.
  std::optional<int64_t> nullable_integer(const std::string& key, int64_t min = 0) const;
  /// A finite number (integers accepted) not below `min`.
  double number(const std::string& key, double min) const;
  /// A finite number not below `min`; nullopt when absent or null.
  std::optional<double> nullable_number(const std::string& key, double min) const;
  bool boolean(const std::string& key) const;
  /// The array under `key` (required).
  const nlohmann::json& array(const std::string& key) const;

  [[noreturn]] void fail(const std::string& key, const std::string& message) const;
  const std::string& where() const { return where_; }

 private:
  const nlohmann::json& object_;
  std::string where_;
  std::string path_;
};

}  // namespace lathe::report_detail
