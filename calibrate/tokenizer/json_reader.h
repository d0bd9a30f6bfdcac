// Typed reading of tokenizer.json values whose errors name the file and the JSON path of the value
// ("pre_tokenizer.pretokenizers[1].pattern"). A malformed or inconsistent value is a DataError;
// a well-formed component lathe does not implement is an UnsupportedError.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"

namespace lathe::tok {

/// One JSON value of a tokenizer file and where it sits. The value must outlive the reader.
class JsonReader {
 public:
  /// `file` names the source in errors; `path` is the JSON path of `value` ("" for the root).
  JsonReader(const nlohmann::json& value, const std::string& file, std::string path)
      : value_(&value), file_(&file), path_(std::move(path)) {}

  const nlohmann::json& value() const { return *value_; }
  const std::string& path() const { return path_; }
  const std::string& file() const { return *file_; }

  /// True when `key` is present and not null (tokenizers treats null as absent).
  bool has(const char* key) const;
  /// The value under `key`; DataError when absent or null.
  JsonReader at(const char* key) const;
  /// The value under `key`, nullopt when absent or null.
  std::optional<JsonReader> find(const char* key) const;
  /// Element `i` of an array value (call `array_size` first).
  JsonReader element(size_t i) const;
  /// Number of elements; DataError unless the value is an array.
  size_t array_size() const;

  /// The value as a string / bool / integer; DataError on a different JSON type.
  std::string as_string() const;
  bool as_bool() const;
  int64_t as_int() const;
  double as_number() const;
  /// The value as exactly one Unicode character (tokenizers' `char` fields), as UTF-8.
  std::string as_char() const;

  /// Convenience: required string field, optional fields with fallbacks.
  std::string string_at(const char* key) const { return at(key).as_string(); }
  std::string string_or(const char* key, const std::string& fallback) const;
  bool bool_or(const char* key, bool fallback) const;
  int64_t int_or(const char* key, int64_t fallback) const;

  /// The "type" field of a component object.
  std::string type() const { return string_at("type"); }

  /// DataError at this value: "<file>: <path>: <message>".
  [[noreturn]] void fail(const std::string& message) const;
  /// UnsupportedError at this value.
  [[noreturn]] void unsupported(const std::string& message) const;

 private:
  std::string child_path(const std::string& key) const;
  static std::string type_name(const nlohmann::json& value);

  const nlohmann::json* value_;
  const std::string* file_;
  std::string path_;
};

}  // namespace lathe::tok
