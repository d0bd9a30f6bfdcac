#include "export/quant_export.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"
#include "compressor/model/model_spec.h"
#include "export/export_manifest.h"
#include "export/export_source.h"

namespace fs = std::filesystem;

namespace lathe {

ExportFormat parse_export_format(const std::string& name, const std::string& where,
                                 const std::string& field) {
  if (name == "hf") return ExportFormat::kHf;
  if (name == "gptq") return ExportFormat::kGptq;
  if (name == "compressed-tensors") return ExportFormat::kCompressedTensors;
  if (name == "qwen2-moe") return ExportFormat::kQwen2Moe;
  throw ConfigError(
      where, field,
      "unknown export format \"" + name + "\": expected hf, gptq, compressed-tensors or qwen2-moe");
}

const char* export_format_name(ExportFormat format) {
  switch (format) {
    case ExportFormat::kHf: return "hf";
    case ExportFormat::kGptq: return "gptq";
    case ExportFormat::kCompressedTensors: return "compressed-tensors";
    case ExportFormat::kQwen2Moe: return "qwen2-moe";
  }
  return "";
}

const char* export_dir_name(ExportFormat format) {
  switch (format) {
    case ExportFormat::kHf: return "hf";
    case ExportFormat::kGptq: return "gptq";
    case ExportFormat::kCompressedTensors: return "ct";
    case ExportFormat::kQwen2Moe: return "qwen2-moe";
  }
  return "";
}

std::map<int64_t, int64_t> plan_expert_padding(const ModelSpec& spec, bool pad_experts,
                                               const std::string& target,
                                               const std::string& where) {
  std::set<int64_t> counts;
  std::string listing;
  int64_t most = 0;
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    if (!spec.layers[i].is_moe) continue;
    counts.insert(spec.layers[i].num_experts);
    most = std::max(most, spec.layers[i].num_experts);
    listing +=
        fmt::format("{}layer {}: {}", listing.empty() ? "" : ", ", i, spec.layers[i].num_experts);
  }
  std::map<int64_t, int64_t> padding;
  if (counts.size() <= 1) return padding;
  const bool can_pad = spec.routing.selection_bias;
  if (!pad_experts || !can_pad) {
    const std::string why = !can_pad ? fmt::format(
                                           "; padding is not possible for {}: its router has no "
                                           "selection bias, so dummy experts "
                                           "could not be excluded exactly",
                                           family_name(spec.family))
                                     : "";
    throw ConfigError(where, "pad-experts",
                      fmt::format("{} needs the same expert count in every MoE layer (transformers "
                                  "and vLLM hold one global count), "
                                  "but the counts differ ({}). Fixes: prune with `mode: uniform` "
                                  "on the expert-pruning pass, or export "
                                  "with `pad-experts` (recipe `export: {{formats: [...], "
                                  "pad-experts: true}}`, CLI --pad-experts; only "
                                  "for routers with a selection bias, e.g. DeepSeek-V3){}",
                                  target, listing, why));
  }
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const LayerSpec& l = spec.layers[i];
    if (l.is_moe && l.num_experts < most) padding[static_cast<int64_t>(i)] = most - l.num_experts;
  }
  return padding;
}

namespace {

/// OUT/model/expert_map.json as copied into `dir`, with `padding` filled in (FORMATS.md §7).
void write_padded_expert_map(const ExportSource& src, const fs::path& dir) {
  const fs::path source = src.model_dir() / "expert_map.json";
  nlohmann::json map = fs::exists(source)
                           ? parse_json_strict(read_file(source.string()), source.string(), "")
                           : nlohmann::json{{"format", "lathe-expert-map"}, {"version", 1}};
  nlohmann::json padding = nlohmann::json::object();
  for (const auto& [layer, n] : src.padding()) padding[std::to_string(layer)] = n;
  map["padding"] = padding;
  write_file_atomically((dir / "expert_map.json").string(), map.dump(2) + "\n");
}

}  // namespace

std::string sparse24_note(const ExportResult& result) {
  if (result.sparse24_modules == 0) return "";
  return fmt::format(", {} stored as sparse-24-bitmask (2:4)", result.sparse24_modules);
}

ExportResult export_checkpoint(const std::string& out_dir, ExportFormat format,
                               const ExportOptions& options) {
  const fs::path target = fs::path(out_dir) / export_dir_name(format);
  ExportSourceOptions source_options;
  source_options.require_quant = format != ExportFormat::kHf && format != ExportFormat::kQwen2Moe;
  source_options.allow_sparse24 = format == ExportFormat::kCompressedTensors;
  source_options.pad_experts = options.pad_experts;
  source_options.target =
      fmt::format("the {} export ({})", export_format_name(format), target.string());
  const ExportSource src{fs::path(out_dir), source_options};  // refuses before anything is written
  PartialDirectory dir(target, options.force);
  ExportResult result;
  result.dir = target.string();
  switch (format) {
    case ExportFormat::kHf: write_hf_files(src, dir.path(), &result); break;
    case ExportFormat::kGptq: write_gptq_files(src, dir.path(), &result); break;
    case ExportFormat::kCompressedTensors: write_ct_files(src, dir.path(), &result); break;
    case ExportFormat::kQwen2Moe: write_qwen2_moe_files(src, dir.path(), &result); break;
  }
  if (!src.padding().empty()) {
    write_padded_expert_map(src, dir.path());
    int64_t dummies = 0;
    for (const auto& [layer, n] : src.padding()) dummies += n;
    result.log.push_back(
        fmt::format("padded {} MoE layers with {} dummy experts in all (never selected: correction "
                    "bias -1e4, zero weights); expert_map.json lists them under padding",
                    src.padding().size(), dummies));
  }
  for (const auto& w : src.warnings()) result.log.push_back("warning: " + w);
  // The golden vectors travel with the packed exports, so `lathe verify` can check them on their
  // own; hf has nothing packed to verify.
  const fs::path golden = fs::path(out_dir) / "verify";
  const bool packed = format == ExportFormat::kGptq || format == ExportFormat::kCompressedTensors;
  if (packed && fs::is_directory(golden)) {
    fs::create_directories(dir.path() / "verify");
    for (const auto& e : fs::directory_iterator(golden)) {
      if (e.is_regular_file()) fs::copy_file(e.path(), dir.path() / "verify" / e.path().filename());
    }
  }
  write_export_manifest(dir.path());  // last: it hashes every file above (lathe verify checks them)
  dir.publish();
  return result;
}

}  // namespace lathe
