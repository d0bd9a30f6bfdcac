#include "compressor/model/weight_store.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"
#include "compressor/model/mapped_file.h"
#include "compressor/model/safetensors.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::string in_quotes(const std::string& s) {
  return "'" + s + "'";
}

// A shard name is a plain file name in the index's directory: no separators, no NUL, not "."
// or "..", so a hostile index cannot make lathe open files elsewhere.
void check_shard_name(const std::string& shard, const std::string& tensor,
                      const std::string& index_file) {
  const bool bad = shard.empty() || shard == "." || shard == ".." ||
                   shard.find_first_of(std::string("/\\\0", 3)) != std::string::npos;
  if (bad) {
    throw DataError(index_file, tensor,
                    "weight_map shard name " + in_quotes(shard) +
                        " must be a plain file name (no path separators, not '..')");
  }
}

// weight_map of an index: tensor → shard file name, every value a checked shard name.
std::map<std::string, std::string> parse_weight_map(const json& index,
                                                    const std::string& index_file) {
  if (!index.is_object()) throw DataError(index_file, "index", "index is not a JSON object");
  if (!index.contains("weight_map") || !index.at("weight_map").is_object()) {
    throw DataError(index_file, "weight_map", "index needs a weight_map object");
  }
  std::map<std::string, std::string> weight_map;
  for (const auto& item : index.at("weight_map").items()) {
    if (item.key().empty()) throw DataError(index_file, "weight_map", "empty tensor name");
    if (!item.value().is_string()) {
      throw DataError(index_file, item.key(),
                      "weight_map value must be a shard file name, found " + item.value().dump());
    }
    const auto& shard = item.value().get_ref<const std::string&>();
    check_shard_name(shard, item.key(), index_file);
    weight_map.emplace(item.key(), shard);
  }
  return weight_map;
}

// One shard of an index, mapped and validated on its own.
struct ParsedShard {
  std::string name;  // as written in the weight_map
  std::string file;  // path
  std::shared_ptr<const MappedFile> mapping;
  SafetensorsHeader header;
};

// Maps and validates every shard the weight_map names, sorted by name; ResourceError naming the
// first missing one.
std::vector<ParsedShard> open_shards(const std::map<std::string, std::string>& weight_map,
                                     const std::string& index_file) {
  std::map<std::string, std::string> first_tensor_of;  // shard → a tensor the map puts there
  for (const auto& [tensor, shard] : weight_map) first_tensor_of.emplace(shard, tensor);
  const fs::path dir = fs::path(index_file).parent_path();
  std::vector<ParsedShard> shards;
  for (const auto& [shard, tensor] : first_tensor_of) {
    const std::string file = (dir / shard).string();
    if (!fs::exists(file)) {
      throw ResourceError(file, shard,
                          "shard listed in " + index_file + " (e.g. for tensor " +
                              in_quotes(tensor) + ") does not exist");
    }
    auto mapping = std::make_shared<const MappedFile>(file);
    SafetensorsHeader header = parse_safetensors_header(mapping->data(), mapping->size(), file);
    shards.push_back({shard, file, std::move(mapping), std::move(header)});
  }
  return shards;
}

// FORMATS.md §1 sharding: each tensor in exactly one shard, and there where the map says.
void check_shards_against_map(const std::vector<ParsedShard>& shards,
                              const std::map<std::string, std::string>& weight_map,
                              const std::string& index_file) {
  std::map<std::string, const ParsedShard*> holder;
  for (const ParsedShard& shard : shards) {
    for (const auto& tensor : shard.header.tensors) {
      const auto [it, fresh] = holder.emplace(tensor.name, &shard);
      if (!fresh) {
        throw DataError(shard.file, tensor.name,
                        "tensor is stored twice: in shard " + in_quotes(it->second->name) +
                            " and in shard " + in_quotes(shard.name));
      }
    }
  }
  for (const auto& [tensor, shard] : holder) {
    const auto mapped = weight_map.find(tensor);
    if (mapped == weight_map.end()) {
      throw DataError(shard->file, tensor,
                      "tensor is in shard " + in_quotes(shard->name) +
                          " but not in the weight_map of " + index_file);
    }
    if (mapped->second != shard->name) {
      throw DataError(shard->file, tensor,
                      "tensor is in shard " + in_quotes(shard->name) +
                          " but the weight_map puts it in " + in_quotes(mapped->second));
    }
  }
  for (const auto& [tensor, shard] : weight_map) {
    if (holder.count(tensor) == 0) {
      throw DataError(
          index_file, tensor,
          "weight_map puts the tensor in shard " + in_quotes(shard) + ", which does not hold it");
    }
  }
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (const int64_t dim : shape) n *= dim;
  return n;
}

WeightStore::WeightStore(const std::string& path) : path_(path) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (!fs::exists(status)) throw ResourceError(path, "", "no such file or directory");
  if (fs::is_directory(status)) {
    const fs::path dir(path);
    if (fs::exists(dir / kSingleFile)) {
      open_single((dir / kSingleFile).string());
    } else if (fs::exists(dir / kIndexFile)) {
      open_index((dir / kIndexFile).string());
    } else {
      throw ResourceError(
          path, "", std::string("directory holds neither ") + kSingleFile + " nor " + kIndexFile);
    }
  } else if (fs::path(path).extension() == ".json") {
    open_index(path);
  } else {
    open_single(path);
  }
  finish();
}

WeightStore::~WeightStore() = default;
WeightStore::WeightStore(WeightStore&&) noexcept = default;
WeightStore& WeightStore::operator=(WeightStore&&) noexcept = default;

void WeightStore::open_single(const std::string& file) {
  auto mapping = std::make_shared<const MappedFile>(file);
  const SafetensorsHeader header = parse_safetensors_header(mapping->data(), mapping->size(), file);
  metadata_ = header.metadata;
  add_tensors(header, file);
  shards_.push_back(std::move(mapping));
  shard_paths_.push_back(file);
}

void WeightStore::open_index(const std::string& index_file) {
  sharded_ = true;
  const json index = parse_json_strict(read_file(index_file), index_file, "index");
  const std::map<std::string, std::string> weight_map = parse_weight_map(index, index_file);
  if (index.contains("metadata") && index.at("metadata").is_object()) {
    const json& total = index.at("metadata").value("total_size", json());
    if (total.is_number_unsigned()) index_total_size_ = total.get<uint64_t>();
  }
  const std::vector<ParsedShard> shards = open_shards(weight_map, index_file);
  check_shards_against_map(shards, weight_map, index_file);
  for (const ParsedShard& shard : shards) {
    if (shards_.empty()) metadata_ = shard.header.metadata;
    add_tensors(shard.header, shard.file);
    shards_.push_back(shard.mapping);
    shard_paths_.push_back(shard.file);
  }
}

void WeightStore::add_tensors(const SafetensorsHeader& header, const std::string& file) {
  for (const auto& tensor : header.tensors) {
    by_name_.emplace(tensor.name, Entry{{tensor.name, tensor.dtype, tensor.shape, file,
                                         tensor.begin, tensor.end},
                                        shards_.size()});
  }
}

void WeightStore::finish() {
  names_.reserve(by_name_.size());
  for (const auto& [name, entry] : by_name_) {
    names_.push_back(name);
    total_bytes_ += entry.info.nbytes();
  }
  std::sort(names_.begin(), names_.end());
}

const WeightStore::Entry& WeightStore::entry(const std::string& name) const {
  const auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    throw DataError(path_, name, "the checkpoint holds no tensor of this name");
  }
  return it->second;
}

const TensorInfo& WeightStore::info(const std::string& name) const {
  return entry(name).info;
}

void WeightStore::release(const std::string& name) const {
  const Entry& e = entry(name);
  shards_[e.shard]->release(e.info.begin, e.info.end);
}

void WeightStore::release(const std::vector<std::string>& names) const {
  for (const std::string& name : names) release(name);
}

TensorView WeightStore::view(const std::string& name) const {
  const Entry& e = entry(name);
  TensorView view;
  view.mapping = shards_[e.shard];
  view.data = view.mapping->data() + e.info.begin;
  view.dtype = e.info.dtype;
  view.shape = e.info.shape;
  view.nbytes = e.info.nbytes();
  view.numel = e.info.numel();
  view.aligned = reinterpret_cast<uintptr_t>(view.data) % dtype_size(view.dtype) == 0;
  return view;
}

std::vector<float> WeightStore::to_f32(const std::string& name) const {
  const TensorView v = view(name);
  std::vector<float> out(static_cast<size_t>(v.numel));
  convert_to_f32(v.dtype, v.data, out.size(), out.data());
  return out;
}

uint64_t WeightStore::count_non_finite(const std::string& name) const {
  const TensorView v = view(name);
  if (!is_floating(v.dtype)) return 0;
  uint64_t count = 0;
  const size_t n = static_cast<size_t>(v.numel);
  if (v.dtype == DType::kF64) {  // a finite double may overflow float32: test the double itself
    for (size_t i = 0; i < n; ++i) {
      double value;
      std::memcpy(&value, v.data + i * sizeof(double), sizeof value);
      count += !std::isfinite(value);
    }
    return count;
  }
  constexpr size_t kChunk = 4096;
  float buffer[kChunk];
  const size_t size = dtype_size(v.dtype);
  for (size_t done = 0; done < n; done += kChunk) {
    const size_t len = std::min(kChunk, n - done);
    convert_to_f32(v.dtype, v.data + done * size, len, buffer);
    for (size_t i = 0; i < len; ++i) count += !std::isfinite(buffer[i]);
  }
  return count;
}

const TensorInfo& require_tensor(const WeightStore& store, const std::string& name,
                                 const std::vector<int64_t>& shape) {
  if (!store.contains(name)) {
    throw DataError(store.path(), name,
                    "missing: config.json implies a tensor of shape " + format_shape(shape));
  }
  const TensorInfo& info = store.info(name);
  if (info.shape != shape) {
    throw DataError(
        info.shard_path, name,
        "shape " + format_shape(info.shape) + " but config.json implies " + format_shape(shape));
  }
  return info;
}

}  // namespace lathe
