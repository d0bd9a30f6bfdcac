// Recipe loading: YAML → `--set` overrides → one validation pass that collects every problem with
// its position → Recipe (recipe.h; docs/recipes.md is the schema users read).
#include "compressor/pipeline/recipe.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kTopKeys = {"model",  "output", "device", "dtype", "calibration",
                                           "passes", "search", "export", "eval",  "gate"};

std::string join(const std::vector<std::string>& items, const std::string& separator = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

OptionSpec spec_of(std::string name, OptionType type, std::optional<double> min = {},
                   std::optional<double> max = {}, std::vector<std::string> choices = {}) {
  return {std::move(name), type, "", "", std::move(choices), min, max};
}

const OptionSpec& calibrate_spec(const std::string& name) {
  for (const auto& spec : calibrate_stage_options())
    if (spec.name == name) return spec;
  throw InternalError("recipe", name, "no such calibrate option");
}

bool is_plain(const YAML::Node& node) {
  return node.Tag() == "?" || node.Tag().empty();
}

/// How a node that did not fit reads in a message.
std::string found_text(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Scalar:
      return (is_plain(node) ? "\"" : "the string \"") + node.Scalar() + "\"";
    default: return "nothing";
  }
}

/// A value in the YAML tree with the key that holds it (absent for list elements and the root)
/// and its dotted field path for messages.
struct Entry {
  bool has_key = false;
  YAML::Node key;
  YAML::Node value;
  std::string path;
};

/// Every problem found, with where it is: a file position, or the `--set` text that caused it.
class Diagnostics {
 public:
  explicit Diagnostics(std::string source) : source_(std::move(source)) {}

  void add_set_text(const std::string& text) { set_texts_.push_back(text); }

  /// Marks `node` and everything under it as written by `--set` number `index`.
  void register_set(size_t index, const YAML::Node& node) {
    set_nodes_.emplace_back(node, index);
    if (node.IsSequence() || node.IsMap())
      for (auto it = node.begin(); it != node.end(); ++it) {
        if (node.IsMap()) register_set(index, it->first);
        register_set(index, node.IsMap() ? it->second : *it);
      }
  }

  std::optional<size_t> set_index(const YAML::Node& node) const {
    for (const auto& [set_node, index] : set_nodes_)
      if (set_node.is(node)) return index;
    return std::nullopt;
  }

  /// Where `node` is, for "first given at ...": "line 3" or "--set TEXT".
  std::string place(const YAML::Node& node) const {
    if (auto index = set_index(node)) return "--set " + set_texts_[*index];
    return "line " + std::to_string(node.Mark().line + 1);
  }

  /// Where `node` is, for messages.
  RecipeLocation location(const YAML::Node& node) const {
    if (auto index = set_index(node)) return set_location(*index);
    const YAML::Mark mark = node.Mark();
    if (mark.is_null()) return {1, 0, 0, source_};
    return {0, mark.line + 1, mark.column + 1,
            source_ + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1)};
  }

  void at(const YAML::Node& node, const std::string& field, const std::string& message) {
    problems_.add(location(node), field, message);
  }

  void at_set(size_t index, const std::string& message) {
    problems_.add(set_location(index), "", message);
  }

  void throw_if_any() { problems_.throw_if_any(source_); }

 private:
  RecipeLocation set_location(size_t index) const {
    return {2, static_cast<int64_t>(index), 0, "--set " + set_texts_[index]};
  }

  std::string source_;
  std::vector<std::string> set_texts_;
  std::vector<std::pair<YAML::Node, size_t>> set_nodes_;
  RecipeProblems problems_;
};

/// The node a problem with `e` is reported at: its value, or its key when the value is empty
/// (yaml-cpp marks an empty value at the next token, which would mislead).
const YAML::Node& locate(const Entry& e) {
  return (e.value.IsNull() && e.has_key) ? e.key : e.value;
}

}  // namespace

// --- --set -------------------------------------------------------------------------------------

namespace {

/// Applies `--set` texts to the YAML tree before validation.
class SetApplier {
 public:
  explicit SetApplier(Diagnostics& diag) : diag_(diag) {}

  void apply(YAML::Node& root, size_t index, const std::string& text) {
    index_ = index;
    size_t eq = text.find('=');
    std::vector<std::string> segments;
    for (size_t start = 0; eq != std::string::npos && start <= eq;) {
      size_t dot = std::min(text.find('.', start), eq);
      segments.push_back(text.substr(start, dot - start));
      start = dot + 1;
    }
    if (eq == std::string::npos ||
        std::any_of(segments.begin(), segments.end(), [](auto& s) { return s.empty(); }))
      return diag_.at_set(index, "expected KEY=VALUE with a dotted key, e.g. passes.rtn.bits=3");
    YAML::Node value;
    if (!make_value(text.substr(eq + 1), &value)) return;
    if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
    if (segments[0] == "passes" && segments.size() > 1) return apply_to_pass(root, segments, value);
    walk(root, segments, 0, "", value);
  }

 private:
  bool make_value(const std::string& text, YAML::Node* value) {
    if (!text.empty() && (text[0] == '[' || text[0] == '{')) {
      try {
        *value = YAML::Load(text);
      } catch (const YAML::Exception& e) {
        diag_.at_set(index_, "the value is not valid YAML flow: " + e.msg);
        return false;
      }
    } else {
      *value = YAML::Node(text);
    }
    diag_.register_set(index_, *value);
    return true;
  }

  /// Descends `segments[i..]` from `node` (whose path is `path`) and assigns `value` at the end.
  void walk(YAML::Node node, const std::vector<std::string>& segments, size_t i,
            const std::string& path, const YAML::Node& value) {
    const std::string& seg = segments[i];
    const std::string here = path.empty() ? seg : path + "." + seg;
    bool last = i + 1 == segments.size();
    if (node.IsSequence()) {
      size_t k = 0;
      if (!parse_index(seg, &k) || k >= node.size())
        return diag_.at_set(index_, path + " is a list of " + std::to_string(node.size()) +
                                        " elements: expected an index below that, found \"" + seg +
                                        "\"");
      YAML::Node element = node[k];
      if (!last) return walk(element, segments, i + 1, here, value);
      element = value;
      return;
    }
    if (!node.IsMap() && !node.IsNull())
      return diag_.at_set(index_, (path.empty() ? "the recipe" : path) + " is not a map");
    for (auto it = node.begin(); it != node.end(); ++it)
      if (it->first.IsScalar() && it->first.Scalar() == seg) {
        YAML::Node existing = it->second;
        if (!last) return walk(existing, segments, i + 1, here, value);
        existing = value;
        return;
      }
    YAML::Node key(seg);
    diag_.register_set(index_, key);
    if (last) {
      node[key] = value;
      return;
    }
    YAML::Node child(YAML::NodeType::Map);
    diag_.register_set(index_, child);
    node[key] = child;
    walk(child, segments, i + 1, here, value);
  }

  /// `passes.<index or name>.<option>...`: options live under the pass's name inside the list
  /// element, `overrides` beside it.
  void apply_to_pass(YAML::Node& root, const std::vector<std::string>& segments,
                     const YAML::Node& value) {
    YAML::Node passes;
    for (auto it = root.begin(); it != root.end(); ++it)
      if (it->first.IsScalar() && it->first.Scalar() == "passes") passes = it->second;
    if (!passes.IsSequence()) return diag_.at_set(index_, "the recipe has no list of passes");
    auto selected = select_pass(passes, segments[1]);
    if (!selected) return;
    YAML::Node item = passes[selected->first];
    const std::string& name = selected->second;
    if (segments.size() == 2)
      return diag_.at_set(index_, "name an option: passes." + segments[1] + ".OPTION=VALUE");
    std::string path = "passes." + segments[1];
    if (segments[2] == "overrides") return walk(item, segments, 2, path, value);
    for (auto it = item.begin(); it != item.end(); ++it)
      if (it->first.Scalar() == name) return walk(it->second, segments, 2, path, value);
  }

  /// The list element `selector` (an index or a pass name) picks; nullopt after reporting why not.
  std::optional<std::pair<size_t, std::string>> select_pass(const YAML::Node& passes,
                                                            const std::string& selector) {
    std::vector<std::pair<size_t, std::string>> named;  // (element index, pass name)
    for (size_t k = 0; k < passes.size(); ++k) {
      if (!passes[k].IsMap()) continue;
      for (auto it = passes[k].begin(); it != passes[k].end(); ++it)
        if (it->first.IsScalar() && it->first.Scalar() != "overrides")
          named.emplace_back(k, it->first.Scalar());
    }
    size_t k = 0;
    std::vector<std::pair<size_t, std::string>> chosen;
    std::vector<std::string> names;
    bool by_index = parse_index(selector, &k);
    for (const auto& entry : named) {
      names.push_back(entry.second);
      if (by_index ? entry.first == k : entry.second == selector) chosen.push_back(entry);
    }
    if (chosen.size() == 1) return chosen[0];
    if (by_index)
      diag_.at_set(index_, "no single pass at index " + selector + " (the recipe has " +
                               std::to_string(passes.size()) + " entries)");
    else if (chosen.empty())
      diag_.at_set(index_, "no pass " + selector + " in the recipe (passes: " + join(names) + ")");
    else
      diag_.at_set(index_, std::to_string(chosen.size()) + " passes are named " + selector +
                               "; select one by its index, e.g. passes.0.OPTION=VALUE");
    return std::nullopt;
  }

  static bool parse_index(const std::string& text, size_t* k) {
    if (text.empty() || text.size() > 9 || !std::all_of(text.begin(), text.end(), ::isdigit))
      return false;
    *k = std::stoul(text);
    return true;
  }

  Diagnostics& diag_;
  size_t index_ = 0;
};

}  // namespace

// --- validation --------------------------------------------------------------------------------

namespace {

class RecipeReader {
 public:
  RecipeReader(Diagnostics& diag, fs::path base_dir)
      : diag_(diag), base_dir_(std::move(base_dir)) {}

  Recipe read(const YAML::Node& root) {
    Recipe recipe;
    Entry top{false, {}, root, ""};
    if (root.IsNull()) {
      diag_.at(root, "", "the recipe is empty; it needs at least model and output");
      return recipe;
    }
    auto keys = read_map(top, kTopKeys, {"model", "output"});
    if (keys.count("model")) recipe.model = read_path(keys["model"]);
    if (keys.count("output")) recipe.output = read_path(keys["output"]);
    if (keys.count("device"))
      recipe.device = read_string(keys["device"],
                                  spec_of("device", OptionType::kEnum, {}, {}, {"cpu", "cuda"}));
    if (keys.count("dtype"))
      recipe.dtype =
          read_string(keys["dtype"], spec_of("dtype", OptionType::kEnum, {}, {}, {"f32", "bf16"}));
    if (keys.count("calibration"))
      recipe.pipeline.calibration = read_calibration(keys["calibration"]);
    calibration_present_ = keys.count("calibration") != 0;
    if (keys.count("passes")) recipe.pipeline.passes = read_passes(keys["passes"]);
    if (keys.count("export")) read_export(keys["export"], &recipe.pipeline);
    if (keys.count("search")) recipe.search = read_search(keys["search"]);
    if (keys.count("eval")) recipe.eval = read_eval(keys["eval"]);
    if (keys.count("gate")) recipe.gate = read_gate(keys["gate"]);
    if (keys.count("gate") && !keys.count("eval"))
      diag_.at(keys["gate"].key, "gate", "a gate compares evaluations: add an eval section");
    recipe.locations = std::move(locations_);
    return recipe;
  }

 private:
  /// The entries of map `e` by key; unknown and repeated keys, and missing `required` ones, are
  /// reported. A value that is not a map is reported and reads as empty.
  std::map<std::string, Entry> read_map(const Entry& e, const std::vector<std::string>& valid,
                                        const std::vector<std::string>& required = {}) {
    std::map<std::string, Entry> out;
    if (!e.value.IsMap()) {
      diag_.at(locate(e), e.path,
               "expected a map of " + join(valid) + ", found " + found_text(e.value));
      return out;
    }
    for (auto it = e.value.begin(); it != e.value.end(); ++it) {
      const YAML::Node key = it->first;
      if (!key.IsScalar()) {
        diag_.at(key, e.path, "expected a key name, found " + found_text(key));
        continue;
      }
      std::string name = key.Scalar();
      std::string path = e.path.empty() ? name : e.path + "." + name;
      if (std::find(valid.begin(), valid.end(), name) == valid.end()) {
        diag_.at(key, path, unknown_key(name, valid));
      } else if (out.count(name)) {
        diag_.at(key, path,
                 "key " + name + " given twice (first at " + diag_.place(out[name].key) + ")");
      } else {
        out[name] = Entry{true, key, it->second, path};
      }
    }
    for (const auto& name : required)
      if (!out.count(name))
        diag_.at(locate(e), e.path,
                 "missing required key " + name + (e.path.empty() ? "" : " in " + e.path));
    return out;
  }

  static std::string unknown_key(const std::string& name, const std::vector<std::string>& valid) {
    std::string hint, dashed = name;
    std::replace(dashed.begin(), dashed.end(), '_', '-');
    if (dashed != name && std::find(valid.begin(), valid.end(), dashed) != valid.end())
      hint = " (did you mean " + dashed + "?)";
    return "unknown key \"" + name + "\"" + hint +
           "; valid: " + (valid.empty() ? "(none)" : join(valid));
  }

  /// The value of `e` as `spec` says; problems are reported and give nullopt.
  std::optional<OptionValue> read_value(const Entry& e, const OptionSpec& spec) {
    record(e.path, locate(e));
    const YAML::Node& v = e.value;
    std::string error;
    bool is_list = spec.type == OptionType::kIntList || spec.type == OptionType::kStringList;
    if (v.IsScalar() && diag_.set_index(v)) {  // `--set` text is canonical option text
      auto parsed = parse_option(spec, v.Scalar(), &error);
      if (!parsed) diag_.at(v, e.path, error);
      return parsed;
    }
    if (is_list) return read_list(e, spec);
    if (!v.IsScalar())
      return fail(e, "expected " + describe_option(spec) + ", found " + found_text(v));
    std::string text = v.Scalar();
    bool textual = spec.type == OptionType::kString || spec.type == OptionType::kEnum;
    if (!textual && !is_plain(v))
      return fail(e, "expected " + describe_option(spec) + ", found " + found_text(v));
    if (textual) {
      error = check_option(spec, text);
      if (!error.empty()) return fail(e, error);
      return OptionValue(text);
    }
    if (spec.type == OptionType::kBool && (text == "True" || text == "TRUE")) text = "true";
    if (spec.type == OptionType::kBool && (text == "False" || text == "FALSE")) text = "false";
    auto parsed = parse_option(spec, text, &error);
    if (!parsed) return fail(e, error);
    return parsed;
  }

  std::optional<OptionValue> read_list(const Entry& e, const OptionSpec& spec) {
    if (!e.value.IsSequence())
      return fail(e, "expected " + describe_option(spec) + ", found " + found_text(e.value));
    OptionSpec element = spec;
    element.type = spec.type == OptionType::kIntList ? OptionType::kInt : OptionType::kString;
    std::vector<int64_t> ints;
    std::vector<std::string> strings;
    bool ok = true;
    for (size_t i = 0; i < e.value.size(); ++i) {
      auto value =
          read_value(Entry{false, {}, e.value[i], e.path + "[" + std::to_string(i) + "]"}, element);
      if (!value)
        ok = false;
      else if (auto n = std::get_if<int64_t>(&*value))
        ints.push_back(*n);
      else
        strings.push_back(std::get<std::string>(*value));
    }
    if (!ok) return std::nullopt;
    if (spec.type == OptionType::kIntList) return OptionValue(ints);
    return OptionValue(strings);
  }

  std::nullopt_t fail(const Entry& e, const std::string& message) {
    diag_.at(locate(e), e.path, message);
    return std::nullopt;
  }

  std::string read_string(const Entry& e, const OptionSpec& spec) {
    auto value = read_value(e, spec);
    return value ? std::get<std::string>(*value) : "";
  }

  /// A path, resolved: against the recipe's directory, or the working directory for `--set`.
  std::string read_path(const Entry& e) {
    std::string text = read_string(e, spec_of(e.path, OptionType::kString));
    if (text.empty()) {
      if (e.value.IsScalar()) fail(e, "expected a path, found an empty string");
      return text;
    }
    return resolve(e.value, text);
  }

  std::string resolve(const YAML::Node& node, const std::string& text) {
    fs::path p(text);
    if (p.is_absolute()) return p.lexically_normal().string();
    fs::path base = diag_.set_index(node) ? fs::current_path() : base_dir_;
    return (base / p).lexically_normal().string();
  }

  /// Reads `e` (a list) element by element with `read_one`.
  template <typename ReadOne>
  void for_each_element(const Entry& e, const std::string& what, ReadOne&& read_one) {
    if (!e.value.IsSequence()) {
      fail(e, "expected a list of " + what + ", found " + found_text(e.value));
      return;
    }
    for (size_t i = 0; i < e.value.size(); ++i)
      read_one(Entry{false, {}, e.value[i], e.path + "[" + std::to_string(i) + "]"});
  }

  std::optional<CalibrationOptions> read_calibration(const Entry& e);
  std::vector<PassInstance> read_passes(const Entry& e);
  std::optional<PassInstance> read_pass(const Entry& item);
  void read_pass_options(const Entry& e, const PassInfo& info, OptionValues* values,
                         bool is_override);
  std::optional<PassOverride> read_override(const Entry& e, const PassInfo& info);
  void read_export(const Entry& e, Pipeline* pipeline);
  std::vector<std::string> read_export_formats(const Entry& e);
  std::optional<SearchBudget> read_search(const Entry& e);
  std::optional<EvalSpec> read_eval(const Entry& e);
  GateSpec read_gate(const Entry& e);

  /// Notes where `path` was written; inside a pass, also under its position in the list.
  void record(const std::string& path, const YAML::Node& node) {
    const RecipeLocation at = diag_.location(node);
    locations_[path] = at;
    const auto& [named, indexed] = pass_paths_;
    if (!named.empty() && path.compare(0, named.size(), named) == 0 &&
        (path.size() == named.size() || path[named.size()] == '.'))
      locations_[indexed + path.substr(named.size())] = at;
  }

  Diagnostics& diag_;
  fs::path base_dir_;
  bool calibration_present_ = false;
  std::map<std::string, RecipeLocation> locations_;
  /// While a pass is read: its options' path ("passes.gptq") and its list path ("passes[0]").
  std::pair<std::string, std::string> pass_paths_;
};

std::optional<CalibrationOptions> RecipeReader::read_calibration(const Entry& e) {
  auto keys = read_map(e, {"seq-len", "samples", "seed", "packing", "sets"}, {"sets"});
  CalibrationOptions c;
  if (keys.count("seq-len"))
    if (auto v = read_value(keys["seq-len"], calibrate_spec("seq-len")))
      c.seq_len = std::get<int64_t>(*v);
  if (keys.count("samples"))
    if (auto v = read_value(keys["samples"], calibrate_spec("samples")))
      c.samples = std::get<int64_t>(*v);
  if (keys.count("seed"))
    if (auto v = read_value(keys["seed"], calibrate_spec("seed")))
      c.seed = static_cast<uint64_t>(std::get<int64_t>(*v));
  if (keys.count("packing"))
    if (auto v = read_value(keys["packing"], calibrate_spec("packing")))
      c.packing = parse_packing(std::get<std::string>(*v));
  if (!keys.count("sets")) return c;
  for_each_element(keys["sets"], "calibration sets {task, path, samples}", [&](const Entry& set) {
    auto fields = read_map(set, {"task", "path", "samples"}, {"path"});
    CalibrationSource source;
    if (fields.count("path")) source.path = read_path(fields["path"]);
    if (fields.count("task")) {
      source.task = read_string(fields["task"], spec_of("task", OptionType::kString));
      std::string problem = check_task_name(source.task);
      if (!problem.empty()) fail(fields["task"], problem);
    } else if (fields.count("path") && fs::path(source.path).extension() != ".jsonl") {
      diag_.at(locate(set), set.path,
               "a text file needs a task (only a .jsonl set may name tasks per record)");
    }
    if (fields.count("samples"))
      if (auto v = read_value(fields["samples"], calibrate_spec("samples")))
        source.samples = std::get<int64_t>(*v);
    c.sources.push_back(source);
  });
  if (c.sources.empty() && keys["sets"].value.IsSequence())
    fail(keys["sets"], "calibration needs at least one set");
  return c;
}

std::vector<PassInstance> RecipeReader::read_passes(const Entry& e) {
  std::vector<PassInstance> passes;
  for_each_element(e, "passes such as - rtn: {bits: 4}", [&](const Entry& item) {
    if (auto pass = read_pass(item)) passes.push_back(std::move(*pass));
  });
  return passes;
}

std::optional<PassInstance> RecipeReader::read_pass(const Entry& item) {
  if (!item.value.IsMap())
    return fail(item, "expected a pass such as - rtn: {bits: 4}, found " + found_text(item.value));
  std::vector<Entry> names;
  std::optional<Entry> overrides;
  for (auto it = item.value.begin(); it != item.value.end(); ++it) {
    Entry entry{true, it->first, it->second, item.path};
    std::string key = it->first.IsScalar() ? it->first.Scalar() : "";
    if (key == "overrides" && overrides)
      diag_.at(it->first, item.path,
               "key overrides given twice (first at " + diag_.place(overrides->key) + ")");
    else if (key == "overrides")
      overrides = entry;
    else
      names.push_back(entry);
  }
  if (names.size() != 1) {
    std::vector<std::string> found;
    for (const auto& n : names) found.push_back(n.key.IsScalar() ? n.key.Scalar() : "?");
    return fail(item, names.empty() ? "a pass entry names its pass, e.g. - rtn: {bits: 4}"
                                    : "one pass per list item, found " + join(found, " and "));
  }
  Entry options = names[0];
  const std::string name = options.key.IsScalar() ? options.key.Scalar() : "";
  const PassInfo* info = find_pass(name);
  if (!info) {
    std::vector<std::string> known;
    for (const auto& p : pass_registry()) known.push_back(p.name);
    diag_.at(options.key, item.path, "unknown pass \"" + name + "\"; known: " + join(known));
    return std::nullopt;
  }
  options.path = "passes." + name;
  pass_paths_ = {options.path, item.path};
  record(options.path, options.key);
  PassInstance pass{name, OptionValues(info->options), {}};
  if (!options.value.IsNull()) read_pass_options(options, *info, &pass.options, false);
  if (!calibration_present_ && pass_reads_statistics(*info, pass))
    diag_.at(options.key, options.path,
             "pass " + name + " reads calibration statistics (" + join(info->statistics) +
                 "): add a calibration section");
  if (!calibration_present_ && info->needs_calibration)
    diag_.at(options.key, options.path,
             "pass " + name +
                 " works from the layers' calibration inputs: add a calibration "
                 "section");
  if (overrides && !info->per_tensor_overrides) {
    diag_.at(overrides->key, options.path + ".overrides",
             "pass " + name + " takes no per-tensor overrides");
  } else if (overrides) {
    overrides->path = options.path + ".overrides";
    for_each_element(*overrides, "overrides {match: REGEX, OPTION: VALUE}", [&](const Entry& o) {
      record(o.path, o.value);
      if (auto result = read_override(o, *info)) pass.overrides.push_back(std::move(*result));
    });
  }
  pass_paths_ = {};
  return pass;
}

/// Reads the options of `info` given in map `e` into `values`.
void RecipeReader::read_pass_options(const Entry& e, const PassInfo& info, OptionValues* values,
                                     bool is_override) {
  std::vector<std::string> valid;
  if (is_override) valid.push_back("match");
  std::vector<std::string> required;
  for (const auto& spec : info.options) {
    valid.push_back(spec.name);
    if (spec.required && !is_override) required.push_back(spec.name);
  }
  auto keys = read_map(e, valid, required);
  for (const auto& spec : info.options) {
    if (!keys.count(spec.name)) continue;
    const Entry& field = keys[spec.name];
    auto value = read_value(field, spec);
    if (value && spec.path != PathRole::kNone && std::holds_alternative<std::string>(*value))
      value = resolve(field.value, std::get<std::string>(*value));
    if (value) values->set(spec.name, *value);
  }
}

std::optional<PassOverride> RecipeReader::read_override(const Entry& e, const PassInfo& info) {
  if (!e.value.IsMap())
    return fail(e, "expected {match: REGEX, OPTION: VALUE}, found " + found_text(e.value));
  PassOverride result;
  read_pass_options(e, info, &result.options, true);
  bool has_match = false, has_option = false;
  for (auto it = e.value.begin(); it != e.value.end(); ++it) {
    bool is_match = it->first.IsScalar() && it->first.Scalar() == "match";
    has_option = has_option || !is_match;
    if (!is_match || has_match) continue;
    has_match = true;
    Entry match{true, it->first, it->second, e.path + ".match"};
    result.match = read_string(match, spec_of("match", OptionType::kString));
    std::string problem = it->second.IsScalar() ? check_tensor_regex(result.match) : "";
    if (!problem.empty()) fail(match, "bad regex: " + problem);
  }
  if (!has_match) return fail(e, "an override needs match: REGEX");
  if (!has_option) return fail(e, "an override sets at least one option besides match");
  return result;
}

/// `export: [hf, gptq]`, or the stage's options as a map: `export: {formats: [hf], pad-experts:
/// true}`.
void RecipeReader::read_export(const Entry& e, Pipeline* pipeline) {
  if (!e.value.IsMap()) {
    pipeline->export_formats = read_export_formats(e);
    return;
  }
  auto keys = read_map(e, {"formats", "pad-experts"}, {"formats"});
  if (keys.count("formats")) pipeline->export_formats = read_export_formats(keys["formats"]);
  if (keys.count("pad-experts"))
    if (auto v = read_value(keys["pad-experts"], spec_of("pad-experts", OptionType::kBool)))
      pipeline->pad_experts = std::get<bool>(*v);
}

std::vector<std::string> RecipeReader::read_export_formats(const Entry& e) {
  std::vector<std::string> formats;
  OptionSpec spec = spec_of("export", OptionType::kEnum, {}, {}, export_format_names());
  for_each_element(e, "formats (" + join(export_format_names()) + ")", [&](const Entry& item) {
    std::string format = read_string(item, spec);
    if (format.empty()) return;
    if (std::find(formats.begin(), formats.end(), format) != formats.end())
      fail(item, "format " + format + " given twice");
    else
      formats.push_back(format);
  });
  return formats;
}

std::optional<SearchBudget> RecipeReader::read_search(const Entry& e) {
  auto keys = read_map(e, {"bits", "size-gb"});
  SearchBudget budget;
  if (keys.count("bits"))
    if (auto v = read_value(keys["bits"], spec_of("bits", OptionType::kFloat, 1, 32)))
      budget.bits = std::get<double>(*v);
  if (keys.count("size-gb"))
    if (auto v = read_value(keys["size-gb"], spec_of("size-gb", OptionType::kFloat, 0.001, 1e6)))
      budget.size_gb = std::get<double>(*v);
  if (e.value.IsMap() && keys.empty()) fail(e, "a search budget sets bits and/or size-gb");
  return budget;
}

std::optional<EvalSpec> RecipeReader::read_eval(const Entry& e) {
  auto keys = read_map(e, {"text", "tasks", "seq-len", "bos"});
  EvalSpec eval;
  for (auto [key, list] : {std::pair{"text", &eval.text}, std::pair{"tasks", &eval.tasks}})
    if (keys.count(key))
      for_each_element(keys[key], "paths", [&, list = list](const Entry& item) {
        std::string path = read_path(item);
        if (!path.empty()) list->push_back(path);
      });
  if (keys.count("seq-len"))
    if (auto v = read_value(keys["seq-len"], calibrate_spec("seq-len")))
      eval.seq_len = std::get<int64_t>(*v);
  if (keys.count("bos"))
    if (auto v = read_value(keys["bos"],
                            spec_of("bos", OptionType::kEnum, {}, {}, {"auto", "on", "off"})))
      eval.bos = std::get<std::string>(*v);
  if (e.value.IsMap() && !keys.count("text") && !keys.count("tasks"))
    fail(e, "eval needs text and/or tasks files");
  return eval;
}

GateSpec RecipeReader::read_gate(const Entry& e) {
  auto keys = read_map(e, {"max-ppl-increase", "max-acc-drop", "max-kl"});
  GateSpec gate;
  if (keys.count("max-ppl-increase")) {
    const Entry& field = keys["max-ppl-increase"];
    std::string text = field.value.IsScalar() ? field.value.Scalar() : "";
    bool percent = !text.empty() && text.back() == '%';
    std::string number = percent ? text.substr(0, text.size() - 1) : text;
    std::string error;
    auto v = parse_option(spec_of("", OptionType::kFloat, 0, percent ? 1000 : 1), number, &error);
    if (v)
      gate.max_ppl_increase = std::get<double>(*v) / (percent ? 100 : 1);
    else
      fail(field, "expected a fraction in [0, 1] such as 0.03, or a percentage such as 3%, found " +
                      found_text(field.value));
  }
  if (keys.count("max-acc-drop"))
    if (auto v =
            read_value(keys["max-acc-drop"], spec_of("max-acc-drop", OptionType::kFloat, 0, 100)))
      gate.max_acc_drop = std::get<double>(*v);
  if (keys.count("max-kl"))
    if (auto v = read_value(keys["max-kl"], spec_of("max-kl", OptionType::kFloat, 0, 1000)))
      gate.max_kl = std::get<double>(*v);
  if (e.value.IsMap() && keys.empty())
    fail(e, "a gate sets max-ppl-increase, max-acc-drop and/or max-kl");
  return gate;
}

}  // namespace

// --- entry points ------------------------------------------------------------------------------

void RecipeProblems::add(const RecipeLocation& at, const std::string& field,
                         const std::string& message) {
  list_.push_back(
      {at, list_.size(), at.prefix + ": " + (field.empty() ? "" : field + ": ") + message});
}

void RecipeProblems::throw_if_any(const std::string& source) {
  if (list_.empty()) return;
  std::stable_sort(list_.begin(), list_.end(), [](const Item& a, const Item& b) {
    return std::tie(a.at.rank, a.at.line, a.at.column, a.order) <
           std::tie(b.at.rank, b.at.line, b.at.column, b.order);
  });
  std::string message = "invalid recipe (" + std::to_string(list_.size()) +
                        (list_.size() == 1 ? " error)" : " errors)");
  for (const auto& item : list_) message += "\n" + item.text;
  throw ConfigError(source, "", message);
}

RecipeLocation Recipe::location_of(const std::string& field) const {
  for (std::string f = field; !f.empty();) {
    auto it = locations.find(f);
    if (it != locations.end()) return it->second;
    const size_t cut = f.find_last_of(".[");
    f = cut == std::string::npos ? "" : f.substr(0, cut);
  }
  return {1, 0, 0, source};
}

Recipe parse_recipe(const std::string& yaml_text, const std::string& source,
                    const std::string& base_dir, const std::vector<std::string>& set_overrides) {
  Diagnostics diag(source);
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(source, "",
                      "invalid recipe (1 error)\n" + source + ":" +
                          std::to_string(e.mark.line + 1) + ":" +
                          std::to_string(e.mark.column + 1) + ": YAML syntax: " + e.msg);
  }
  YAML::Node root = documents.empty() ? YAML::Node() : documents[0];
  if (documents.size() > 1)
    diag.at(documents[1], "", "a recipe is one YAML document; found a second one");
  for (size_t i = 0; i < set_overrides.size(); ++i) diag.add_set_text(set_overrides[i]);
  SetApplier setter(diag);
  for (size_t i = 0; i < set_overrides.size(); ++i) setter.apply(root, i, set_overrides[i]);
  RecipeReader reader(diag, fs::absolute(base_dir));
  Recipe recipe = reader.read(root);
  diag.throw_if_any();
  recipe.source = source;
  recipe.set_overrides = set_overrides;
  return recipe;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& set_overrides) {
  const std::string text = read_file(path, "cannot read the recipe");
  fs::path dir = fs::absolute(path).parent_path();
  return parse_recipe(text, path, dir.string(), set_overrides);
}

std::string recipe_pipeline_string(const Recipe& recipe) {
  return canonical_pipeline(recipe.pipeline);
}

namespace {

nlohmann::json option_json(const OptionValue& value) {
  return std::visit([](const auto& v) { return nlohmann::json(v); }, value);
}

nlohmann::json options_json(const OptionValues& values) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [name, value] : values.values()) out[name] = option_json(value);
  return out;
}

template <typename T>
nlohmann::json optional_json(const std::optional<T>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

nlohmann::json calibration_json(const CalibrationOptions& c) {
  nlohmann::json sets = nlohmann::json::array();
  for (const auto& s : c.sources)
    sets.push_back({{"task", s.task}, {"path", s.path}, {"samples", optional_json(s.samples)}});
  return {{"seq-len", c.seq_len},
          {"samples", c.samples},
          {"seed", c.seed},
          {"packing", packing_name(c.packing)},
          {"sets", sets}};
}

}  // namespace

nlohmann::json recipe_to_json(const Recipe& recipe) {
  nlohmann::json passes = nlohmann::json::array();
  for (const auto& pass : recipe.pipeline.passes) {
    nlohmann::json overrides = nlohmann::json::array();
    for (const auto& o : pass.overrides)
      overrides.push_back({{"match", o.match}, {"options", options_json(o.options)}});
    passes.push_back(
        {{"name", pass.name}, {"options", options_json(pass.options)}, {"overrides", overrides}});
  }
  nlohmann::json out = {
      {"source", recipe.source},
      {"set", recipe.set_overrides},
      {"model", recipe.model},
      {"output", recipe.output},
      {"device", recipe.device},
      {"dtype", recipe.dtype},
      {"pipeline", recipe_pipeline_string(recipe)},
      {"calibration", recipe.pipeline.calibration ? calibration_json(*recipe.pipeline.calibration)
                                                  : nlohmann::json(nullptr)},
      {"passes", passes},
      {"export", recipe.pipeline.export_formats},
      {"pad-experts", recipe.pipeline.pad_experts},
      {"gate",
       {{"max-ppl-increase", optional_json(recipe.gate.max_ppl_increase)},
        {"max-acc-drop", optional_json(recipe.gate.max_acc_drop)},
        {"max-kl", optional_json(recipe.gate.max_kl)}}},
  };
  out["search"] = recipe.search ? nlohmann::json{{"bits", optional_json(recipe.search->bits)},
                                                 {"size-gb", optional_json(recipe.search->size_gb)}}
                                : nlohmann::json(nullptr);
  out["eval"] = recipe.eval ? nlohmann::json{{"text", recipe.eval->text},
                                             {"tasks", recipe.eval->tasks},
                                             {"seq-len", recipe.eval->seq_len},
                                             {"bos", recipe.eval->bos}}
                            : nlohmann::json(nullptr);
  return out;
}

}  // namespace lathe
