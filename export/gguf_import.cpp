#include "export/gguf_import.h"

#include <malloc.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/model/dtype.h"
#include "export/checkpoint_writer.h"
#include "export/export_manifest.h"
#include "export/gguf_file.h"
#include "export/gguf_model.h"
#include "export/gguf_quants.h"
#include "export/gguf_tokenizer.h"
#include "export/partial_directory.h"
#include "export/safetensors_writer.h"

namespace fs = std::filesystem;

namespace lathe {
namespace {

constexpr uint64_t kChunkValues = 1 << 20;  // dequantize at most this many values at a time

/// bfloat16 bits of `x`, rounded to nearest even (NaN stays a quiet NaN), as torch's .to(bfloat16).
uint16_t to_bf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

/// One HF tensor's bytes in the output dtype, read from the file in row chunks.
std::vector<uint8_t> dequantized_bytes(const gguf::File& file, const gguf::HfTensor& t, bool bf16) {
  const uint64_t length = gguf::hf_row_length(t), rows = gguf::hf_rows(t);
  const uint64_t chunk_rows = std::max<uint64_t>(1, kChunkValues / std::max<uint64_t>(length, 1));
  std::vector<uint8_t> out(rows * length * (bf16 ? 2 : 4));
  std::vector<float> values;
  for (uint64_t r = 0; r < rows; r += chunk_rows) {
    const uint64_t n = std::min(chunk_rows, rows - r) * length;
    values.resize(n);
    gguf::read_hf_rows(file, t, r, std::min(chunk_rows, rows - r), values.data());
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t at = r * length + i;
      if (bf16) {
        const uint16_t b = to_bf16(values[i]);
        std::memcpy(out.data() + 2 * at, &b, 2);
      } else {
        std::memcpy(out.data() + 4 * at, &values[i], 4);
      }
    }
  }
  return out;
}

/// The shards: one per decoder layer, the last for everything outside the layers.
void write_shards(const gguf::File& file, const gguf::HfModel& model, bool bf16,
                  CheckpointShards* shards) {
  std::map<int64_t, std::vector<const gguf::HfTensor*>> by_shard;  // layer → tensors; -1 last
  for (const auto& t : model.tensors) by_shard[t.layer].push_back(&t);
  for (const auto& [layer, tensors] : by_shard) {
    std::vector<std::vector<uint8_t>> data;
    std::vector<TensorBytes> shard;
    for (const gguf::HfTensor* t : tensors) {
      data.push_back(dequantized_bytes(file, *t, bf16));
      shard.push_back({t->name, bf16 ? DType::kBF16 : DType::kF32, t->shape, data.back().data(),
                       data.back().size()});
    }
    shards->write(layer, shard);
  }
}

void write_json(const fs::path& path, const std::string& text) {
  write_file_atomically(path.string(), text + "\n");
}

}  // namespace

ImportResult import_gguf(const std::string& gguf_path, const std::string& out_dir,
                         const ImportOptions& options) {
  if (options.dtype != "bf16" && options.dtype != "f32") {
    throw ConfigError("", "--dtype", "expected bf16 or f32, found \"" + options.dtype + "\"");
  }
  const bool bf16 = options.dtype == "bf16";
  const gguf::File file(gguf_path);
  // Everything that can refuse the file runs before anything is written.
  gguf::HfModel model = gguf::hf_model(file.header(), gguf_path);
  auto tokenizer =
      std::make_unique<gguf::TokenizerFiles>(gguf::hf_tokenizer(file.header(), gguf_path));
  for (const auto& t : model.tensors) {
    const gguf::TensorInfo& info = file.tensor(t.source);
    if (!gguf::can_dequantize(info.type)) {
      throw UnsupportedError(gguf_path, t.source,
                             std::string("GGUF type ") + gguf::type_traits(info.type)->name +
                                 " is not supported (docs/gguf.md lists the types lathe reads)");
    }
  }
  model.config["dtype"] = bf16 ? "bfloat16" : "float32";
  const int64_t layers = model.config.at("num_hidden_layers").get<int64_t>();

  PartialDirectory dir(out_dir, options.force);
  // The tokenizer first, then freed: its JSON (262k tokens, 515k merges for Gemma) takes hundreds
  // of MB that the largest shard (the embedding) should not find still allocated.
  write_json(dir.path() / "tokenizer.json", tokenizer->tokenizer.dump());
  write_json(dir.path() / "tokenizer_config.json", tokenizer->config.dump(2));
  tokenizer.reset();
  ::malloc_trim(
      0);  // hand its many small blocks back to the system, not just to malloc's free lists
  ImportResult result;
  result.dir = out_dir;
  result.architecture = model.architecture;
  result.tensors = static_cast<int64_t>(model.tensors.size());
  CheckpointShards shards(dir.path(), layers, {{"format", "pt"}});
  write_shards(file, model, bf16, &shards);
  result.bytes = shards.tensor_bytes();
  shards.write_index({{"total_size", result.bytes}});
  write_json(dir.path() / "config.json", model.config.dump(2));
  write_export_manifest(dir.path());
  dir.publish();
  return result;
}

}  // namespace lathe
