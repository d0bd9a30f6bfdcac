#include "compressor/common/json_reader.h"

#include <algorithm>
#include <cmath>

namespace lathe {

std::string describe_json(const nlohmann::json& value) {
  const char* kind = value.is_number_integer() ? "integer "
                     : value.is_number()       ? "number "
                     : value.is_string()       ? "string "
                     : value.is_boolean()      ? "boolean "
                                               : nullptr;
  if (!kind) return value.type_name();
  std::string text = value.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return kind + text;
}

FieldNames::FieldNames(std::initializer_list<const char*> names) : size_(names.size()) {
  if (size_ == 0 || size_ > names_.size())
    throw InternalError("", "", "FieldNames takes 1 to 4 names, got " + std::to_string(size_));
  std::copy(names.begin(), names.end(), names_.begin());
}

JsonReader::JsonReader(const nlohmann::json& value, std::string file, std::string path,
                       ErrorKind kind)
    : JsonReader(value, std::make_shared<const std::string>(std::move(file)), std::move(path),
                 kind) {}

JsonReader::JsonReader(const nlohmann::json& value, std::shared_ptr<const std::string> file,
                       std::string path, ErrorKind kind)
    : value_(&value), file_(std::move(file)), path_(std::move(path)), kind_(kind) {}

std::string JsonReader::child_path(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

std::pair<const nlohmann::json*, const char*> JsonReader::lookup(FieldNames names) const {
  if (!value_->is_object()) fail("expected an object, found " + describe_json(*value_));
  for (const char* name : names) {
    auto it = value_->find(name);
    if (it != value_->end() && !it->is_null()) return {&*it, name};
  }
  return {nullptr, names.first()};
}

bool JsonReader::has(FieldNames names) const {
  return lookup(names).first != nullptr;
}

JsonReader JsonReader::at(FieldNames names) const {
  auto [value, name] = lookup(names);
  if (!value) fail(name, "required field is missing");
  return JsonReader(*value, file_, child_path(name), kind_);
}

std::optional<JsonReader> JsonReader::find(FieldNames names) const {
  auto [value, name] = lookup(names);
  if (!value) return std::nullopt;
  return JsonReader(*value, file_, child_path(name), kind_);
}

void JsonReader::check_keys(std::initializer_list<const char*> known) const {
  if (!value_->is_object()) fail("expected an object, found " + describe_json(*value_));
  for (const auto& item : value_->items()) {
    if (std::none_of(known.begin(), known.end(), [&](const char* k) { return item.key() == k; }))
      fail(item.key(), "unknown key");
  }
}

std::optional<JsonReader> JsonReader::object_at(FieldNames names) const {
  auto found = find(names);
  if (found && !found->value().is_object())
    found->fail("expected an object, found " + describe_json(found->value()));
  return found;
}

size_t JsonReader::array_size() const {
  if (!value_->is_array()) fail("expected an array, found " + describe_json(*value_));
  return value_->size();
}

JsonReader JsonReader::element(size_t i) const {
  return JsonReader((*value_)[i], file_, path_ + "[" + std::to_string(i) + "]", kind_);
}

std::string JsonReader::as_string() const {
  if (!value_->is_string()) fail("expected a string, found " + describe_json(*value_));
  return value_->get<std::string>();
}

bool JsonReader::as_bool() const {
  if (!value_->is_boolean()) fail("expected true or false, found " + describe_json(*value_));
  return value_->get<bool>();
}

int64_t JsonReader::as_int(int64_t min) const {
  if (value_->is_number_unsigned() &&
      value_->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    fail("integer " + value_->dump() + " is too large");
  if (!value_->is_number_integer()) fail("expected an integer, found " + describe_json(*value_));
  const int64_t v = value_->get<int64_t>();
  if (v < min) fail("expected an integer ≥ " + std::to_string(min) + ", found " + value_->dump());
  return v;
}

double JsonReader::as_number(double min) const {
  if (!value_->is_number()) fail("expected a number, found " + describe_json(*value_));
  const double v = value_->get<double>();
  if (!std::isfinite(v) || v < min) {
    fail("expected a finite number" + (std::isinf(min) ? "" : " ≥ " + nlohmann::json(min).dump()) +
         ", found " + value_->dump());
  }
  return v;
}

std::string JsonReader::as_char() const {
  const std::string s = as_string();
  // One UTF-8 sequence: exactly one byte that is not a continuation byte (10xxxxxx).
  size_t starts = 0;
  for (unsigned char c : s) starts += (c & 0xC0) != 0x80;
  if (starts != 1 || (static_cast<unsigned char>(s[0]) & 0xC0) == 0x80)
    fail("expected exactly one character, found \"" + s + "\"");
  return s;
}

std::vector<int64_t> JsonReader::as_int_list() const {
  std::vector<int64_t> out(array_size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = element(i).as_int();
  return out;
}

std::vector<std::string> JsonReader::as_string_list() const {
  std::vector<std::string> out(array_size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = element(i).as_string();
  return out;
}

std::string JsonReader::string_at(FieldNames names) const {
  return at(names).as_string();
}

bool JsonReader::bool_at(FieldNames names) const {
  return at(names).as_bool();
}

int64_t JsonReader::int_at(FieldNames names, int64_t min) const {
  return at(names).as_int(min);
}

double JsonReader::number_at(FieldNames names, double min) const {
  return at(names).as_number(min);
}

std::optional<int64_t> JsonReader::optional_int(FieldNames names, int64_t min) const {
  auto found = find(names);
  return found ? std::optional<int64_t>(found->as_int(min)) : std::nullopt;
}

std::optional<double> JsonReader::optional_number(FieldNames names, double min) const {
  auto found = find(names);
  return found ? std::optional<double>(found->as_number(min)) : std::nullopt;
}

std::string JsonReader::string_or(FieldNames names, const std::string& fallback) const {
  auto found = find(names);
  return found ? found->as_string() : fallback;
}

bool JsonReader::bool_or(FieldNames names, bool fallback) const {
  auto found = find(names);
  return found ? found->as_bool() : fallback;
}

int64_t JsonReader::int_or(FieldNames names, int64_t fallback) const {
  auto found = find(names);
  return found ? found->as_int() : fallback;
}

double JsonReader::number_or(FieldNames names, double fallback) const {
  auto found = find(names);
  return found ? found->as_number() : fallback;
}

std::vector<int64_t> JsonReader::int_list(FieldNames names) const {
  auto found = find(names);
  return found ? found->as_int_list() : std::vector<int64_t>{};
}

std::vector<std::string> JsonReader::string_list(FieldNames names) const {
  auto found = find(names);
  return found ? found->as_string_list() : std::vector<std::string>{};
}

void JsonReader::fail(const std::string& message) const {
  throw_error(kind_, *file_, path_, message);
}

void JsonReader::fail(const std::string& key, const std::string& message) const {
  throw_error(kind_, *file_, child_path(key), message);
}

void JsonReader::unsupported(const std::string& message) const {
  throw UnsupportedError(*file_, path_, message);
}

}  // namespace lathe
