// OUT/hf: a plain HF checkpoint that stock transformers loads (docs/export.md "hf"). The tensors
// are OUT/model's as stored (quantized weights dequantized in the model dtype), per-expert layout
// (FORMATS.md §2 DECISION), padded to one expert count when asked (FORMATS.md §6).
#include <ATen/ATen.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "compressor/common/atomic_file.h"
#include "export/export_source.h"

namespace fs = std::filesystem;

namespace lathe {

void write_hf_files(const ExportSource& src, const fs::path& dir, ExportResult* result) {
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"lathe.pipeline", src.pipeline()}, {"lathe.version", LATHE_VERSION}};
  result->bytes = write_export_shards(src, dir, metadata, [&](int64_t i, ShardTensors* shard) {
    const ExportLayer layer = src.layer(i);
    for (const auto& [name, value] : layer.others) shard->add(name, value);
    for (const ExportLinear& l : layer.linears) {
      shard->add(l.module + ".weight", l.weight);
      if (l.quantized) result->unpacked_modules += 1;
    }
  });
  write_file_atomically((dir / "config.json").string(), src.config().dump(2) + "\n");
  copy_model_side_files(src.model_dir(), dir);
}

}  // namespace lathe
