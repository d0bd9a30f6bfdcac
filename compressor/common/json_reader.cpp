#include "compressor/common/json_reader.h"

#include <algorithm>
#include <cmath>

namespace lathe {

namespace {

template <class Json>
std::string describe(const Json& value) {
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

}  // namespace

std::string describe_json(const nlohmann::json& value) {
  return describe(value);
}
std::string describe_json(const nlohmann::ordered_json& value) {
  return describe(value);
}

FieldNames::FieldNames(std::initializer_list<const char*> names) : size_(names.size()) {
  if (size_ == 0 || size_ > names_.size())
    throw InternalError("", "", "FieldNames takes 1 to 4 names, got " + std::to_string(size_));
  std::copy(names.begin(), names.end(), names_.begin());
}

template <class Json>
BasicJsonReader<Json>::BasicJsonReader(const Json& value, std::string file, std::string path,
                                       ErrorKind kind)
    : BasicJsonReader(value, std::make_shared<const std::string>(std::move(file)), std::move(path),
                      kind) {}

template <class Json>
BasicJsonReader<Json>::BasicJsonReader(const Json& value, std::shared_ptr<const std::string> file,
                                       std::string path, ErrorKind kind)
    : value_(&value), file_(std::move(file)), path_(std::move(path)), kind_(kind) {}

template <class Json>
std::string BasicJsonReader<Json>::child_path(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

template <class Json>
std::pair<const Json*, const char*> BasicJsonReader<Json>::lookup(FieldNames names) const {
  if (!value_->is_object()) fail("expected an object, found " + describe_json(*value_));
  for (const char* name : names) {
    auto it = value_->find(name);
    if (it != value_->end() && !it->is_null()) return {&*it, name};
  }
  return {nullptr, names.first()};
}

template <class Json>
bool BasicJsonReader<Json>::has(FieldNames names) const {
  return lookup(names).first != nullptr;
}

template <class Json>
BasicJsonReader<Json> BasicJsonReader<Json>::at(FieldNames names) const {
  auto [value, name] = lookup(names);
  if (!value) fail(name, "required field is missing");
  return BasicJsonReader(*value, file_, child_path(name), kind_);
}

template <class Json>
std::optional<BasicJsonReader<Json>> BasicJsonReader<Json>::find(FieldNames names) const {
  auto [value, name] = lookup(names);
  if (!value) return std::nullopt;
  return BasicJsonReader(*value, file_, child_path(name), kind_);
}

template <class Json>
void BasicJsonReader<Json>::check_keys(std::initializer_list<const char*> known) const {
  if (!value_->is_object()) fail("expected an object, found " + describe_json(*value_));
  for (const auto& item : value_->items()) {
    if (std::none_of(known.begin(), known.end(), [&](const char* k) { return item.key() == k; }))
      fail(item.key(), "unknown key");
  }
}

template <class Json>
std::optional<BasicJsonReader<Json>> BasicJsonReader<Json>::object_at(FieldNames names) const {
  auto found = find(names);
  if (found && !found->value().is_object())
    found->fail("expected an object, found " + describe_json(found->value()));
  return found;
}

template <class Json>
size_t BasicJsonReader<Json>::array_size() const {
  if (!value_->is_array()) fail("expected an array, found " + describe_json(*value_));
  return value_->size();
}

template <class Json>
BasicJsonReader<Json> BasicJsonReader<Json>::element(size_t i) const {
  return BasicJsonReader((*value_)[i], file_, path_ + "[" + std::to_string(i) + "]", kind_);
}

template <class Json>
std::string BasicJsonReader<Json>::as_string() const {
  if (!value_->is_string()) fail("expected a string, found " + describe_json(*value_));
  return value_->template get<std::string>();
}

template <class Json>
bool BasicJsonReader<Json>::as_bool() const {
  if (!value_->is_boolean()) fail("expected true or false, found " + describe_json(*value_));
  return value_->template get<bool>();
}

template <class Json>
int64_t BasicJsonReader<Json>::as_int(int64_t min) const {
  if (value_->is_number_unsigned() &&
      value_->template get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    fail("integer " + value_->dump() + " is too large");
  if (!value_->is_number_integer()) fail("expected an integer, found " + describe_json(*value_));
  const int64_t v = value_->template get<int64_t>();
  if (v < min) fail("expected an integer ≥ " + std::to_string(min) + ", found " + value_->dump());
  return v;
}

template <class Json>
double BasicJsonReader<Json>::as_number(double min) const {
  if (!value_->is_number()) fail("expected a number, found " + describe_json(*value_));
  const double v = value_->template get<double>();
  if (!std::isfinite(v) || v < min) {
    fail("expected a finite number" + (std::isinf(min) ? "" : " ≥ " + nlohmann::json(min).dump()) +
         ", found " + value_->dump());
  }
  return v;
}

template <class Json>
std::string BasicJsonReader<Json>::as_char() const {
  const std::string s = as_string();
  // One UTF-8 sequence: exactly one byte that is not a continuation byte (10xxxxxx).
  size_t starts = 0;
  for (unsigned char c : s) starts += (c & 0xC0) != 0x80;
  if (starts != 1 || (static_cast<unsigned char>(s[0]) & 0xC0) == 0x80)
    fail("expected exactly one character, found \"" + s + "\"");
  return s;
}

template <class Json>
std::vector<int64_t> BasicJsonReader<Json>::as_int_list() const {
  std::vector<int64_t> out(array_size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = element(i).as_int();
  return out;
}

template <class Json>
std::vector<std::string> BasicJsonReader<Json>::as_string_list() const {
  std::vector<std::string> out(array_size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = element(i).as_string();
  return out;
}

template <class Json>
std::string BasicJsonReader<Json>::string_at(FieldNames names) const {
  return at(names).as_string();
}

template <class Json>
bool BasicJsonReader<Json>::bool_at(FieldNames names) const {
  return at(names).as_bool();
}

template <class Json>
int64_t BasicJsonReader<Json>::int_at(FieldNames names, int64_t min) const {
  return at(names).as_int(min);
}

template <class Json>
double BasicJsonReader<Json>::number_at(FieldNames names, double min) const {
  return at(names).as_number(min);
}

template <class Json>
std::optional<int64_t> BasicJsonReader<Json>::optional_int(FieldNames names, int64_t min) const {
  auto found = find(names);
  return found ? std::optional<int64_t>(found->as_int(min)) : std::nullopt;
}

template <class Json>
std::optional<double> BasicJsonReader<Json>::optional_number(FieldNames names, double min) const {
  auto found = find(names);
  return found ? std::optional<double>(found->as_number(min)) : std::nullopt;
}

template <class Json>
std::string BasicJsonReader<Json>::string_or(FieldNames names, const std::string& fallback) const {
  auto found = find(names);
  return found ? found->as_string() : fallback;
}

template <class Json>
bool BasicJsonReader<Json>::bool_or(FieldNames names, bool fallback) const {
  auto found = find(names);
  return found ? found->as_bool() : fallback;
}

template <class Json>
int64_t BasicJsonReader<Json>::int_or(FieldNames names, int64_t fallback) const {
  auto found = find(names);
  return found ? found->as_int() : fallback;
}

template <class Json>
double BasicJsonReader<Json>::number_or(FieldNames names, double fallback) const {
  auto found = find(names);
  return found ? found->as_number() : fallback;
}

template <class Json>
std::vector<int64_t> BasicJsonReader<Json>::int_list(FieldNames names) const {
  auto found = find(names);
  return found ? found->as_int_list() : std::vector<int64_t>{};
}

template <class Json>
std::vector<std::string> BasicJsonReader<Json>::string_list(FieldNames names) const {
  auto found = find(names);
  return found ? found->as_string_list() : std::vector<std::string>{};
}

template <class Json>
void BasicJsonReader<Json>::fail(const std::string& message) const {
  throw_error(kind_, *file_, path_, message);
}

template <class Json>
void BasicJsonReader<Json>::fail(const std::string& key, const std::string& message) const {
  throw_error(kind_, *file_, child_path(key), message);
}

template <class Json>
void BasicJsonReader<Json>::unsupported(const std::string& message) const {
  throw UnsupportedError(*file_, path_, message);
}

template class BasicJsonReader<nlohmann::json>;
template class BasicJsonReader<nlohmann::ordered_json>;

}  // namespace lathe
