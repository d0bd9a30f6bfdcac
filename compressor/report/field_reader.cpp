#include "compressor/report/field_reader.h"

#include <cmath>

#include "compressor/common/errors.h"

namespace lathe::report_detail {

std::string describe(const nlohmann::json& value) {
  if (value.is_number() || value.is_string() || value.is_boolean()) {
    std::string text = value.dump();
    if (text.size() > 40) text = text.substr(0, 37) + "...";
    return std::string(value.is_string()    ? "string "
                       : value.is_boolean() ? "boolean "
                                            : "number ") +
           text;
  }
  return value.type_name();
}

FieldReader::FieldReader(const nlohmann::json& object, std::string where, std::string path)
    : object_(object), where_(std::move(where)), path_(std::move(path)) {
  if (!object_.is_object()) {
    throw DataError(where_, path_, "expected a JSON object, found " + describe(object_));
  }
}

std::string FieldReader::field(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

void FieldReader::fail(const std::string& key, const std::string& message) const {
  throw DataError(where_, field(key), message);
}

const nlohmann::json* FieldReader::find(const std::string& key) const {
  auto it = object_.find(key);
  return it == object_.end() ? nullptr : &*it;
}

const nlohmann::json& FieldReader::required(const std::string& key) const {
  const nlohmann::json* value = find(key);
  if (!value) fail(key, "required field is missing");
  return *value;
}

std::string FieldReader::string(const std::string& key) const {
  const nlohmann::json& value = required(key);
  if (!value.is_string()) fail(key, "expected a string, found " + describe(value));
  return value.get<std::string>();
}

std::optional<int64_t> FieldReader::nullable_integer(const std::string& key, int64_t min) const {
  const nlohmann::json* found = find(key);
  if (!found || found->is_null()) return std::nullopt;
  const nlohmann::json& value = *found;
  if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    fail(key, "integer " + value.dump() + " is too large");
  }
  if (!value.is_number_integer()) fail(key, "expected an integer, found " + describe(value));
  const int64_t v = value.get<int64_t>();
  if (v < min)
    fail(key, "expected an integer >= " + std::to_string(min) + ", found " + value.dump());
  return v;
}

int64_t FieldReader::integer(const std::string& key, int64_t min) const {
  required(key);
  auto v = nullable_integer(key, min);
  if (!v) fail(key, "expected an integer, found null");
  return *v;
}

std::optional<double> FieldReader::nullable_number(const std::string& key, double min) const {
  const nlohmann::json* found = find(key);
  if (!found || found->is_null()) return std::nullopt;
  const nlohmann::json& value = *found;
  if (!value.is_number()) fail(key, "expected a number, found " + describe(value));
  const double v = value.get<double>();
  if (!std::isfinite(v) || v < min) {
    fail(key,
         "expected a finite number >= " + nlohmann::json(min).dump() + ", found " + value.dump());
  }
  return v;
}

double FieldReader::number(const std::string& key, double min) const {
  required(key);
  auto v = nullable_number(key, min);
  if (!v) fail(key, "expected a number, found null");
  return *v;
}

bool FieldReader::boolean(const std::string& key) const {
  const nlohmann::json& value = required(key);
  if (!value.is_boolean()) fail(key, "expected true or false, found " + describe(value));
  return value.get<bool>();
}

const nlohmann::json& FieldReader::array(const std::string& key) const {
  const nlohmann::json& value = required(key);
  if (!value.is_array()) fail(key, "expected an array, found " + describe(value));
  return value;
}

}  // namespace lathe::report_detail
