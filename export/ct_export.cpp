// OUT/ct: compressed-tensors checkpoint (FORMATS.md §4), one config group per scheme
// (docs/export.md "compressed-tensors").
#include <ATen/ATen.h>

#include <map>
#include <set>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "export/export_source.h"
#include "export/gptq_pack.h"

namespace fs = std::filesystem;

namespace lathe {
namespace {

/// One config group: everything compressed-tensors' config says about a module.
struct CtScheme {
  std::string format;  ///< "pack-quantized" | "int-quantized"
  int64_t bits = 4, group_size = 128;
  bool sym = true, actorder_group = false;
  int64_t act_bits = 0;
  auto key() const { return std::tie(format, bits, group_size, sym, actorder_group, act_bits); }
  bool operator<(const CtScheme& o) const { return key() < o.key(); }
  std::string text() const {
    return fmt::format("{} {}-bit g{} {}{}{}", format, bits, group_size, sym ? "sym" : "asym",
                       actorder_group ? " actorder" : "",
                       act_bits ? fmt::format(" a{}", act_bits) : "");
  }
};

/// The scheme of a quantized module, or "" in `reason` when compressed-tensors cannot store it.
CtScheme scheme_of(const ExportLinear& l, std::string* reason) {
  CtScheme s;
  s.bits = l.q.spec.bits;
  s.group_size = l.q.spec.group_size;
  s.sym = l.q.spec.sym;
  s.actorder_group = l.permuted_groups();
  s.act_bits = l.act_bits;
  if (s.bits == 8 && s.group_size == -1 && s.sym && !s.actorder_group && s.act_bits == 8) {
    s.format = "int-quantized";  // W8A8: vLLM's int8 kernels read the int8 weight directly
  } else if (ct_pack_bits_supported(s.bits)) {
    s.format = "pack-quantized";
  } else {
    *reason = fmt::format("{} bits: lathe writes pack-quantized for 2, 4 or 8 bits", s.bits);
  }
  return s;
}

nlohmann::ordered_json weights_args(const CtScheme& s) {
  return {{"num_bits", s.bits},
          {"type", "int"},
          {"symmetric", s.sym},
          {"group_size", s.group_size == -1 ? nlohmann::ordered_json(nullptr)
                                            : nlohmann::ordered_json(s.group_size)},
          {"strategy", s.group_size == -1 ? "channel" : "group"},
          {"block_structure", nullptr},
          {"dynamic", false},
          {"actorder",
           s.actorder_group ? nlohmann::ordered_json("group") : nlohmann::ordered_json(nullptr)},
          {"observer", "minmax"},
          {"observer_kwargs", nlohmann::ordered_json::object()}};
}

nlohmann::ordered_json input_args(const CtScheme& s) {
  if (!s.act_bits) return nullptr;
  return {{"num_bits", s.act_bits}, {"type", "int"},
          {"symmetric", true},      {"group_size", nullptr},
          {"strategy", "token"},    {"block_structure", nullptr},
          {"dynamic", true},        {"actorder", nullptr},
          {"observer", nullptr},    {"observer_kwargs", nlohmann::ordered_json::object()}};
}

/// compressed-tensors targets: an exact module name, or "re:" + a family regex.
std::vector<std::string> ct_targets(const std::vector<std::string>& all,
                                    const std::set<std::string>& modules) {
  std::vector<std::string> out;
  for (const auto& p : module_patterns(all, modules)) {
    if (p.find("\\d+") != std::string::npos) {
      out.push_back("re:" + p);
      continue;
    }
    std::string name;  // unescape "\." and drop the trailing "$"
    for (size_t k = 0; k + 1 < p.size(); ++k) {
      if (p[k] == '\\') ++k;
      name += p[k];
    }
    out.push_back(name);
  }
  return out;
}

/// The 2:4 modules of the export: bitmask-compressed ones, and pack-quantized ones that keep their
/// packed layout (sparsity_config format "dense": metadata only).
struct CtSparsity {
  std::set<std::string> bitmask, dense;
  int64_t zeros = 0, elements = 0;  ///< over the 2:4 modules' OUT/model weights
  void count(const at::Tensor& weight) {
    zeros += weight.eq(0).sum().item<int64_t>();
    elements += weight.numel();
  }
};

/// `<m>.compressed`, `<m>.bitmask`, `<m>.shape` (sparse-24-bitmask) in place of `<m>.weight`.
void add_sparse24(const std::string& module, const at::Tensor& values, ShardTensors* shard) {
  const CtSparse24Tensors t = pack_ct_sparse24(values, module);
  shard->add(module + ".bitmask", t.bitmask);
  shard->add(module + ".compressed", t.compressed);
  shard->add(module + ".shape", t.shape);
}

void add_packed(const ExportLinear& l, const CtScheme& s, at::ScalarType scale_dtype,
                ShardTensors* shard) {
  if (s.format == "int-quantized") {
    const CtIntTensors t = pack_ct_int8(l.q, scale_dtype);
    if (l.sparse24) {
      add_sparse24(l.module, t.weight, shard);  // the int8 weight, bitmask-compressed
    } else {
      shard->add(l.module + ".weight", t.weight);
    }
    shard->add(l.module + ".weight_scale", t.weight_scale);
    return;
  }
  const CtPackedTensors t =
      pack_ct_packed(l.q, scale_dtype, s.actorder_group ? l.g_idx : at::Tensor());
  shard->add(l.module + ".weight_packed", t.weight_packed);
  shard->add(l.module + ".weight_scale", t.weight_scale);
  shard->add(l.module + ".weight_shape", t.weight_shape);
  if (t.weight_zero_point.defined())
    shard->add(l.module + ".weight_zero_point", t.weight_zero_point);
  if (t.weight_g_idx.defined()) shard->add(l.module + ".weight_g_idx", t.weight_g_idx);
}

/// quantization_config.sparsity_config (compressed-tensors ≤ 0.14's SparsityCompressionConfig):
/// {} without 2:4 modules.
nlohmann::ordered_json sparsity_config(const std::vector<std::string>& all, const CtSparsity& s) {
  if (s.bitmask.empty() && s.dense.empty()) return nlohmann::ordered_json::object();
  std::set<std::string> targets = s.bitmask;
  targets.insert(s.dense.begin(), s.dense.end());
  const double global = s.elements ? static_cast<double>(s.zeros) / s.elements : 0.0;
  return {{"format", s.bitmask.empty() ? "dense" : "sparse-24-bitmask"},
          {"targets", ct_targets(all, targets)},
          {"ignore", nullptr},
          {"global_sparsity", global},
          {"sparsity_structure", "2:4"}};
}

nlohmann::ordered_json ct_config(const ExportSource& src,
                                 const std::map<CtScheme, std::set<std::string>>& groups,
                                 const std::set<std::string>& skipped, const CtSparsity& sparse) {
  const std::vector<std::string> all = src.all_linear_modules();
  if (groups.empty()) {  // sparsity only: no quantization keys at all (0.14 would reject them)
    return {{"quant_method", "compressed-tensors"},
            {"sparsity_config", sparsity_config(all, sparse)}};
  }
  nlohmann::ordered_json config_groups = nlohmann::ordered_json::object();
  std::set<std::string> formats;
  int64_t g = 0;
  for (const auto& [s, modules] : groups) {
    formats.insert(s.format);
    config_groups["group_" + std::to_string(g++)] = {{"targets", ct_targets(all, modules)},
                                                     {"weights", weights_args(s)},
                                                     {"input_activations", input_args(s)},
                                                     {"output_activations", nullptr},
                                                     {"format", s.format}};
  }
  std::vector<std::string> ignore = {"lm_head"};
  for (const auto& t : ct_targets(all, skipped)) ignore.push_back(t);
  return {{"quant_method", "compressed-tensors"},
          {"format", formats.size() == 1 ? *formats.begin() : std::string("mixed-precision")},
          {"quantization_status", "compressed"},
          {"config_groups", config_groups},
          {"ignore", ignore},
          {"kv_cache_scheme", nullptr},
          {"sparsity_config", sparsity_config(all, sparse)},
          {"global_compression_ratio", nullptr}};
}

}  // namespace

namespace {

/// What the shards of a compressed-tensors export hold, gathered while they are written.
struct CtWritten {
  std::map<CtScheme, std::set<std::string>> groups;
  std::set<std::string> skipped;                ///< stored unquantized: the ignore list
  std::map<std::string, std::string> settings;  ///< for fused_setting_warnings
  CtSparsity sparse;
};

/// One linear into `shard`: packed in its scheme's group, or unquantized (in the ignore list); a
/// 2:4 one bitmask-compressed unless it is pack-quantized.
void write_ct_linear(const ExportSource& src, const ExportLinear& l, ShardTensors* shard,
                     CtWritten* w, ExportResult* result) {
  const std::string sparse = l.sparse24 ? " 2:4" : "";
  std::string reason;
  const CtScheme s = l.quantized && !l.router ? scheme_of(l, &reason) : CtScheme{};
  if (l.router || !l.quantized || !reason.empty()) {
    if (l.sparse24) {
      add_sparse24(l.module, l.weight, shard);
      w->sparse.bitmask.insert(l.module);
      w->sparse.count(l.weight);
      result->sparse24_modules += 1;
    } else {
      shard->add(l.module + ".weight", l.weight);
    }
    w->skipped.insert(l.module);
    if (!l.router) w->settings[l.module] = "unquantized" + sparse;
    if (!reason.empty()) {
      result->unpacked_modules += 1;
      result->log.push_back(
          fmt::format("{}: stored dequantized, in the ignore list ({})", l.module, reason));
    }
    return;
  }
  const at::ScalarType scale_dtype = src.model_dtype();
  if (!exact_in(l.q.scales, scale_dtype)) {
    throw UnsupportedError(src.out_dir().string(), l.module + ".weight_scale",
                           std::string("a scale is not exactly representable in the model dtype ") +
                               c10::toString(scale_dtype));
  }
  add_packed(l, s, scale_dtype, shard);
  w->groups[s].insert(l.module);
  w->settings[l.module] = s.text() + sparse;
  result->packed_modules += 1;
  if (l.sparse24) {
    (s.format == "int-quantized" ? w->sparse.bitmask : w->sparse.dense).insert(l.module);
    w->sparse.count(l.weight);
    result->sparse24_modules += s.format == "int-quantized" ? 1 : 0;
  }
}

}  // namespace

void write_ct_files(const ExportSource& src, const fs::path& dir, ExportResult* result) {
  CtWritten w;
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"lathe.pipeline", src.pipeline()}, {"lathe.version", LATHE_VERSION}};
  result->bytes = write_export_shards(src, dir, metadata, [&](int64_t i, ShardTensors* shard) {
    ExportLayer layer = src.layer(i);
    for (const auto& [name, value] : layer.others) shard->add(name, value);
    for (const ExportLinear& l : layer.linears) write_ct_linear(src, l, shard, &w, result);
  });
  if (w.groups.empty() && w.sparse.bitmask.empty()) {
    throw ConfigError(src.out_dir().string(), "quant",
                      "no quantized module can be stored as compressed-tensors and no module is "
                      "2:4-sparse (see the log)");
  }
  for (const auto& warning : fused_setting_warnings(w.settings))
    result->log.push_back("warning: " + warning);
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(src.config().dump());
  config["quantization_config"] = ct_config(src, w.groups, w.skipped, w.sparse);
  write_file_atomically((dir / "config.json").string(), config.dump(2) + "\n");
  copy_model_side_files(src.model_dir(), dir);
}

}  // namespace lathe
