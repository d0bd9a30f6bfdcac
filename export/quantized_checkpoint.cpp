#include "export/quantized_checkpoint.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/json_reader.h"
#include "compressor/common/strict_json.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_store.h"
#include "export/gptq_pack.h"

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace lathe {
namespace {

/// config.json's quantization_config (ordered: `dynamic` is first-match), or null when absent.
ojson read_quantization_config(const fs::path& dir) {
  const fs::path path = dir / "config.json";
  const std::string text = read_file(path.string(), "cannot open the model config");
  parse_json_strict(text, path.string(), "");  // rejects duplicate keys, bad UTF-8
  const ojson config = ojson::parse(text);
  if (!config.is_object()) throw DataError(path.string(), "", "expected a JSON object");
  auto it = config.find("quantization_config");
  if (it == config.end() || it->is_null()) return nullptr;
  if (!it->is_object())
    throw DataError(path.string(), "quantization_config",
                    "expected an object, found " + it->dump());
  return *it;
}

std::regex compile_pattern(const std::string& pattern, const OrderedJsonReader& f,
                           const std::string& field) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    f.fail(field, "cannot parse the regex \"" + pattern + "\": " + e.what());
  }
}

/// Python's re.match: the pattern must match at the start of `name` (not necessarily to its end).
bool re_match(const std::regex& re, const std::string& name) {
  return std::regex_search(name, re, std::regex_constants::match_continuous);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// Runs `f`, giving DataErrors of the tensor code (which have no file) the shard file `file`.
template <class F>
auto in_file(const std::string& file, F&& f) {
  try {
    return f();
  } catch (const DataError& e) {
    if (!e.where().empty()) throw;
    throw DataError(file, e.field(), e.message());
  }
}

/// Shared by both readers: the weights and the module → tensors bookkeeping.
class CheckpointBase : public DequantizedWeights, public PackedCheckpoint {
 public:
  std::string describe() const override = 0;
  explicit CheckpointBase(const std::string& dir) : dir_(dir), store_(dir) {}
  bool has(const std::string& name) const override {
    return modules_.count(module_of(name)) && ends_with(name, ".weight");
  }
  void release(const std::vector<std::string>& names) const override {
    for (const auto& n : names) {
      auto it = modules_.find(module_of(n));
      if (it == modules_.end() || !ends_with(n, ".weight")) continue;
      for (const auto& suffix : tensor_suffixes_) {
        if (store_.contains(it->first + suffix)) store_.release(it->first + suffix);
      }
    }
  }

 protected:
  static std::string module_of(const std::string& name) {
    return ends_with(name, ".weight") ? name.substr(0, name.size() - 7) : name;
  }
  at::Tensor tensor(const std::string& name) const {
    return store_.contains(name) ? load_tensor(store_, name) : at::Tensor();
  }
  std::string file_of(const std::string& name) const {
    return store_.contains(name) ? store_.info(name).shard_path : dir_;
  }
  /// The module of `name`, or DataError when this checkpoint does not hold it quantized.
  const std::string& require_module(const std::string& name) const {
    auto it = modules_.find(module_of(name));
    if (it == modules_.end() || !ends_with(name, ".weight"))
      throw DataError(dir_, name, "not a quantized tensor of this checkpoint");
    return it->first;
  }

  std::string dir_;
  WeightStore store_;
  std::map<std::string, int64_t> modules_;  ///< module → index of its setting
  std::vector<std::string> tensor_suffixes_;
};

// ---------------------------------------------------------------------------------------------
// GPTQ

struct GptqModule {
  int64_t bits = 4, group_size = 128;
  bool sym = true;
};

class GptqCheckpoint : public CheckpointBase {
 public:
  GptqCheckpoint(const std::string& dir, const ojson& qc) : CheckpointBase(dir) {
    tensor_suffixes_ = {".qweight", ".qzeros", ".scales", ".g_idx"};
    const OrderedJsonReader f(qc, (fs::path(dir) / "config.json").string(), "quantization_config");
    const std::string format = f.has("checkpoint_format") ? f.string_or("checkpoint_format", "gptq")
                                                          : f.string_or("format", "gptq");
    if (format == "gptq_v2")
      throw UnsupportedError(
          f.file(), f.child_path("checkpoint_format"),
          "gptq_v2 (GPTQModel's internal zero points) is not read; lathe reads v1 (\"gptq\")");
    if (format != "gptq")
      f.fail("checkpoint_format", "expected \"gptq\", found \"" + format + "\"");
    if (f.bool_or("lm_head", false))
      throw UnsupportedError(f.file(), f.child_path("lm_head"), "a quantized lm_head is not read");
    GptqModule base{f.int_at("bits"), f.int_at("group_size"), f.bool_or("sym", true)};
    check_setting(base, f);
    f.bool_or("desc_act", false);  // type-checked; dequantization follows g_idx either way
    base_bits_ = base.bits;
    std::vector<std::pair<std::string, std::optional<GptqModule>>>
        rules;  // pattern key → override (nullopt: skip)
    std::vector<std::regex> regexes;
    if (const auto dyn = f.object_at("dynamic")) {
      for (const auto& [key, value] : dyn->value().items()) {
        const bool skip = key.rfind("-:", 0) == 0;
        const std::string pattern = key.rfind("+:", 0) == 0 || skip ? key.substr(2) : key;
        regexes.push_back(compile_pattern(pattern, f, "dynamic." + key));
        if (skip) {
          rules.emplace_back(key, std::nullopt);
          continue;
        }
        if (!value.is_object())
          f.fail("dynamic." + key, "expected an object of overrides, found " + value.dump());
        const OrderedJsonReader o = dyn->at(key.c_str());
        GptqModule m{o.int_or("bits", base.bits), o.int_or("group_size", base.group_size),
                     o.bool_or("sym", base.sym)};
        o.bool_or("desc_act", false);
        check_setting(m, o);
        rules.emplace_back(key, m);
      }
    }
    for (const auto& name : store_.names()) {
      if (!ends_with(name, ".qweight")) continue;
      const std::string module = name.substr(0, name.size() - 8);
      GptqModule m = base;
      for (size_t r = 0; r < rules.size(); ++r) {
        if (!re_match(regexes[r], module)) continue;
        if (!rules[r].second) {
          throw DataError(file_of(name), name,
                          "dynamic rule \"" + rules[r].first +
                              "\" skips this module, but it is stored quantized");
        }
        m = *rules[r].second;
        break;
      }
      modules_[module] = static_cast<int64_t>(settings_.size());
      settings_.push_back(m);
    }
  }

  at::Tensor load(const std::string& name) const override {
    const std::string& module = require_module(name);
    const GptqModule& m = settings_[modules_.at(module)];
    GptqTensors t{tensor(module + ".qweight"), tensor(module + ".qzeros"),
                  tensor(module + ".scales"), tensor(module + ".g_idx")};
    return in_file(file_of(module + ".qweight"), [&] {
      if (!t.g_idx.defined() || t.g_idx.dim() != 1)
        throw DataError("", module + ".g_idx", "missing or not 1-d");
      if (!t.scales.defined() || t.scales.dim() != 2)
        throw DataError("", module + ".scales", "missing or not 2-d");
      const int64_t in = t.g_idx.size(0), out = t.scales.size(1);
      const QuantizedWeight q = unpack_gptq(t, m.bits, in, out, m.group_size, module);
      if (m.sym && !q.spec.sym) {
        throw DataError("", module + ".qzeros",
                        fmt::format("the config says sym, but a zero point is not {}",
                                    int64_t{1} << (m.bits - 1)));
      }
      const at::Tensor gi = t.g_idx.to(at::kLong);
      return (q.scales.index_select(1, gi) *
              (q.codes.to(at::kInt) - q.zeros.index_select(1, gi)).to(at::kFloat))
          .contiguous();
    });
  }
  int64_t activation_bits(const std::string&) const override { return 0; }
  std::string describe() const override {
    return fmt::format("GPTQ {}-bit checkpoint {}", base_bits_, dir_);
  }
  std::optional<PackedModule> packed(const std::string& module) const override {
    if (!modules_.count(module)) return std::nullopt;
    load(module + ".weight");  // validates every tensor of the module
    const GptqModule& m = settings_[modules_.at(module)];
    PackedModule p{module, "gptq", m.bits, m.group_size, m.sym,
                   0,      0,      0,      {},           file_of(module + ".qweight")};
    for (const char* s : {"qweight", "qzeros", "scales", "g_idx"})
      p.tensors[s] = tensor(module + "." + s);
    p.in = p.tensors["g_idx"].size(0);
    p.out = p.tensors["scales"].size(1);
    return p;
  }

 private:
  static void check_setting(const GptqModule& m, const OrderedJsonReader& f) {
    if (gptq_pack_multiple(m.bits) == 0)
      f.fail("bits", fmt::format("GPTQ packs 2, 3, 4 or 8 bits, found {}", m.bits));
    if (m.group_size == 0 || m.group_size < -1)
      f.fail("group_size", fmt::format("expected -1 or > 0, found {}", m.group_size));
  }
  std::vector<GptqModule> settings_;
  int64_t base_bits_ = 4;
};

// ---------------------------------------------------------------------------------------------
// compressed-tensors

/// A compressed-tensors `targets` or `ignore` list.
struct CtTargets {
  std::vector<std::string> names;    ///< exact module names
  std::vector<std::regex> regexes;   ///< "re:" entries
  std::vector<std::string> classes;  ///< other entries ("Linear"): every module
  bool exact(const std::string& module) const {
    return std::find(names.begin(), names.end(), module) != names.end();
  }
  bool regex(const std::string& module) const {
    return std::any_of(regexes.begin(), regexes.end(),
                       [&](const std::regex& re) { return re_match(re, module); });
  }
  bool any(const std::string& module) const {
    return exact(module) || regex(module) || !classes.empty();
  }
};

/// f[key] as targets: a list of strings (`required`: non-empty). With `classes`, an entry without
/// "re:" or a dot is a class name; without, every such entry is a module name (ignore lists).
CtTargets parse_targets(const OrderedJsonReader& f, const char* key, bool required, bool classes) {
  CtTargets r;
  const auto list = f.find(key);
  if (!list) {
    if (required) f.fail(key, "expected a non-empty list of strings");
    return r;
  }
  if (!list->value().is_array() || (required && list->value().empty()))
    f.fail(key, std::string("expected a ") + (required ? "non-empty " : "") +
                    "list of strings, found " + list->value().dump());
  for (const auto& t : list->value()) {
    if (!t.is_string()) f.fail(key, "expected strings, found " + t.dump());
    const std::string s = t.get<std::string>();
    if (s.rfind("re:", 0) == 0) {
      r.regexes.push_back(compile_pattern(s.substr(3), f, key));
    } else if (!classes || s.find('.') != std::string::npos) {
      r.names.push_back(s);
    } else {
      r.classes.push_back(s);
    }
  }
  return r;
}

struct CtGroup {
  std::string name, format;
  int64_t bits = 4, group_size = 128;  ///< −1: channel
  bool sym = true, actorder_group = false;
  int64_t act_bits = 0;
  CtTargets targets;
};

/// quantization_config.sparsity_config: the 2:4 modules and how they are stored.
struct CtSparsityConfig {
  std::string format;  ///< "" (none), "sparse-24-bitmask" or "dense" (metadata only)
  CtTargets targets, ignore;
  bool covers(const std::string& module) const {
    return targets.any(module) && !ignore.exact(module) && !ignore.regex(module);
  }
};

CtSparsityConfig parse_sparsity(const OrderedJsonReader& qc) {
  CtSparsityConfig r;
  const auto f = qc.object_at("sparsity_config");
  if (!f || f->value().empty()) return r;
  r.format = f->string_or("format", "");
  if (r.format != "sparse-24-bitmask" && r.format != "dense")
    throw UnsupportedError(f->file(), f->child_path("format"),
                           "\"" + r.format + "\": lathe reads sparse-24-bitmask and dense");
  const std::string structure = f->string_or("sparsity_structure", "");
  if (r.format == "sparse-24-bitmask" && structure != "2:4")
    f->fail("sparsity_structure",
            "sparse-24-bitmask stores 2:4 weights, found \"" + structure + "\"");
  r.targets = parse_targets(*f, "targets", false, true);
  r.ignore = parse_targets(*f, "ignore", false, false);
  return r;
}

CtGroup parse_group(const std::string& key, const OrderedJsonReader& groups,
                    const std::string& default_format) {
  const OrderedJsonReader f = groups.at(key.c_str());
  if (!f.value().is_object()) f.fail("expected an object, found " + f.value().dump());
  CtGroup r;
  r.name = key;
  r.format = f.string_or("format", default_format);
  if (r.format != "pack-quantized" && r.format != "int-quantized") {
    throw UnsupportedError(f.file(), f.child_path("format"),
                           "\"" + r.format + "\": lathe reads pack-quantized and int-quantized");
  }
  r.targets = parse_targets(f, "targets", true, true);
  const auto w = f.object_at("weights");
  if (!w) f.fail("weights", "missing: expected the weight quantization arguments");
  const OrderedJsonReader& wf = *w;
  if (wf.string_or("type", "int") != "int")
    throw UnsupportedError(wf.file(), wf.child_path("type"), "only integer weights are read");
  if (wf.bool_or("dynamic", false))
    throw UnsupportedError(wf.file(), wf.child_path("dynamic"),
                           "dynamic weight quantization is not read");
  r.bits = wf.int_at("num_bits");
  r.sym = wf.bool_or("symmetric", true);
  const std::string strategy = wf.string_or("strategy", "");
  if (strategy == "group") {
    r.group_size = wf.int_at("group_size");
    if (r.group_size <= 0)
      wf.fail("group_size", fmt::format("expected > 0, found {}", r.group_size));
  } else if (strategy == "channel") {
    r.group_size = -1;
  } else {
    throw UnsupportedError(wf.file(), wf.child_path("strategy"),
                           "\"" + strategy + "\": lathe reads group and channel");
  }
  if (const auto a = wf.find("actorder")) {
    if (a->value().is_boolean()) {
      r.actorder_group = a->as_bool();
    } else {
      const std::string s = wf.string_or("actorder", "");
      if (s != "group" && s != "dynamic" && s != "weight" && s != "static")
        wf.fail("actorder", "expected group, weight or null, found " + a->value().dump());
      r.actorder_group = s == "group" || s == "dynamic";
    }
  }
  if (r.format == "int-quantized" && (r.bits != 8 || r.group_size != -1 || !r.sym)) {
    wf.fail("num_bits", "int-quantized is read for 8-bit symmetric per-channel weights");
  }
  if (r.format == "pack-quantized" && !ct_pack_bits_supported(r.bits)) {
    throw UnsupportedError(
        wf.file(), wf.child_path("num_bits"),
        fmt::format("pack-quantized is read for 2, 4 or 8 bits, found {}", r.bits));
  }
  if (const auto in = f.object_at("input_activations")) {
    const OrderedJsonReader& af = *in;
    const bool int8_token = af.int_or("num_bits", 0) == 8 && af.string_or("type", "int") == "int" &&
                            af.bool_or("symmetric", false) &&
                            af.string_or("strategy", "") == "token" && af.bool_or("dynamic", false);
    if (!int8_token)
      throw UnsupportedError(af.file(), f.child_path("input_activations"),
                             "only int8 symmetric per-token dynamic inputs are read");
    r.act_bits = 8;
  }
  if (f.has("output_activations"))
    throw UnsupportedError(f.file(), f.child_path("output_activations"),
                           "output quantization is not read");
  return r;
}

class CompressedTensorsCheckpoint : public CheckpointBase {
 public:
  CompressedTensorsCheckpoint(const std::string& dir, const ojson& qc) : CheckpointBase(dir) {
    tensor_suffixes_ = {".weight_packed",     ".weight_scale", ".weight_shape",
                        ".weight_zero_point", ".weight_g_idx", ".weight",
                        ".compressed",        ".bitmask",      ".shape"};
    const OrderedJsonReader f(qc, (fs::path(dir) / "config.json").string(), "quantization_config");
    sparsity_ = parse_sparsity(f);
    read_groups(f);
    for (const auto& name : store_.names()) add_module(name);
  }

  at::Tensor load(const std::string& name) const override {
    const std::string& module = require_module(name);
    const int64_t index = modules_.at(module);
    if (sparse24_.count(module)) {
      const at::Tensor w = decode_sparse24(module);
      if (index < 0) return w.to(at::kFloat);  // an unquantized 2:4 weight
      const CtIntTensors t{w, tensor(module + ".weight_scale")};
      return in_file(file_of(module + ".bitmask"), [&] { return dequantize_ct_int8(t, module); });
    }
    const CtGroup& g = groups_[index];
    if (g.format == "int-quantized") {
      const CtIntTensors t{tensor(module + ".weight"), tensor(module + ".weight_scale")};
      return in_file(file_of(module + ".weight"), [&] { return dequantize_ct_int8(t, module); });
    }
    const CtPackedTensors t{tensor(module + ".weight_packed"), tensor(module + ".weight_scale"),
                            tensor(module + ".weight_zero_point"), tensor(module + ".weight_shape"),
                            tensor(module + ".weight_g_idx")};
    return in_file(file_of(module + ".weight_packed"), [&] {
      if (g.sym && t.weight_zero_point.defined())
        throw DataError("", module + ".weight_zero_point", "present, but the group is symmetric");
      if (!g.sym && !t.weight_zero_point.defined())
        throw DataError("", module + ".weight_zero_point", "missing: the group is asymmetric");
      if (g.actorder_group && !t.weight_g_idx.defined())
        throw DataError("", module + ".weight_g_idx", "missing: the group has actorder group");
      if (!g.actorder_group && t.weight_g_idx.defined())
        throw DataError("", module + ".weight_g_idx",
                        "present, but the group's actorder is not group");
      return dequantize_ct_packed(t, g.bits, g.group_size, module);
    });
  }
  int64_t activation_bits(const std::string& name) const override {
    const int64_t index = modules_.at(require_module(name));
    return index < 0 ? 0 : groups_[index].act_bits;
  }
  std::string describe() const override { return "compressed-tensors checkpoint " + dir_; }
  std::optional<PackedModule> packed(const std::string& module) const override;

 private:
  /// status, config_groups and ignore; none of them in a sparsity-only config.
  void read_groups(const OrderedJsonReader& f) {
    const auto groups = f.object_at("config_groups");
    if ((!groups || groups->value().empty()) && !sparsity_.format.empty()) return;
    const std::string status = f.string_or("quantization_status", "");
    if (status != "compressed") {
      throw UnsupportedError(f.file(), f.child_path("quantization_status"),
                             "\"" + status + "\": lathe reads compressed checkpoints");
    }
    const std::string format = f.string_or("format", "");
    if (!groups || groups->value().empty())
      f.fail("config_groups", "missing: expected at least one group");
    for (const auto& item : groups->value().items())
      groups_.push_back(parse_group(item.key(), *groups, format));
    ignore_ = parse_targets(f, "ignore", false, false);
  }

  /// Registers the module whose tensor `name` says how it is stored (others are skipped).
  void add_module(const std::string& name) {
    if (ends_with(name, ".bitmask")) return add_sparse24(name.substr(0, name.size() - 8), name);
    std::string module;
    bool packed = false;
    if (ends_with(name, ".weight_packed")) {
      module = name.substr(0, name.size() - 14), packed = true;
    } else if (ends_with(name, ".weight") && store_.info(name).dtype == DType::kI8) {
      module = name.substr(0, name.size() - 7);
    } else {
      return;
    }
    const int64_t g = quantized_group(module, name);
    if ((groups_[g].format == "pack-quantized") != packed) {
      throw DataError(file_of(name), name,
                      "stored as " + std::string(packed ? "pack-quantized" : "int-quantized") +
                          " but its group " + groups_[g].name + " is " + groups_[g].format);
    }
    modules_[module] = g;
  }

  /// A sparse-24-bitmask module (`bitmask` names its bitmask): int8 values belong to an
  /// int-quantized group, float values to an unquantized module (index −1).
  void add_sparse24(const std::string& module, const std::string& bitmask) {
    const std::string file = file_of(bitmask), values = module + ".compressed";
    if (sparsity_.format != "sparse-24-bitmask")
      throw DataError(file, bitmask,
                      "stored as sparse-24-bitmask, but quantization_config.sparsity_config " +
                          (sparsity_.format.empty() ? std::string("is missing")
                                                    : "has format \"" + sparsity_.format + "\""));
    if (!sparsity_.covers(module))
      throw DataError(file, bitmask,
                      "stored as sparse-24-bitmask, but sparsity_config.targets does not target "
                      "the module");
    for (const char* other : {".weight", ".weight_packed"}) {
      if (store_.contains(module + other))
        throw DataError(file, module + other, "present beside the module's sparse-24-bitmask");
    }
    if (!store_.contains(values))
      throw DataError(file, values, "tensor is missing (the module has a bitmask)");
    sparse24_.insert(module);
    if (store_.info(values).dtype != DType::kI8) {
      const int64_t g = ignored(module) ? -1 : find_group(module, values);
      if (g >= 0)
        throw DataError(file, values,
                        "unquantized 2:4 values, but config group " + groups_[g].name +
                            " quantizes the module");
      modules_[module] = -1;
      return;
    }
    const int64_t g = quantized_group(module, values);
    if (groups_[g].format != "int-quantized")
      throw DataError(file, values,
                      "int8 2:4 values, but the module's group " + groups_[g].name + " is " +
                          groups_[g].format);
    modules_[module] = g;
  }

  at::Tensor decode_sparse24(const std::string& module) const {
    const CtSparse24Tensors t{tensor(module + ".compressed"), tensor(module + ".bitmask"),
                              tensor(module + ".shape")};
    return in_file(file_of(module + ".bitmask"), [&] { return unpack_ct_sparse24(t, module); });
  }

  bool ignored(const std::string& module) const {
    return ignore_.exact(module) || ignore_.regex(module);
  }

  /// The group of a module stored quantized (tensor `name`): DataError when it is ignored or no
  /// group, or several, target it.
  int64_t quantized_group(const std::string& module, const std::string& name) const {
    if (ignored(module))
      throw DataError(file_of(name), name,
                      "the module is in the ignore list, but it is stored quantized");
    const int64_t g = find_group(module, name);
    if (g < 0)
      throw DataError(file_of(name), name,
                      "stored quantized, but no config group targets the module");
    return g;
  }

  /// The one group whose targets match `module` best: exact name, then re:, then class name;
  /// −1 when none does.
  int64_t find_group(const std::string& module, const std::string& tensor_name) const {
    for (int level = 0; level < 3; ++level) {
      std::vector<int64_t> hits;
      for (size_t g = 0; g < groups_.size(); ++g) {
        const CtTargets& t = groups_[g].targets;
        const bool hit = level == 0   ? t.exact(module)
                         : level == 1 ? t.regex(module)
                                      : !t.classes.empty();
        if (hit) hits.push_back(static_cast<int64_t>(g));
      }
      if (hits.size() == 1) return hits[0];
      if (hits.size() > 1) {
        throw DataError(file_of(tensor_name), tensor_name,
                        "the module matches the targets of several config groups (" +
                            groups_[hits[0]].name + ", " + groups_[hits[1]].name + ")");
      }
    }
    return -1;
  }

  std::vector<CtGroup> groups_;
  CtTargets ignore_;
  CtSparsityConfig sparsity_;
  std::set<std::string> sparse24_;  ///< modules stored as sparse-24-bitmask
};

std::optional<PackedModule> CompressedTensorsCheckpoint::packed(const std::string& module) const {
  if (!modules_.count(module)) return std::nullopt;
  load(module + ".weight");  // validates every tensor of the module
  const int64_t index = modules_.at(module);
  const bool sparse = sparse24_.count(module) > 0;
  const CtGroup* g = index < 0 ? nullptr : &groups_[index];
  const bool int8 = g && g->format == "int-quantized";
  PackedModule p;
  p.module = module;
  p.format = !g ? "ct-sparse24" : int8 ? "ct-int8" : "ct-packed";
  p.sparse24 = sparse;
  p.file = file_of(module + (sparse ? ".bitmask" : int8 ? ".weight" : ".weight_packed"));
  if (g) {
    p.bits = g->bits, p.group_size = g->group_size, p.sym = g->sym, p.act_bits = g->act_bits;
  }
  std::vector<std::string> names =
      int8 ? std::vector<std::string>{"weight", "weight_scale"}
           : std::vector<std::string>{"weight_packed", "weight_scale", "weight_shape",
                                      "weight_zero_point", "weight_g_idx"};
  if (sparse) names = {"compressed", "bitmask", "shape", "weight_scale"};
  for (const auto& n : names) {
    const at::Tensor t = tensor(module + "." + n);
    if (t.defined()) p.tensors[n] = t;
  }
  if (sparse) p.tensors["weight"] = decode_sparse24(module);
  if (!g) p.bits = static_cast<int64_t>(p.tensors["weight"].element_size() * 8);
  if (int8 || sparse) {
    p.out = p.tensors["weight"].size(0);
    p.in = p.tensors["weight"].size(1);
  } else {
    const at::Tensor shape = p.tensors["weight_shape"].to(at::kLong);
    p.out = shape[0].item<int64_t>();
    p.in = shape[1].item<int64_t>();
  }
  return p;
}

}  // namespace

std::shared_ptr<const DequantizedWeights> open_gptq_checkpoint(const std::string& dir) {
  const ojson qc = read_quantization_config(dir);
  if (qc.is_null())
    throw DataError((fs::path(dir) / "config.json").string(), "quantization_config", "missing");
  return std::make_shared<GptqCheckpoint>(dir, qc);
}

std::shared_ptr<const DequantizedWeights> open_compressed_tensors_checkpoint(
    const std::string& dir) {
  const ojson qc = read_quantization_config(dir);
  if (qc.is_null())
    throw DataError((fs::path(dir) / "config.json").string(), "quantization_config", "missing");
  return std::make_shared<CompressedTensorsCheckpoint>(dir, qc);
}

std::shared_ptr<const PackedCheckpoint> open_packed_checkpoint(const std::string& dir) {
  const std::shared_ptr<const DequantizedWeights> w = open_quantized_checkpoint(dir);
  return std::dynamic_pointer_cast<const PackedCheckpoint>(w);
}

std::string quantization_method(const std::string& dir) {
  const ojson qc = read_quantization_config(dir);
  if (qc.is_null()) return "";
  const OrderedJsonReader f(qc, (fs::path(dir) / "config.json").string(), "quantization_config");
  const std::string method = f.string_or("quant_method", "");
  if (method.empty())
    f.fail("quant_method", "missing: expected \"gptq\" or \"compressed-tensors\"");
  return method;
}

std::shared_ptr<const DequantizedWeights> open_quantized_checkpoint(const std::string& dir) {
  const ojson qc = read_quantization_config(dir);
  if (qc.is_null()) return nullptr;
  const OrderedJsonReader f(qc, (fs::path(dir) / "config.json").string(), "quantization_config");
  const std::string method = f.string_or("quant_method", "");
  if (method == "gptq") return std::make_shared<GptqCheckpoint>(dir, qc);
  if (method == "compressed-tensors") return std::make_shared<CompressedTensorsCheckpoint>(dir, qc);
  if (method.empty())
    f.fail("quant_method", "missing: expected \"gptq\" or \"compressed-tensors\"");
  throw UnsupportedError(f.file(), f.child_path("quant_method"),
                         "\"" + method + "\": lathe reads gptq and compressed-tensors checkpoints");
}

}  // namespace lathe
