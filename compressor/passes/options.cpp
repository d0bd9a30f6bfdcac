// Typed pass options: canonical text, parsing and checks (options.h). The canonical forms are the
// ones the pipeline string (compressor/pipeline/pipeline_string.h) is made of: integers in decimal,
// numbers in the shortest text that reads back to the same double, true/false, lists joined by ':',
// strings bare when they are a token of [A-Za-z0-9_.+/%-] and double-quoted (\" and \\) otherwise.
#include "compressor/passes/options.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>

#include "compressor/common/errors.h"

namespace lathe {
namespace {

bool is_bare_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '+' || c == '/' || c == '%' || c == '-';
}

bool is_bare_token(const std::string& text) {
  if (text.empty()) return false;
  for (char c : text)
    if (!is_bare_char(c)) return false;
  return true;
}

std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string quote_if_needed(const std::string& text) {
  return is_bare_token(text) ? text : quoted(text);
}

/// Reads the quoted string that starts at text[pos] == '"'. Returns the index after the closing
/// quote, or npos (with *error set) when it is unterminated or uses an escape other than \" and \\.
size_t read_quoted(const std::string& text, size_t pos, std::string* out, std::string* error) {
  out->clear();
  for (size_t i = pos + 1; i < text.size(); ++i) {
    if (text[i] == '"') return i + 1;
    if (text[i] == '\\') {
      if (i + 1 < text.size() && (text[i + 1] == '"' || text[i + 1] == '\\')) {
        *out += text[++i];
        continue;
      }
      *error = "a quoted string escapes only \\\" and \\\\";
      return std::string::npos;
    }
    *out += text[i];
  }
  *error = "a quoted string lacks its closing '\"'";
  return std::string::npos;
}

/// Splits list text into items at ':' outside quotes; quoted items are unquoted, bare ones kept as
/// written. Empty text is the empty list.
bool split_items(const std::string& text, std::vector<std::string>* items,
                 std::vector<bool>* was_quoted, std::string* error) {
  items->clear();
  was_quoted->clear();
  if (text.empty()) return true;
  size_t i = 0;
  while (true) {
    std::string item;
    bool q = i < text.size() && text[i] == '"';
    if (q) {
      i = read_quoted(text, i, &item, error);
      if (i == std::string::npos) return false;
      if (i < text.size() && text[i] != ':') {
        *error = "a quoted list element must be followed by ':' or the end";
        return false;
      }
    } else {
      size_t end = text.find(':', i);
      if (end == std::string::npos) end = text.size();
      item = text.substr(i, end - i);
      i = end;
    }
    items->push_back(item);
    was_quoted->push_back(q);
    if (i >= text.size()) return true;
    ++i;  // ':'
  }
}

bool parse_int(const std::string& text, int64_t* value) {
  if (text.empty()) return false;
  for (size_t i = 0; i < text.size(); ++i)
    if (!((text[i] >= '0' && text[i] <= '9') || (i == 0 && text[i] == '-'))) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return ec == std::errc() && end == text.data() + text.size();
}

bool parse_float(const std::string& text, double* value) {
  std::string t = !text.empty() && text[0] == '+' ? text.substr(1) : text;
  bool digit = false;
  for (char c : t) {
    if (c >= '0' && c <= '9')
      digit = true;
    else if (c != '.' && c != 'e' && c != 'E' && c != '-' && c != '+')
      return false;
  }
  if (!digit) return false;
  auto [end, ec] =
      std::from_chars(t.data(), t.data() + t.size(), *value, std::chars_format::general);
  return ec == std::errc() && end == t.data() + t.size() && std::isfinite(*value);
}

std::string bound_text(const OptionSpec& spec, double bound) {
  if (spec.type == OptionType::kFloat) return fmt::format("{}", bound);
  return std::to_string(static_cast<int64_t>(bound));
}

std::string bounds_text(const OptionSpec& spec) {
  if (spec.min && spec.max)
    return " in [" + bound_text(spec, *spec.min) + ", " + bound_text(spec, *spec.max) + "]";
  if (spec.min) return " ≥ " + bound_text(spec, *spec.min);
  if (spec.max) return " ≤ " + bound_text(spec, *spec.max);
  return "";
}

}  // namespace

std::string describe_option(const OptionSpec& spec) {
  switch (spec.type) {
    case OptionType::kInt: return "an integer" + bounds_text(spec);
    case OptionType::kFloat: return "a number" + bounds_text(spec);
    case OptionType::kBool: return "true or false";
    case OptionType::kString: return "a string";
    case OptionType::kEnum: {
      std::string out = "one of ";
      for (size_t i = 0; i < spec.choices.size(); ++i) out += (i ? ", " : "") + spec.choices[i];
      return out;
    }
    case OptionType::kIntList: return "a list of integers" + bounds_text(spec);
    case OptionType::kStringList: return "a list of strings";
  }
  return "?";
}

namespace {

std::string expected_found(const OptionSpec& spec, const std::string& found,
                           const std::string& suffix = "") {
  return "expected " + describe_option(spec) + suffix + ", found " + quoted(found);
}

bool in_bounds(const OptionSpec& spec, double v) {
  return (!spec.min || v >= *spec.min) && (!spec.max || v <= *spec.max);
}

template <typename T>
const T* held(const OptionValue& value) {
  return std::get_if<T>(&value);
}

}  // namespace

const char* option_type_name(OptionType type) {
  switch (type) {
    case OptionType::kInt: return "int";
    case OptionType::kFloat: return "float";
    case OptionType::kBool: return "bool";
    case OptionType::kString: return "string";
    case OptionType::kEnum: return "enum";
    case OptionType::kIntList: return "int-list";
    case OptionType::kStringList: return "string-list";
  }
  return "?";
}

std::string format_option(const OptionSpec& spec, const OptionValue& value) {
  switch (spec.type) {
    case OptionType::kInt:
      if (auto v = held<int64_t>(value)) return std::to_string(*v);
      break;
    case OptionType::kFloat:
      if (auto v = held<double>(value)) return fmt::format("{}", *v);
      break;
    case OptionType::kBool:
      if (auto v = held<bool>(value)) return *v ? "true" : "false";
      break;
    case OptionType::kString:
    case OptionType::kEnum:
      if (auto v = held<std::string>(value)) return quote_if_needed(*v);
      break;
    case OptionType::kIntList:
      if (auto v = held<std::vector<int64_t>>(value)) {
        std::string out;
        for (size_t i = 0; i < v->size(); ++i) out += (i ? ":" : "") + std::to_string((*v)[i]);
        return out;
      }
      break;
    case OptionType::kStringList:
      if (auto v = held<std::vector<std::string>>(value)) {
        std::string out;
        for (size_t i = 0; i < v->size(); ++i) out += (i ? ":" : "") + quote_if_needed((*v)[i]);
        return out;
      }
      break;
  }
  throw InternalError("options", spec.name,
                      std::string("value does not hold a ") + option_type_name(spec.type));
}

namespace {
/// Text → value of `spec`'s type, without bounds or choices; on failure, what was wrong.
std::optional<OptionValue> parse_typed(const OptionSpec& spec, const std::string& text,
                                       std::string* error) {
  auto fail = [&](const std::string& suffix) -> std::optional<OptionValue> {
    *error = expected_found(spec, text, suffix);
    return std::nullopt;
  };
  std::string why;
  switch (spec.type) {
    case OptionType::kInt: {
      int64_t v = 0;
      return parse_int(text, &v) ? std::optional<OptionValue>(v) : fail("");
    }
    case OptionType::kFloat: {
      double v = 0;
      return parse_float(text, &v) ? std::optional<OptionValue>(v) : fail("");
    }
    case OptionType::kBool:
      if (text != "true" && text != "false") return fail("");
      return OptionValue(text == "true");
    case OptionType::kString:
    case OptionType::kEnum: {
      // A leading quote means canonical quoted text; anything else (`--set` input) is taken as is.
      if (text.empty() || text[0] != '"') return OptionValue(text);
      std::string v;
      size_t end = read_quoted(text, 0, &v, &why);
      if (end == text.size()) return OptionValue(v);
      if (end != std::string::npos) why = "text follows the closing '\"'";
      return fail(" (" + why + ")");
    }
    case OptionType::kIntList:
    case OptionType::kStringList: {
      std::vector<std::string> items;
      std::vector<bool> was_quoted;
      if (!split_items(text, &items, &was_quoted, &why)) return fail(" (" + why + ")");
      if (spec.type == OptionType::kStringList) return OptionValue(items);
      std::vector<int64_t> ints(items.size());
      for (size_t i = 0; i < items.size(); ++i)
        if (was_quoted[i] || !parse_int(items[i], &ints[i])) return fail(" separated by ':'");
      return OptionValue(ints);
    }
  }
  return fail("");
}
}  // namespace

std::optional<OptionValue> parse_option(const OptionSpec& spec, const std::string& text,
                                        std::string* error) {
  std::string ignored;
  if (error == nullptr) error = &ignored;
  auto value = parse_typed(spec, text, error);
  if (!value) return std::nullopt;
  std::string problem = check_option(spec, *value);
  if (!problem.empty()) {
    *error = problem;
    return std::nullopt;
  }
  return value;
}

std::string check_option(const OptionSpec& spec, const OptionValue& value) {
  std::string wrong_type = "expected " + describe_option(spec) + ", found a value of another type";
  switch (spec.type) {
    case OptionType::kInt:
      if (!held<int64_t>(value)) return wrong_type;
      if (!in_bounds(spec, static_cast<double>(std::get<int64_t>(value))))
        return expected_found(spec, format_option(spec, value));
      return "";
    case OptionType::kFloat:
      if (!held<double>(value)) return wrong_type;
      if (!std::isfinite(std::get<double>(value)) || !in_bounds(spec, std::get<double>(value)))
        return expected_found(spec, format_option(spec, value));
      return "";
    case OptionType::kBool: return held<bool>(value) ? "" : wrong_type;
    case OptionType::kString: return held<std::string>(value) ? "" : wrong_type;
    case OptionType::kEnum: {
      auto v = held<std::string>(value);
      if (!v) return wrong_type;
      for (const auto& choice : spec.choices)
        if (choice == *v) return "";
      return expected_found(spec, *v);
    }
    case OptionType::kIntList: {
      auto v = held<std::vector<int64_t>>(value);
      if (!v) return wrong_type;
      for (size_t i = 0; i < v->size(); ++i)
        if (!in_bounds(spec, static_cast<double>((*v)[i])))
          return expected_found(spec, std::to_string((*v)[i])) + " (element " +
                 std::to_string(i + 1) + ")";
      return "";
    }
    case OptionType::kStringList: return held<std::vector<std::string>>(value) ? "" : wrong_type;
  }
  return wrong_type;
}

OptionValues::OptionValues(const std::vector<OptionSpec>& specs) {
  for (const auto& spec : specs) {
    if (spec.default_value.empty()) continue;
    std::string error;
    auto value = parse_option(spec, spec.default_value, &error);
    if (!value) throw InternalError("options", spec.name, "bad default: " + error);
    values_[spec.name] = std::move(*value);
  }
}

namespace {
template <typename T>
const T& typed_get(const std::map<std::string, OptionValue>& values, const std::string& name,
                   const char* type) {
  auto it = values.find(name);
  if (it == values.end()) throw InternalError("options", name, "option has no value");
  auto v = std::get_if<T>(&it->second);
  if (!v) throw InternalError("options", name, std::string("option is not a ") + type);
  return *v;
}
}  // namespace

int64_t OptionValues::get_int(const std::string& name) const {
  return typed_get<int64_t>(values_, name, "int");
}
double OptionValues::get_float(const std::string& name) const {
  return typed_get<double>(values_, name, "float");
}
bool OptionValues::get_bool(const std::string& name) const {
  return typed_get<bool>(values_, name, "bool");
}
const std::string& OptionValues::get_string(const std::string& name) const {
  return typed_get<std::string>(values_, name, "string");
}
const std::vector<int64_t>& OptionValues::get_int_list(const std::string& name) const {
  return typed_get<std::vector<int64_t>>(values_, name, "int-list");
}
const std::vector<std::string>& OptionValues::get_string_list(const std::string& name) const {
  return typed_get<std::vector<std::string>>(values_, name, "string-list");
}
bool OptionValues::has(const std::string& name) const {
  return values_.count(name) != 0;
}

void OptionValues::set(const std::string& name, OptionValue value) {
  values_[name] = std::move(value);
}

std::string OptionValues::canonical(const std::vector<OptionSpec>& specs) const {
  std::string out;
  for (const auto& spec : specs) {
    auto it = values_.find(spec.name);
    if (it == values_.end()) continue;
    if (!out.empty()) out += ",";
    out += spec.name + "=" + format_option(spec, it->second);
  }
  return out;
}

OptionSpec make_option(std::string name, OptionType type, std::string default_value,
                       std::string help, std::optional<double> min, std::optional<double> max,
                       PathRole path) {
  OptionSpec o;
  o.name = std::move(name);
  o.type = type;
  o.default_value = std::move(default_value);
  o.help = std::move(help);
  o.min = min;
  o.max = max;
  o.path = path;
  return o;
}

}  // namespace lathe
