// The packed exports of a lathe output directory (docs/export.md): OUT/gptq (GPTQ v1, FORMATS.md
// §3) and OUT/ct (compressed-tensors, FORMATS.md §4), written from OUT/model, OUT/quant and the
// manifest by `lathe export OUT --format F` and by `lathe run` (recipe `export: [...]`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lathe {

enum class ExportFormat { kGptq, kCompressedTensors };

/// "gptq" or "compressed-tensors" (the recipe / CLI names). ConfigError(where, field) otherwise,
/// listing the choices.
ExportFormat parse_export_format(const std::string& name, const std::string& where, const std::string& field);

/// The directory name inside OUT: "gptq" or "ct".
const char* export_dir_name(ExportFormat format);

struct ExportOptions {
  bool force = false;  ///< replace an existing OUT/gptq or OUT/ct
};

struct ExportResult {
  std::string dir;                 ///< the directory written
  int64_t packed_modules = 0;      ///< linears stored quantized
  int64_t unpacked_modules = 0;    ///< quantized in OUT but stored dequantized (format cannot express them)
  uint64_t bytes = 0;              ///< Σ tensor bytes of the shards
  std::vector<std::string> log;    ///< one line per fallback and per warning, for the user
};

/// Writes `<out_dir>/gptq` or `<out_dir>/ct` (built as `<dir>.partial`, renamed when complete),
/// with a copy of `<out_dir>/verify` (the golden vectors `lathe verify` replays) when there is one.
/// ConfigError when `out_dir` is not a lathe output directory with quantized tensors or the target
/// exists without `force`; DataError for a malformed sidecar or model; UnsupportedError for
/// a sidecar scale that the format cannot store exactly. Modules the format cannot express
/// (GPTQ: bits ∉ {2,3,4,8} or widths not divisible by the pack width; compressed-tensors: 3, 5,
/// 6, 7 bits) keep their dequantized `.weight` and are listed in `log` and skipped by the config
/// (`-:` rule / ignore list).
ExportResult export_quantized(const std::string& out_dir, ExportFormat format, const ExportOptions& options = {});

}  // namespace lathe
