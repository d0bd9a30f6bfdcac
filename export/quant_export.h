// The exports of a lathe output directory (docs/export.md): OUT/hf (a plain HF checkpoint that
// stock transformers loads), OUT/gptq (GPTQ v1, FORMATS.md §3) and OUT/ct (compressed-tensors,
// FORMATS.md §4), written from OUT/model, OUT/quant and the manifest by `lathe export OUT --format
// F` and by `lathe run` (recipe `export: [...]`). Models pruned to different expert counts per
// layer are padded to one count (FORMATS.md §6) or refused.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lathe {

struct ModelSpec;

enum class ExportFormat { kHf, kGptq, kCompressedTensors, kQwen2Moe };

/// "hf", "gptq" or "compressed-tensors" (the recipe / CLI names). ConfigError(where, field)
/// otherwise, listing the choices.
ExportFormat parse_export_format(const std::string& name, const std::string& where,
                                 const std::string& field);

/// The recipe / CLI name: "hf", "gptq" or "compressed-tensors".
const char* export_format_name(ExportFormat format);

/// The directory name inside OUT: "hf", "gptq" or "ct".
const char* export_dir_name(ExportFormat format);

struct ExportOptions {
  bool force = false;        ///< replace an existing OUT/hf, OUT/gptq or OUT/ct
  bool pad_experts = false;  ///< pad non-uniform expert counts with dummy experts (FORMATS.md §6)
};

/// Dummy experts to append per MoE layer so that every layer has the model's largest expert count
/// (FORMATS.md §6): empty when the counts are uniform. Non-uniform counts are padded only with
/// `pad_experts` and a router with a selection bias (DeepSeek-V3: sigmoid +
/// e_score_correction_bias, which can exclude the dummies exactly); otherwise ConfigError(where,
/// "pad-experts") naming `target` (e.g. "the hf export") and both fixes: `mode: uniform` on the
/// expert-pruning pass, and `pad-experts` (selection-bias routers only).
std::map<int64_t, int64_t> plan_expert_padding(const ModelSpec& spec, bool pad_experts,
                                               const std::string& target, const std::string& where);

struct ExportResult {
  std::string dir;             ///< the directory written
  int64_t packed_modules = 0;  ///< linears stored quantized
  int64_t unpacked_modules =
      0;  ///< quantized in OUT but stored dequantized (format cannot express them)
  int64_t sparse24_modules = 0;  ///< 2:4 linears stored as sparse-24-bitmask (compressed-tensors)
  uint64_t bytes = 0;            ///< Σ tensor bytes of the shards
  std::vector<std::string> log;  ///< one line per fallback and per warning, for the user
};

/// ", N stored as sparse-24-bitmask" for the summary line of an export, "" when N is 0.
std::string sparse24_note(const ExportResult& result);

/// Writes `<out_dir>/hf`, `<out_dir>/gptq` or `<out_dir>/ct` (built as `<dir>.partial`, renamed
/// when complete); gptq and ct get a copy of `<out_dir>/verify` (the golden vectors `lathe verify`
/// replays) when there is one. hf holds OUT/model's tensors as stored (quantized weights
/// dequantized in the model dtype), per-expert layout. ConfigError when `out_dir` is not a lathe
/// output directory (gptq/ct: with quantized tensors), the target exists without `force`, or the
/// expert counts differ between layers and cannot be padded (plan_expert_padding), before anything
/// is written; DataError for a malformed sidecar or model; UnsupportedError for
/// a sidecar scale that the format cannot store exactly. Modules the format cannot express
/// (GPTQ: bits ∉ {2,3,4,8} or widths not divisible by the pack width; compressed-tensors: 3, 5,
/// 6, 7 bits) keep their dequantized `.weight` and are listed in `log` and skipped by the config
/// (`-:` rule / ignore list).
ExportResult export_checkpoint(const std::string& out_dir, ExportFormat format,
                               const ExportOptions& options = {});

}  // namespace lathe
