// Typed access to the fields of an untrusted JSON object, with errors that name file and field.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"

namespace lathe {

/// Reads fields of one JSON object. Every getter throws ConfigError(file, field, ...) saying what
/// was expected and what was found. A field that is present but `null` counts as absent, the way
/// transformers treats it. Getters taking a list of names accept aliases (first present wins).
class JsonFields {
 public:
  /// `object` must outlive this reader. `file` names the source in errors; `prefix` is prepended
  /// to field names (e.g. "rope_parameters.").
  JsonFields(const nlohmann::json& object, std::string file, std::string prefix = "");

  /// True when any of the names is present and not null.
  bool has(std::initializer_list<const char*> names) const;

  /// Integer field (JSON integers only; 2.0 is rejected). Throws when absent.
  int64_t required_int(std::initializer_list<const char*> names) const;
  /// Integer field or `fallback` when absent.
  int64_t int_or(std::initializer_list<const char*> names, int64_t fallback) const;
  /// Integer field, nullopt when absent.
  std::optional<int64_t> optional_int(std::initializer_list<const char*> names) const;
  /// Number field (integer or float) or `fallback` when absent.
  double number_or(std::initializer_list<const char*> names, double fallback) const;
  /// Boolean field or `fallback` when absent.
  bool bool_or(std::initializer_list<const char*> names, bool fallback) const;
  /// String field or `fallback` when absent.
  std::string string_or(std::initializer_list<const char*> names,
                        const std::string& fallback) const;
  /// Array of integers, empty when absent.
  std::vector<int64_t> int_list(std::initializer_list<const char*> names) const;
  /// Array of strings, empty when absent.
  std::vector<std::string> string_list(std::initializer_list<const char*> names) const;
  /// The object under a field, nullptr when absent; throws when present but not an object.
  const nlohmann::json* object_or_null(std::initializer_list<const char*> names) const;

  /// A ConfigError naming `field` in this reader's file.
  ConfigError error(const std::string& field, const std::string& message) const;
  const std::string& file() const { return file_; }

 private:
  /// The first present, non-null field among `names`, and its name.
  std::pair<const nlohmann::json*, std::string> find(
      std::initializer_list<const char*> names) const;
  static std::string type_of(const nlohmann::json& value);

  const nlohmann::json& object_;
  std::string file_;
  std::string prefix_;
};

}  // namespace lathe
