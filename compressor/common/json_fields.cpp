#include "compressor/common/json_fields.h"

namespace lathe {

JsonFields::JsonFields(const nlohmann::json& object, std::string file, std::string prefix)
    : object_(object), file_(std::move(file)), prefix_(std::move(prefix)) {
  if (!object_.is_object()) {
    throw ConfigError(file_, prefix_, "expected a JSON object, found " + type_of(object_));
  }
}

std::pair<const nlohmann::json*, std::string> JsonFields::find(
    std::initializer_list<const char*> names) const {
  for (const char* name : names) {
    auto it = object_.find(name);
    if (it != object_.end() && !it->is_null()) return {&*it, name};
  }
  return {nullptr, *names.begin()};
}

bool JsonFields::has(std::initializer_list<const char*> names) const {
  return find(names).first != nullptr;
}

std::string JsonFields::type_of(const nlohmann::json& value) {
  if (value.is_number_integer()) return "integer " + value.dump();
  if (value.is_number_float()) return "number " + value.dump();
  if (value.is_string()) return "string " + value.dump();
  if (value.is_boolean()) return "boolean " + value.dump();
  return value.type_name();
}

ConfigError JsonFields::error(const std::string& field, const std::string& message) const {
  return ConfigError(file_, prefix_ + field, message);
}

int64_t JsonFields::required_int(std::initializer_list<const char*> names) const {
  auto value = optional_int(names);
  if (!value) throw error(*names.begin(), "required integer field is missing");
  return *value;
}

int64_t JsonFields::int_or(std::initializer_list<const char*> names, int64_t fallback) const {
  return optional_int(names).value_or(fallback);
}

std::optional<int64_t> JsonFields::optional_int(std::initializer_list<const char*> names) const {
  auto [value, name] = find(names);
  if (!value) return std::nullopt;
  if (value->is_number_unsigned()) {
    const uint64_t u = value->get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX))
      throw error(name, "integer " + value->dump() + " is too large");
    return static_cast<int64_t>(u);
  }
  if (!value->is_number_integer())
    throw error(name, "expected an integer, found " + type_of(*value));
  return value->get<int64_t>();
}

double JsonFields::number_or(std::initializer_list<const char*> names, double fallback) const {
  auto [value, name] = find(names);
  if (!value) return fallback;
  if (!value->is_number()) throw error(name, "expected a number, found " + type_of(*value));
  return value->get<double>();
}

bool JsonFields::bool_or(std::initializer_list<const char*> names, bool fallback) const {
  auto [value, name] = find(names);
  if (!value) return fallback;
  if (!value->is_boolean()) throw error(name, "expected true or false, found " + type_of(*value));
  return value->get<bool>();
}

std::string JsonFields::string_or(std::initializer_list<const char*> names,
                                  const std::string& fallback) const {
  auto [value, name] = find(names);
  if (!value) return fallback;
  if (!value->is_string()) throw error(name, "expected a string, found " + type_of(*value));
  return value->get<std::string>();
}

std::vector<int64_t> JsonFields::int_list(std::initializer_list<const char*> names) const {
  auto [value, name] = find(names);
  std::vector<int64_t> out;
  if (!value) return out;
  if (!value->is_array())
    throw error(name, "expected a list of integers, found " + type_of(*value));
  for (size_t i = 0; i < value->size(); ++i) {
    const auto& item = (*value)[i];
    if (!item.is_number_integer()) {
      throw error(name + "[" + std::to_string(i) + "]",
                  "expected an integer, found " + type_of(item));
    }
    out.push_back(item.get<int64_t>());
  }
  return out;
}

std::vector<std::string> JsonFields::string_list(std::initializer_list<const char*> names) const {
  auto [value, name] = find(names);
  std::vector<std::string> out;
  if (!value) return out;
  if (!value->is_array()) throw error(name, "expected a list of strings, found " + type_of(*value));
  for (size_t i = 0; i < value->size(); ++i) {
    const auto& item = (*value)[i];
    if (!item.is_string()) {
      throw error(name + "[" + std::to_string(i) + "]",
                  "expected a string, found " + type_of(item));
    }
    out.push_back(item.get<std::string>());
  }
  return out;
}

const nlohmann::json* JsonFields::object_or_null(std::initializer_list<const char*> names) const {
  auto [value, name] = find(names);
  if (value && !value->is_object())
    throw error(name, "expected an object, found " + type_of(*value));
  return value;
}

}  // namespace lathe
