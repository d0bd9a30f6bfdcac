// The one writer of HF checkpoint directories (issue 26, item 1), shared by `lathe apply`
// (OUT/model and OUT/quant), every export (OUT/hf, OUT/gptq, OUT/ct) and `lathe import` of a GGUF:
//   - shards: layer i in model-<i+1>-of-<N+1>.safetensors, embedding / final norm / LM head in the
//     last (N = decoder layers), each written atomically and deterministically
//     (safetensors_writer.h);
//   - model.safetensors.index.json with every tensor's shard and the total tensor bytes;
//   - the source model's side files (tokenizer, generation config, ...) copied beside them;
//   - the ATen dtype → safetensors dtype mapping.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compressor/model/dtype.h"
#include "export/safetensors_writer.h"

namespace lathe {

/// "model-00003-of-00017.safetensors".
std::string checkpoint_shard_name(int64_t index, int64_t count);

/// The safetensors dtype of a tensor's scalar type; UnsupportedError naming `name` for types
/// safetensors cannot hold.
DType safetensors_dtype(at::ScalarType type, const std::string& name);

/// A view of `value`'s bytes for write_safetensors; the contiguous CPU tensor it points into is
/// appended to `keep` so it outlives the write (no copy when `value` already is one, e.g. a mapped
/// weight).
TensorBytes tensor_bytes(const std::string& name, const at::Tensor& value,
                         std::vector<at::Tensor>* keep);

/// Copies every regular file of `model_dir` into `dir` except config.json, the safetensors shards,
/// their index and the names in `skip`; an existing file is replaced.
void copy_model_side_files(const std::filesystem::path& model_dir, const std::filesystem::path& dir,
                           const std::set<std::string>& skip = {});

/// The shards and index of one checkpoint directory with `layers` decoder layers.
class CheckpointShards {
 public:
  CheckpointShards(std::filesystem::path dir, int64_t layers,
                   std::map<std::string, std::string> metadata);

  /// The shard file of decoder layer `layer` (−1: the last shard).
  std::string file_name(int64_t layer) const;
  std::filesystem::path path(int64_t layer) const { return dir_ / file_name(layer); }
  /// Writes the shard of `layer` (−1: the last) and records its tensors in the index; returns the
  /// file's SHA-256 ("sha256:<hex>").
  std::string write(int64_t layer, const std::vector<TensorBytes>& tensors);
  /// Records tensors of `layer`'s shard without writing it (a shard a resumed run already wrote).
  void record(int64_t layer, const std::string& tensor_name);
  bool empty() const { return weight_map_.empty(); }
  /// Tensor bytes written by write() so far.
  uint64_t tensor_bytes() const { return tensor_bytes_; }
  /// The sizes of the directory's .safetensors files, summed.
  uint64_t file_bytes() const;
  /// Writes model.safetensors.index.json: `metadata` (e.g. {"total_size": n}) and the weight map.
  void write_index(const nlohmann::json& metadata) const;

 private:
  std::filesystem::path dir_;
  int64_t layers_;
  std::map<std::string, std::string> metadata_;
  nlohmann::json weight_map_ = nlohmann::json::object();
  uint64_t tensor_bytes_ = 0;
};

}  // namespace lathe
