// Typed reading of untrusted JSON (config.json, tokenizer.json, reports, plans), with errors that
// name the file and the JSON path of the value at fault ("layers[3].rel_err",
// "pre_tokenizer.pretokenizers[1].pattern") and say what was expected and what was found. The one
// typed JSON reader of lathe; torch-free.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"

namespace lathe {

/// A short description of a JSON value for messages: `integer 3`, `number 2.5`, `string "abc"`
/// (long text cut at 40 characters), `boolean true`, `array`, `object`, `null`.
std::string describe_json(const nlohmann::json& value);
std::string describe_json(const nlohmann::ordered_json& value);

/// The name of a field, or a few aliases of it (`{"num_experts", "num_local_experts"}`): the first
/// present one is read, and an absent field is named by the first.
class FieldNames {
 public:
  FieldNames(const char* name) : names_{name}, size_(1) {}  // NOLINT: implicit by design
  FieldNames(std::initializer_list<const char*> names);     // NOLINT: implicit by design
  const char* const* begin() const { return names_.data(); }
  const char* const* end() const { return names_.data() + size_; }
  const char* first() const { return names_[0]; }

 private:
  std::array<const char*, 4> names_{};
  size_t size_;
};

/// One JSON value of a file and where it sits (JsonReader for nlohmann::json, OrderedJsonReader
/// for nlohmann::ordered_json where the order of an object's keys means something). Failures throw
/// the reader's error kind (ConfigError for config.json, DataError for data files by default) with
/// where = the file and field = the JSON path. A field that is present but `null` counts as absent,
/// the way transformers and tokenizers treat it. Getters taking a list of names accept aliases (the
/// first present wins; absent ones are named by the first). The value must outlive the reader;
/// copies are cheap.
template <class Json>
class BasicJsonReader {
 public:
  /// `file` names the source in errors; `path` is the JSON path of `value` ("" for the root).
  BasicJsonReader(const Json& value, std::string file, std::string path = "",
                  ErrorKind kind = ErrorKind::kData);

  const Json& value() const { return *value_; }
  const std::string& path() const { return path_; }
  const std::string& file() const { return *file_; }
  /// "path.key" ("key" at the root).
  std::string child_path(const std::string& key) const;

  // --- objects
  /// True when any of the names is present and not null; fails unless the value is an object.
  bool has(FieldNames names) const;
  /// The value under the first present name; fails when none is present.
  BasicJsonReader at(FieldNames names) const;
  /// The value under the first present name, nullopt when none is present.
  std::optional<BasicJsonReader> find(FieldNames names) const;
  /// Fails at the first key of this object that is not among `known` ("unknown key"): formats
  /// lathe owns are read strictly, so a misspelt field is not silently ignored.
  void check_keys(std::initializer_list<const char*> known) const;
  /// The object under a field, nullopt when absent; fails when present but not an object.
  std::optional<BasicJsonReader> object_at(FieldNames names) const;

  // --- arrays
  /// Number of elements; fails unless the value is an array.
  size_t array_size() const;
  /// Element `i` of an array value (call array_size first).
  BasicJsonReader element(size_t i) const;

  // --- this value, typed
  std::string as_string() const;
  bool as_bool() const;
  /// An integer (JSON integers only: 2.0 is refused) not below `min`.
  int64_t as_int(int64_t min = std::numeric_limits<int64_t>::min()) const;
  /// A finite number (integers accepted) not below `min`.
  double as_number(double min = -std::numeric_limits<double>::infinity()) const;
  /// Exactly one Unicode character (tokenizers' `char` fields), as UTF-8.
  std::string as_char() const;
  std::vector<int64_t> as_int_list() const;
  std::vector<std::string> as_string_list() const;

  // --- fields, typed (X_at: required, optional_X: nullopt when absent, X_or: a fallback)
  std::string string_at(FieldNames names) const;
  bool bool_at(FieldNames names) const;
  int64_t int_at(FieldNames names, int64_t min = std::numeric_limits<int64_t>::min()) const;
  double number_at(FieldNames names, double min = -std::numeric_limits<double>::infinity()) const;
  /// The "type" field of a component object (tokenizer.json's normalizers, decoders, ...).
  std::string type() const { return string_at("type"); }
  std::optional<int64_t> optional_int(FieldNames names,
                                      int64_t min = std::numeric_limits<int64_t>::min()) const;
  std::optional<double> optional_number(
      FieldNames names, double min = -std::numeric_limits<double>::infinity()) const;
  std::string string_or(FieldNames names, const std::string& fallback) const;
  bool bool_or(FieldNames names, bool fallback) const;
  int64_t int_or(FieldNames names, int64_t fallback) const;
  double number_or(FieldNames names, double fallback) const;
  /// Lists, empty when absent.
  std::vector<int64_t> int_list(FieldNames names) const;
  std::vector<std::string> string_list(FieldNames names) const;

  // --- failing
  /// The reader's error kind at this value: "<file>: <path>: <message>".
  [[noreturn]] void fail(const std::string& message) const;
  /// The reader's error kind at field `key` of this value.
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;
  /// UnsupportedError at this value: well-formed input lathe does not handle.
  [[noreturn]] void unsupported(const std::string& message) const;

 private:
  BasicJsonReader(const Json& value, std::shared_ptr<const std::string> file, std::string path,
                  ErrorKind kind);
  /// The first present, non-null field among `names` and its name (the first name when absent).
  std::pair<const Json*, const char*> lookup(FieldNames names) const;

  const Json* value_;
  std::shared_ptr<const std::string> file_;
  std::string path_;
  ErrorKind kind_;
};

using JsonReader = BasicJsonReader<nlohmann::json>;
using OrderedJsonReader = BasicJsonReader<nlohmann::ordered_json>;
extern template class BasicJsonReader<nlohmann::json>;
extern template class BasicJsonReader<nlohmann::ordered_json>;

}  // namespace lathe
