// Typed pass options (DESIGN.md "Core types": Pass; STYLE.md): every pass declares its options as a
// schema; recipes (YAML), `--set` overrides and the canonical pipeline string are all parsed
// against it, so unknown keys, wrong types and out-of-range values are rejected the same way
// everywhere and every option prints as `key=value`. Torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace lathe {

enum class OptionType {
  kInt,        ///< integer (YAML int; canonical decimal)
  kFloat,      ///< number (YAML int or float; canonical shortest round-trip, e.g. 0.25)
  kBool,       ///< true / false
  kString,     ///< free text
  kEnum,       ///< one of `choices`
  kIntList,    ///< list of integers; canonical "1:2:3" (':' because ',' separates options)
  kStringList  ///< list of strings; canonical "a:b:c"
};

/// What a kString option holding a file path is to the pass.
enum class PathRole {
  kNone,    ///< not a path
  kInput,   ///< a file the pass reads: the recipe check requires it to exist before anything runs
  kOutput,  ///< a file the pass writes
};

/// "int", "float", "bool", "string", "enum", "int-list", "string-list".
const char* option_type_name(OptionType type);

/// One option of a pass. Names are lower-case kebab-case ("group-size").
struct OptionSpec {
  std::string name;
  OptionType type = OptionType::kInt;
  std::string default_value;  ///< canonical text of the default; empty: no default (the option
                              ///< is absent unless given, or an error when `required`)
  std::string help;           ///< one line, printed by `lathe passes`
  std::vector<std::string> choices;  ///< kEnum only
  std::optional<double> min, max;    ///< inclusive bounds for kInt / kFloat (and list elements)
  bool required = false;
  /// kString holding a file path: a recipe resolves a relative value against its own directory
  /// (a `--set` value against the working directory), so the pipeline string holds the resolved
  /// path.
  PathRole path = PathRole::kNone;
};

/// One option's spec; bounds apply to numbers and list elements.
OptionSpec make_option(std::string name, OptionType type, std::string default_value,
                       std::string help, std::optional<double> min = {},
                       std::optional<double> max = {}, PathRole path = PathRole::kNone);

/// A value of one option.
using OptionValue = std::variant<int64_t, double, bool, std::string, std::vector<int64_t>,
                                 std::vector<std::string>>;

/// What a value of `spec` must look like, as error messages say it: "an integer in [2, 8]",
/// "one of pack, document", "a list of integers ≥ 0".
std::string describe_option(const OptionSpec& spec);

/// Canonical text of a value of `spec`'s type (what `k=v` prints and parses back).
std::string format_option(const OptionSpec& spec, const OptionValue& value);

/// Parses canonical text (pipeline strings, `--set`) for `spec`. On failure returns nullopt and
/// sets
/// `*error` (when `error` is not null) to what was expected, e.g. "expected an integer ≥ 1, found
/// \"x\"". Strings and list elements may be bare or quoted; unquoted text is taken as it is.
std::optional<OptionValue> parse_option(const OptionSpec& spec, const std::string& text,
                                        std::string* error);

/// Checks a value against the spec's type, choices and bounds; empty string when valid, else what
/// was expected (same wording as parse_option).
std::string check_option(const OptionSpec& spec, const OptionValue& value);

/// A pass's options after validation: every declared option has a value (default or given).
class OptionValues {
 public:
  OptionValues() = default;
  /// Defaults of every option of `specs` (required options stay unset: validate before use).
  explicit OptionValues(const std::vector<OptionSpec>& specs);

  int64_t get_int(const std::string& name) const;
  double get_float(const std::string& name) const;
  bool get_bool(const std::string& name) const;
  const std::string& get_string(const std::string& name) const;  ///< kString and kEnum
  const std::vector<int64_t>& get_int_list(const std::string& name) const;
  const std::vector<std::string>& get_string_list(const std::string& name) const;
  bool has(const std::string& name) const;

  void set(const std::string& name, OptionValue value);
  const std::map<std::string, OptionValue>& values() const { return values_; }

  /// "k1=v1,k2=v2" in the order of `specs`, every option that has a value included (defaults too),
  /// so the text alone reproduces the pass. Strings that are not bare tokens are double-quoted.
  std::string canonical(const std::vector<OptionSpec>& specs) const;

 private:
  std::map<std::string, OptionValue> values_;
};

}  // namespace lathe
