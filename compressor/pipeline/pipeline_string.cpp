// Canonical pipeline text and its parser (pipeline_string.h has the grammar).
#include "compressor/pipeline/pipeline_string.h"

#include <algorithm>
#include <regex>
#include <set>

#include "compressor/common/errors.h"

namespace lathe {
namespace {

constexpr int64_t kMaxSeqLen = int64_t{1} << 20;
constexpr int64_t kMaxSamples = int64_t{1} << 24;

const OptionSpec kMatchSpec{"match", OptionType::kString, "", "tensor-name regex", {}, {}, {}};

bool is_bare_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '+' || c == '/' || c == '%' || c == '-';
}

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

std::string option_names(const std::vector<OptionSpec>& specs) {
  std::vector<std::string> names;
  for (const auto& spec : specs) names.push_back(spec.name);
  return names.empty() ? "(none)" : join(names, ", ");
}

const OptionSpec* find_spec(const std::vector<OptionSpec>& specs, const std::string& name) {
  for (const auto& spec : specs)
    if (spec.name == name) return &spec;
  return nullptr;
}

const std::vector<OptionSpec>& export_stage_options() {
  static const std::vector<OptionSpec> specs = {
      {"formats",
       OptionType::kStringList,
       "",
       "hf, gptq, compressed-tensors, gguf",
       {},
       {},
       {},
       true},
      {"pad-experts",
       OptionType::kBool,
       "",
       "pad non-uniform expert counts with dummy experts (selection-bias "
       "routers only; printed when true)",
       {},
       {},
       {}}};
  return specs;
}

// --- calibration sets as `TASK[#SAMPLES]=PATH` ---------------------------------------------------

std::string format_set(const CalibrationSource& source) {
  if (!source.task.empty() && !check_task_name(source.task).empty())
    throw InternalError("pipeline", "calibrate.sets", check_task_name(source.task));
  std::string out = source.task;
  if (source.samples) out += "#" + std::to_string(*source.samples);
  return out + "=" + source.path;
}

/// Empty on success, else what is wrong with `element`.
std::string parse_set(const std::string& element, CalibrationSource* source) {
  const std::string form = "a calibration set is TASK[#SAMPLES]=PATH, found \"" + element + "\"";
  size_t eq = element.find('=');
  if (eq == std::string::npos || eq + 1 == element.size()) return form;
  std::string head = element.substr(0, eq);
  source->path = element.substr(eq + 1);
  source->samples.reset();
  size_t hash = head.find('#');
  source->task = head.substr(0, hash);
  std::string problem = source->task.empty() ? "" : check_task_name(source->task);
  if (!problem.empty()) return problem;
  if (hash == std::string::npos) return "";
  OptionSpec count{"samples", OptionType::kInt, "", "", {}, 1, kMaxSamples};
  std::string error;
  auto n = parse_option(count, head.substr(hash + 1), &error);
  if (!n) return "calibration set \"" + element + "\": samples: " + error;
  source->samples = std::get<int64_t>(*n);
  return "";
}

OptionValues calibration_values(const CalibrationOptions& c) {
  OptionValues values(calibrate_stage_options());
  values.set("seq-len", c.seq_len);
  values.set("samples", c.samples);
  if (c.seed > static_cast<uint64_t>(INT64_MAX))
    throw InternalError("pipeline", "calibrate.seed", "seed above 2^63-1");
  values.set("seed", static_cast<int64_t>(c.seed));
  values.set("packing", std::string(packing_name(c.packing)));
  std::vector<std::string> sets;
  for (const auto& source : c.sources) sets.push_back(format_set(source));
  values.set("sets", sets);
  return values;
}

std::string stage_text(const std::string& name, const OptionValues& values,
                       const std::vector<OptionSpec>& specs) {
  for (const auto& [key, value] : values.values()) {
    const OptionSpec* spec = find_spec(specs, key);
    std::string problem = spec ? check_option(*spec, value) : "not an option of " + name;
    if (!problem.empty()) throw InternalError("pipeline", name + "." + key, problem);
  }
  return name + "{" + values.canonical(specs) + "}";
}

bool same_values(const OptionValues& a, const OptionValues& b) {
  return a.values() == b.values();
}

bool same_calibration(const CalibrationOptions& a, const CalibrationOptions& b) {
  if (a.seq_len != b.seq_len || a.samples != b.samples || a.packing != b.packing ||
      a.seed != b.seed || a.sources.size() != b.sources.size())
    return false;
  for (size_t i = 0; i < a.sources.size(); ++i) {
    const auto &x = a.sources[i], &y = b.sources[i];
    if (x.path != y.path || x.task != y.task || x.samples != y.samples) return false;
  }
  return true;
}

bool same_pass(const PassInstance& a, const PassInstance& b) {
  if (a.name != b.name || !same_values(a.options, b.options) ||
      a.overrides.size() != b.overrides.size())
    return false;
  for (size_t i = 0; i < a.overrides.size(); ++i)
    if (a.overrides[i].match != b.overrides[i].match ||
        !same_values(a.overrides[i].options, b.overrides[i].options))
      return false;
  return true;
}

// --- the parser ----------------------------------------------------------------------------------

/// A value's text and where it starts, with how many ':'-separated items it holds.
struct ValueText {
  std::string text;
  size_t start = 0;
  size_t items = 0;
};

class PipelineParser {
 public:
  explicit PipelineParser(const std::string& text) : text_(text) {}

  Pipeline parse() {
    Pipeline pipeline;
    skip_space();
    if (pos_ == text_.size())
      fail(pos_, "", "empty pipeline: expected a stage such as rtn{bits=4}");
    while (true) {
      parse_stage(pipeline);
      field_ = "";
      skip_space();
      if (pos_ == text_.size()) return pipeline;
      expect(',', "',' between stages or the end of the pipeline");
    }
  }

 private:
  [[noreturn]] void fail(size_t pos, const std::string& field, const std::string& message) const {
    size_t column = 1;  // in characters: count bytes that do not continue a UTF-8 sequence
    for (size_t i = 0; i < pos && i < text_.size(); ++i)
      if ((static_cast<unsigned char>(text_[i]) & 0xC0) != 0x80) ++column;
    throw ConfigError("pipeline", field, "column " + std::to_string(column) + ": " + message);
  }

  std::string describe_here() const {
    if (pos_ >= text_.size()) return "the end";
    return std::string("'") + text_[pos_] + "'";
  }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t')) ++pos_;
  }

  void expect(char c, const std::string& what) {
    skip_space();
    if (pos_ >= text_.size() || text_[pos_] != c)
      fail(pos_, field_, "expected " + what + ", found " + describe_here());
    ++pos_;
  }

  std::string read_name(const std::string& what) {
    skip_space();
    size_t start = pos_;
    while (pos_ < text_.size() && is_name_char(text_[pos_])) ++pos_;
    if (pos_ == start) fail(pos_, field_, "expected " + what + ", found " + describe_here());
    return text_.substr(start, pos_ - start);
  }

  /// Scans `[ item { ":" item } ]` and returns its raw text (quotes included).
  ValueText read_value() {
    skip_space();
    ValueText value;
    value.start = pos_;
    while (pos_ < text_.size() && (is_bare_char(text_[pos_]) || text_[pos_] == '"')) {
      size_t item_start = pos_;
      if (text_[pos_] == '"') {
        for (++pos_; pos_ < text_.size() && text_[pos_] != '"'; ++pos_)
          if (text_[pos_] == '\\') {
            if (pos_ + 1 >= text_.size() || (text_[pos_ + 1] != '"' && text_[pos_ + 1] != '\\'))
              fail(pos_, field_, "a quoted string escapes only \\\" and \\\\");
            ++pos_;
          }
        if (pos_ >= text_.size())
          fail(item_start, field_, "a quoted string lacks its closing '\"'");
        ++pos_;
      } else {
        while (pos_ < text_.size() && is_bare_char(text_[pos_])) ++pos_;
      }
      ++value.items;
      if (pos_ >= text_.size() || text_[pos_] != ':') break;
      ++pos_;
      if (pos_ >= text_.size() || !(is_bare_char(text_[pos_]) || text_[pos_] == '"'))
        fail(pos_, field_, "expected a list element after ':', found " + describe_here());
    }
    value.text = text_.substr(value.start, pos_ - value.start);
    return value;
  }

  /// Reads `key=value` pairs up to `close` into `values`; returns the keys given.
  std::set<std::string> read_options(const std::string& stage, const std::vector<OptionSpec>& specs,
                                     char close, bool first_needs_comma, OptionValues* values) {
    std::set<std::string> given;
    skip_space();
    bool first = true;
    while (pos_ < text_.size() && text_[pos_] != close) {
      if (!first || first_needs_comma) expect(',', std::string("',' or '") + close + "'");
      first = false;
      size_t key_pos = (skip_space(), pos_);
      field_ = stage;
      std::string key = read_name("an option name");
      field_ = stage + "." + key;
      const OptionSpec* spec = find_spec(specs, key);
      if (!spec)
        fail(key_pos, field_,
             "unknown option \"" + key + "\" of " + stage + "; valid: " + option_names(specs));
      if (!given.insert(key).second) fail(key_pos, field_, "option " + key + " given twice");
      expect('=', "'=' after " + key);
      ValueText value = read_value();
      bool is_list = spec->type == OptionType::kIntList || spec->type == OptionType::kStringList;
      if (!is_list && value.items > 1)
        fail(value.start, field_, "expected a single value, found a ':'-separated list");
      std::string error;
      auto parsed = parse_option(*spec, value.text, &error);
      if (!parsed) fail(value.start, field_, error);
      values->set(key, *parsed);
      field_ = stage;
      skip_space();
    }
    field_ = stage;
    expect(close, std::string("'") + close + "'");
    return given;
  }

  void require_options(size_t name_pos, const std::string& stage,
                       const std::vector<OptionSpec>& specs, const std::set<std::string>& given) {
    for (const auto& spec : specs)
      if (spec.required && !given.count(spec.name))
        fail(name_pos, stage + "." + spec.name, stage + " needs option " + spec.name);
  }

  void parse_stage(Pipeline& pipeline) {
    size_t name_pos = (skip_space(), pos_);
    field_ = "";
    std::string name = read_name("a stage name");
    field_ = name;
    bool last_was_export = !pipeline.export_formats.empty();
    if (last_was_export) fail(name_pos, name, "export must be the last stage");
    if (name == "calibrate") return parse_calibrate(pipeline, name_pos);
    if (name == "export") return parse_export(pipeline, name_pos);
    const PassInfo* info = find_pass(name);
    if (!info) {
      std::vector<std::string> known = {"calibrate"};
      for (const auto& p : pass_registry()) known.push_back(p.name);
      known.push_back("export");
      fail(name_pos, name, "unknown stage \"" + name + "\"; known: " + join(known, ", "));
    }
    PassInstance pass{name, OptionValues(info->options), {}};
    expect('{', "'{' after " + name);
    require_options(name_pos, name, info->options,
                    read_options(name, info->options, '}', false, &pass.options));
    for (skip_space(); pos_ < text_.size() && text_[pos_] == '['; skip_space())
      pass.overrides.push_back(parse_override(*info));
    pipeline.passes.push_back(std::move(pass));
  }

  PassOverride parse_override(const PassInfo& info) {
    size_t open = pos_++;
    if (!info.per_tensor_overrides)
      fail(open, info.name, "pass " + info.name + " takes no per-tensor overrides");
    size_t key_pos = (skip_space(), pos_);
    if (read_name("match") != "match")
      fail(key_pos, info.name, "an override starts with match=REGEX");
    expect('=', "'=' after match");
    ValueText value = read_value();
    field_ = info.name + ".match";
    std::string error;
    std::optional<OptionValue> match;
    if (value.items == 1) match = parse_option(kMatchSpec, value.text, &error);
    if (!match) fail(value.start, field_, "expected one regex (quoted unless bare)");
    PassOverride result{std::get<std::string>(*match), OptionValues()};
    std::string problem = check_tensor_regex(result.match);
    if (!problem.empty()) fail(value.start, field_, "bad regex: " + problem);
    if (read_options(info.name, info.options, ']', true, &result.options).empty())
      fail(open, info.name, "an override sets at least one option besides match");
    return result;
  }

  void parse_calibrate(Pipeline& pipeline, size_t name_pos) {
    if (pipeline.calibration || !pipeline.passes.empty())
      fail(name_pos, "calibrate", "calibrate must be the first stage");
    OptionValues values(calibrate_stage_options());
    expect('{', "'{' after calibrate");
    size_t body = pos_;
    require_options(name_pos, "calibrate", calibrate_stage_options(),
                    read_options("calibrate", calibrate_stage_options(), '}', false, &values));
    CalibrationOptions c;
    c.seq_len = values.get_int("seq-len");
    c.samples = values.get_int("samples");
    c.seed = static_cast<uint64_t>(values.get_int("seed"));
    c.packing = parse_packing(values.get_string("packing"));
    for (const auto& element : values.get_string_list("sets")) {
      CalibrationSource source;
      std::string problem = parse_set(element, &source);
      if (!problem.empty()) fail(body, "calibrate.sets", problem);
      c.sources.push_back(source);
    }
    if (c.sources.empty()) fail(body, "calibrate.sets", "calibrate needs at least one set");
    pipeline.calibration = c;
  }

  void parse_export(Pipeline& pipeline, size_t name_pos) {
    OptionValues values;
    expect('{', "'{' after export");
    size_t body = pos_;
    require_options(name_pos, "export", export_stage_options(),
                    read_options("export", export_stage_options(), '}', false, &values));
    const auto& known = export_format_names();
    std::set<std::string> seen;
    for (const auto& format : values.get_string_list("formats")) {
      if (std::find(known.begin(), known.end(), format) == known.end())
        fail(body, "export.formats",
             "unknown format \"" + format + "\"; known: " + join(known, ", "));
      if (!seen.insert(format).second)
        fail(body, "export.formats", "format " + format + " given twice");
    }
    if (seen.empty()) fail(body, "export.formats", "export needs at least one format");
    pipeline.export_formats = values.get_string_list("formats");
    pipeline.pad_experts = values.has("pad-experts") && values.get_bool("pad-experts");
  }

  const std::string& text_;
  size_t pos_ = 0;
  std::string field_;
};

}  // namespace

bool operator==(const Pipeline& a, const Pipeline& b) {
  if (a.calibration.has_value() != b.calibration.has_value()) return false;
  if (a.calibration && !same_calibration(*a.calibration, *b.calibration)) return false;
  if (a.export_formats != b.export_formats || a.pad_experts != b.pad_experts ||
      a.passes.size() != b.passes.size())
    return false;
  for (size_t i = 0; i < a.passes.size(); ++i)
    if (!same_pass(a.passes[i], b.passes[i])) return false;
  return true;
}

const std::vector<std::string>& export_format_names() {
  static const std::vector<std::string> names = {"hf", "gptq", "compressed-tensors", "qwen2-moe",
                                                 "gguf"};
  return names;
}

const std::vector<OptionSpec>& calibrate_stage_options() {
  static const std::vector<OptionSpec> specs = {
      {"seq-len", OptionType::kInt, "2048", "tokens per sample", {}, 1, kMaxSeqLen},
      {"samples",
       OptionType::kInt,
       "128",
       "samples per task unless a set says otherwise",
       {},
       1,
       kMaxSamples},
      {"seed", OptionType::kInt, "0", "seed of the sample choice", {}, 0, {}},
      {"packing",
       OptionType::kEnum,
       "pack",
       "pack (windows of a concatenated stream) or document",
       {"pack", "document"},
       {},
       {}},
      {"sets",
       OptionType::kStringList,
       "",
       "TASK[#SAMPLES]=PATH per calibration file",
       {},
       {},
       {},
       true},
  };
  return specs;
}

std::string check_task_name(const std::string& task) {
  if (task.empty()) return "a task name is not empty";
  // The calibration set's own rule first (e.g. "all" is reserved), so a recipe fails at validation
  // rather than when the calibration set is built.
  if (std::string problem = task_label_problem(task); !problem.empty()) return problem;
  for (char c : task)
    if (!is_bare_char(c) || c == '/' || c == '%')
      return "a task name holds letters, digits and _.+- only, found \"" + task + "\"";
  return "";
}

std::string check_tensor_regex(const std::string& pattern) {
  try {
    std::regex compiled(pattern, std::regex::ECMAScript);
    return "";
  } catch (const std::regex_error& e) {
    return e.what();
  }
}

std::string canonical_pipeline(const Pipeline& pipeline) {
  std::vector<std::string> stages;
  if (pipeline.calibration)
    stages.push_back(stage_text("calibrate", calibration_values(*pipeline.calibration),
                                calibrate_stage_options()));
  for (const auto& pass : pipeline.passes) {
    const PassInfo* info = find_pass(pass.name);
    if (!info) throw InternalError("pipeline", pass.name, "pass missing from the registry");
    std::string text = stage_text(pass.name, pass.options, info->options);
    for (const auto& o : pass.overrides) {
      if (o.options.values().empty())
        throw InternalError("pipeline", pass.name, "an override of " + o.match + " sets no option");
      std::string options = stage_text(pass.name, o.options, info->options);
      options = options.substr(pass.name.size() + 1, options.size() - pass.name.size() - 2);
      text += "[match=" + format_option(kMatchSpec, o.match) + (options.empty() ? "" : ",") +
              options + "]";
    }
    stages.push_back(text);
  }
  if (!pipeline.export_formats.empty()) {
    OptionValues formats;
    formats.set("formats", pipeline.export_formats);
    if (pipeline.pad_experts) formats.set("pad-experts", true);
    stages.push_back(stage_text("export", formats, export_stage_options()));
  }
  return join(stages, ",");
}

Pipeline parse_pipeline(const std::string& text) {
  return PipelineParser(text).parse();
}

}  // namespace lathe
