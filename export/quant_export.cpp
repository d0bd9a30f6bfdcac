#include "export/quant_export.h"

#include <filesystem>

#include "compressor/common/errors.h"
#include "export/export_source.h"

namespace fs = std::filesystem;

namespace lathe {

ExportFormat parse_export_format(const std::string& name, const std::string& where, const std::string& field) {
  if (name == "gptq") return ExportFormat::kGptq;
  if (name == "compressed-tensors") return ExportFormat::kCompressedTensors;
  throw ConfigError(where, field, "unknown export format \"" + name + "\": expected gptq or compressed-tensors");
}

const char* export_dir_name(ExportFormat format) {
  return format == ExportFormat::kGptq ? "gptq" : "ct";
}

ExportResult export_quantized(const std::string& out_dir, ExportFormat format, const ExportOptions& options) {
  const ExportSource src{fs::path(out_dir)};
  const fs::path target = fs::path(out_dir) / export_dir_name(format);
  PartialDirectory dir(target, options.force);
  ExportResult result;
  result.dir = target.string();
  if (format == ExportFormat::kGptq) {
    write_gptq_files(src, dir.path(), &result);
  } else {
    write_ct_files(src, dir.path(), &result);
  }
  // The golden vectors travel with the export, so `lathe verify` can check it on its own.
  const fs::path golden = fs::path(out_dir) / "verify";
  if (fs::is_directory(golden)) {
    fs::create_directories(dir.path() / "verify");
    for (const auto& e : fs::directory_iterator(golden)) {
      if (e.is_regular_file()) fs::copy_file(e.path(), dir.path() / "verify" / e.path().filename());
    }
  }
  dir.publish();
  return result;
}

}  // namespace lathe
