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

void add_packed(const ExportLinear& l, const CtScheme& s, at::ScalarType scale_dtype,
                ShardTensors* shard) {
  if (s.format == "int-quantized") {
    const CtIntTensors t = pack_ct_int8(l.q, scale_dtype);
    shard->add(l.module + ".weight", t.weight);
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

nlohmann::ordered_json ct_config(const ExportSource& src,
                                 const std::map<CtScheme, std::set<std::string>>& groups,
                                 const std::set<std::string>& skipped) {
  const std::vector<std::string> all = src.all_linear_modules();
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
          {"sparsity_config", nlohmann::ordered_json::object()},
          {"global_compression_ratio", nullptr}};
}

}  // namespace

void write_ct_files(const ExportSource& src, const fs::path& dir, ExportResult* result) {
  std::map<CtScheme, std::set<std::string>> groups;
  std::set<std::string> skipped;
  std::map<std::string, std::string> settings;
  const at::ScalarType scale_dtype = src.model_dtype();
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"lathe.pipeline", src.pipeline()}, {"lathe.version", LATHE_VERSION}};
  result->bytes = write_export_shards(src, dir, metadata, [&](int64_t i, ShardTensors* shard) {
    ExportLayer layer = src.layer(i);
    for (const auto& [name, value] : layer.others) shard->add(name, value);
    for (const ExportLinear& l : layer.linears) {
      std::string reason;
      const CtScheme s = l.quantized && !l.router ? scheme_of(l, &reason) : CtScheme{};
      if (l.router || !l.quantized || !reason.empty()) {
        shard->add(l.module + ".weight", l.weight);
        skipped.insert(l.module);
        if (!l.router) settings[l.module] = "unquantized";
        if (!reason.empty()) {
          result->unpacked_modules += 1;
          result->log.push_back(
              fmt::format("{}: stored dequantized, in the ignore list ({})", l.module, reason));
        }
        continue;
      }
      if (!exact_in(l.q.scales, scale_dtype)) {
        throw UnsupportedError(
            src.out_dir().string(), l.module + ".weight_scale",
            std::string("a scale is not exactly representable in the model dtype ") +
                c10::toString(scale_dtype));
      }
      add_packed(l, s, scale_dtype, shard);
      groups[s].insert(l.module);
      settings[l.module] = s.text();
      result->packed_modules += 1;
    }
  });
  if (groups.empty()) {
    throw ConfigError(src.out_dir().string(), "quant",
                      "no quantized module can be stored as compressed-tensors (see the log)");
  }
  for (const auto& w : fused_setting_warnings(settings)) result->log.push_back("warning: " + w);
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(src.config().dump());
  config["quantization_config"] = ct_config(src, groups, skipped);
  write_file_atomically((dir / "config.json").string(), config.dump(2) + "\n");
  copy_model_side_files(src.model_dir(), dir);
}

}  // namespace lathe
