#include "export/checkpoint_writer.h"

#include <ATen/ATen.h>

#include <fmt/format.h>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"

namespace fs = std::filesystem;

namespace lathe {

std::string checkpoint_shard_name(int64_t index, int64_t count) {
  return fmt::format("model-{:05d}-of-{:05d}.safetensors", index, count);
}

DType safetensors_dtype(at::ScalarType type, const std::string& name) {
  switch (type) {
    case at::kBFloat16: return DType::kBF16;
    case at::kHalf: return DType::kF16;
    case at::kFloat: return DType::kF32;
    case at::kDouble: return DType::kF64;
    case at::kLong: return DType::kI64;
    case at::kInt: return DType::kI32;
    case at::kShort: return DType::kI16;
    case at::kByte: return DType::kU8;
    case at::kChar: return DType::kI8;
    case at::kBool: return DType::kBool;
    default:
      throw UnsupportedError("", name, std::string("cannot write dtype ") + c10::toString(type));
  }
}

TensorBytes tensor_bytes(const std::string& name, const at::Tensor& value,
                         std::vector<at::Tensor>* keep) {
  keep->push_back(value.contiguous().cpu());
  const at::Tensor& c = keep->back();
  return {name, safetensors_dtype(c.scalar_type(), name), c.sizes().vec(),
          static_cast<const uint8_t*>(c.data_ptr()), static_cast<uint64_t>(c.nbytes())};
}

void copy_model_side_files(const fs::path& model_dir, const fs::path& dir,
                           const std::set<std::string>& skip) {
  for (const auto& entry : fs::directory_iterator(model_dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name == "config.json" ||
        name == "model.safetensors.index.json" || entry.path().extension() == ".safetensors" ||
        skip.count(name)) {
      continue;
    }
    fs::copy_file(entry.path(), dir / name, fs::copy_options::overwrite_existing);
  }
}

CheckpointShards::CheckpointShards(fs::path dir, int64_t layers,
                                   std::map<std::string, std::string> metadata)
    : dir_(std::move(dir)), layers_(layers), metadata_(std::move(metadata)) {}

std::string CheckpointShards::file_name(int64_t layer) const {
  if (layer < -1 || layer >= layers_)
    throw InternalError(dir_.string(), "", fmt::format("no shard for layer {}", layer));
  return checkpoint_shard_name(layer < 0 ? layers_ + 1 : layer + 1, layers_ + 1);
}

std::string CheckpointShards::write(int64_t layer, const std::vector<TensorBytes>& tensors) {
  for (const auto& t : tensors) {
    record(layer, t.name);
    tensor_bytes_ += t.size;
  }
  return write_safetensors(path(layer).string(), tensors, metadata_);
}

void CheckpointShards::record(int64_t layer, const std::string& tensor_name) {
  weight_map_[tensor_name] = file_name(layer);
}

uint64_t CheckpointShards::file_bytes() const {
  uint64_t total = 0;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    if (entry.path().extension() == ".safetensors") total += fs::file_size(entry.path());
  }
  return total;
}

void CheckpointShards::write_index(const nlohmann::json& metadata) const {
  const nlohmann::json index = {{"metadata", metadata}, {"weight_map", weight_map_}};
  write_file_atomically((dir_ / "model.safetensors.index.json").string(), index.dump(2) + "\n");
}

}  // namespace lathe
