#include "calibrate/tokenizer/json_reader.h"

#include "calibrate/tokenizer/unicode.h"

namespace lathe::tok {

bool JsonReader::has(const char* key) const {
  if (!value_->is_object()) fail("expected an object, found " + type_name(*value_));
  auto it = value_->find(key);
  return it != value_->end() && !it->is_null();
}

JsonReader JsonReader::at(const char* key) const {
  if (!has(key)) JsonReader(*value_, *file_, child_path(key)).fail("missing required field");
  return JsonReader((*value_)[key], *file_, child_path(key));
}

std::optional<JsonReader> JsonReader::find(const char* key) const {
  if (!has(key)) return std::nullopt;
  return JsonReader((*value_)[key], *file_, child_path(key));
}

JsonReader JsonReader::element(size_t i) const {
  return JsonReader((*value_)[i], *file_, path_ + "[" + std::to_string(i) + "]");
}

size_t JsonReader::array_size() const {
  if (!value_->is_array()) fail("expected an array, found " + type_name(*value_));
  return value_->size();
}

std::string JsonReader::as_string() const {
  if (!value_->is_string()) fail("expected a string, found " + type_name(*value_));
  return value_->get<std::string>();
}

bool JsonReader::as_bool() const {
  if (!value_->is_boolean()) fail("expected true or false, found " + type_name(*value_));
  return value_->get<bool>();
}

int64_t JsonReader::as_int() const {
  if (value_->is_number_unsigned()) {
    const auto v = value_->get<uint64_t>();
    if (v > static_cast<uint64_t>(INT64_MAX)) fail("integer out of range");
    return static_cast<int64_t>(v);
  }
  if (!value_->is_number_integer()) fail("expected an integer, found " + type_name(*value_));
  return value_->get<int64_t>();
}

double JsonReader::as_number() const {
  if (!value_->is_number()) fail("expected a number, found " + type_name(*value_));
  return value_->get<double>();
}

std::string JsonReader::as_char() const {
  const std::string s = as_string();
  size_t i = 0;
  if (!s.empty()) unicode::next_code_point(s, i);
  if (s.empty() || i != s.size()) fail("expected exactly one character, found \"" + s + "\"");
  return s;
}

std::string JsonReader::string_or(const char* key, const std::string& fallback) const {
  return has(key) ? at(key).as_string() : fallback;
}

bool JsonReader::bool_or(const char* key, bool fallback) const {
  return has(key) ? at(key).as_bool() : fallback;
}

int64_t JsonReader::int_or(const char* key, int64_t fallback) const {
  return has(key) ? at(key).as_int() : fallback;
}

void JsonReader::fail(const std::string& message) const {
  throw DataError(*file_, path_, message);
}

void JsonReader::unsupported(const std::string& message) const {
  throw UnsupportedError(*file_, path_, message);
}

std::string JsonReader::child_path(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

std::string JsonReader::type_name(const nlohmann::json& value) {
  return value.type_name();
}

}  // namespace lathe::tok
