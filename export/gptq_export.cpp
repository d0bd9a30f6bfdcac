// OUT/gptq: GPTQ v1 checkpoint (FORMATS.md §3) with `dynamic` per-module overrides
// (docs/export.md "GPTQ").
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

/// What GPTQ's config can say about one module.
struct GptqSetting {
  int64_t bits = 4, group_size = 128;
  bool sym = true, desc_act = false;
  auto key() const { return std::tie(bits, group_size, sym, desc_act); }
  bool operator<(const GptqSetting& o) const { return key() < o.key(); }
  bool operator==(const GptqSetting& o) const { return key() == o.key(); }
  std::string text() const {
    return fmt::format("{}-bit g{} {}{}", bits, group_size, sym ? "sym" : "asym",
                       desc_act ? " desc_act" : "");
  }
};

/// Why a module is stored as a plain `.weight` (empty: it is packed).
std::string unpackable_reason(const ExportLinear& l) {
  if (l.router || !l.quantized) return "";
  const int64_t bits = l.q.spec.bits, m = gptq_pack_multiple(bits);
  if (m == 0) return fmt::format("{} bits: GPTQ packs 2, 3, 4 or 8", bits);
  if (l.in_features() % m || l.out_features() % m) {
    return fmt::format("{}-bit GPTQ needs in and out divisible by {}, found [{}, {}]", bits, m,
                       l.out_features(), l.in_features());
  }
  return "";
}

/// The setting most modules share (ties: the smallest setting), the config's base.
GptqSetting base_setting(const std::map<std::string, GptqSetting>& packed) {
  std::map<GptqSetting, int64_t> counts;
  for (const auto& [m, s] : packed) counts[s] += 1;
  GptqSetting best;
  int64_t n = -1;
  for (const auto& [s, c] : counts) {
    if (c > n) best = s, n = c;
  }
  return best;
}

nlohmann::ordered_json gptq_config(const ExportSource& src,
                                   const std::map<std::string, GptqSetting>& packed,
                                   const std::set<std::string>& skipped) {
  const GptqSetting base = base_setting(packed);
  const std::vector<std::string> all = src.all_linear_modules();
  nlohmann::ordered_json dynamic = nlohmann::ordered_json::object();
  // Patterns of disjoint module sets never match a common name, so only the generic router
  // rules (last) overlap with them; vLLM takes the first match.
  for (const auto& p : module_patterns(all, skipped))
    dynamic["-:" + p] = nlohmann::ordered_json::object();
  std::map<GptqSetting, std::set<std::string>> overrides;
  for (const auto& [m, s] : packed) {
    if (!(s == base)) overrides[s].insert(m);
  }
  for (const auto& [s, modules] : overrides) {
    for (const auto& p : module_patterns(all, modules)) {
      dynamic["+:" + p] = {
          {"bits", s.bits}, {"group_size", s.group_size}, {"sym", s.sym}, {"desc_act", s.desc_act}};
    }
  }
  dynamic["-:.*mlp\\.gate$"] = nlohmann::ordered_json::object();
  dynamic["-:.*shared_expert_gate$"] = nlohmann::ordered_json::object();
  nlohmann::ordered_json meta = {{"quantizer", {std::string("lathe:") + LATHE_VERSION}}};
  if (!src.pipeline().empty()) meta["lathe_pipeline"] = src.pipeline();
  return {{"quant_method", "gptq"},
          {"bits", base.bits},
          {"group_size", base.group_size},
          {"sym", base.sym},
          {"desc_act", base.desc_act},
          {"static_groups", false},
          {"true_sequential", true},
          {"damp_percent", 0.01},
          {"lm_head", false},
          {"checkpoint_format", "gptq"},
          {"pack_dtype", "int32"},
          {"dynamic", dynamic},
          {"meta", meta}};
}

}  // namespace

void write_gptq_files(const ExportSource& src, const fs::path& dir, ExportResult* result) {
  std::map<std::string, GptqSetting> packed;
  std::set<std::string> skipped;
  std::map<std::string, std::string> settings;  // for the vLLM fused-layer warnings
  int64_t act_quantized = 0;
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"lathe.pipeline", src.pipeline()}, {"lathe.version", LATHE_VERSION}};
  result->bytes = write_export_shards(src, dir, metadata, [&](int64_t i, ShardTensors* shard) {
    ExportLayer layer = src.layer(i);
    for (const auto& [name, value] : layer.others) shard->add(name, value);
    for (const ExportLinear& l : layer.linears) {
      const std::string reason = unpackable_reason(l);
      if (l.router || !l.quantized || !reason.empty()) {
        shard->add(l.module + ".weight", l.weight);
        skipped.insert(l.module);
        if (!l.router) settings[l.module] = "unquantized";
        if (!reason.empty()) {
          result->unpacked_modules += 1;
          result->log.push_back(
              fmt::format("{}: stored dequantized under a -: rule ({})", l.module, reason));
        }
        continue;
      }
      if (!exact_in(l.q.scales, at::kHalf)) {
        throw UnsupportedError(
            src.out_dir().string(), l.module + ".scales",
            "a scale is not exactly representable in float16 (GPTQ stores fp16 scales)");
      }
      const GptqTensors t = pack_gptq(l.q, l.g_idx);
      shard->add(l.module + ".qweight", t.qweight);
      shard->add(l.module + ".qzeros", t.qzeros);
      shard->add(l.module + ".scales", t.scales);
      shard->add(l.module + ".g_idx", t.g_idx);
      const GptqSetting s{l.q.spec.bits, l.q.spec.group_size, l.q.spec.sym, l.permuted_groups()};
      packed[l.module] = s;
      settings[l.module] = s.text();
      result->packed_modules += 1;
      if (l.act_bits) act_quantized += 1;
    }
  });
  if (packed.empty()) {
    throw ConfigError(src.out_dir().string(), "quant",
                      "no quantized module can be stored as GPTQ (see the log)");
  }
  if (act_quantized) {
    result->log.push_back(
        fmt::format("warning: {} modules quantize their inputs to 8 bits (W8A8); GPTQ has no "
                    "activation quantization, so this export is weight-only",
                    act_quantized));
  }
  for (const auto& w : fused_setting_warnings(settings)) result->log.push_back("warning: " + w);
  const nlohmann::ordered_json qc = gptq_config(src, packed, skipped);
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(src.config().dump());
  config["quantization_config"] = qc;
  write_file_atomically((dir / "config.json").string(), config.dump(2) + "\n");
  write_file_atomically((dir / "quantize_config.json").string(), qc.dump(2) + "\n");
  copy_model_side_files(src.model_dir(), dir);
}

}  // namespace lathe
