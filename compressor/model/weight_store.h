// WeightStore: the validated, memory-mapped safetensors weights of one model (DESIGN.md, "Core
// types"). Torch-free; compressor/model/tensor_bridge.h turns its views into at::Tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "compressor/model/dtype.h"

namespace lathe {

class MappedFile;
struct SafetensorsHeader;

/// Where a tensor lives and what it holds.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;  ///< C order; empty for a scalar
  std::string shard_path;      ///< the safetensors file holding it
  uint64_t begin = 0;          ///< absolute byte offset in that file
  uint64_t end = 0;            ///< one past the last byte

  /// end − begin.
  uint64_t nbytes() const { return end - begin; }
  /// Product of the shape (1 for a scalar).
  int64_t numel() const;
};

/// Raw bytes of one tensor inside its shard's mapping. `data` need not be aligned for the dtype
/// (FORMATS.md §1 rule 8): read through memcpy, or check `aligned` before casting. The bytes
/// must be treated as read-only (see MappedFile). `mapping` keeps them alive.
struct TensorView {
  const uint8_t* data = nullptr;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
  int64_t numel = 0;
  bool aligned = false;  ///< data is a multiple of dtype_size(dtype)
  std::shared_ptr<const MappedFile> mapping;
};

/// Read-only, validated, memory-mapped safetensors weights of a model. Opening validates every
/// shard header (FORMATS.md §1) and the sharding index without touching data pages; afterwards
/// every accessor is safe to call from several threads at once.
///
/// Missing names: info(), view(), to_f32() and count_non_finite() throw DataError (where = the
/// model path, field = the name) for a name the checkpoint does not hold, because lathe asks for
/// names that the model's architecture requires, so a miss means the checkpoint is incomplete.
/// Code resolving a name the user typed should test contains() first and raise ConfigError.
class WeightStore {
 public:
  /// Opens `path`: a directory holding model.safetensors.index.json (sharded) or model.safetensors
  /// (transformers' order: the single file wins when both exist), an index .json file, or one
  /// .safetensors file. Throws ResourceError for a missing path or shard (naming it), DataError
  /// for malformed headers or index (naming file and tensor or key), UnsupportedError for dtypes
  /// lathe does not read.
  explicit WeightStore(const std::string& path);
  ~WeightStore();
  WeightStore(WeightStore&&) noexcept;
  WeightStore& operator=(WeightStore&&) noexcept;

  /// The path the store was opened from.
  const std::string& path() const { return path_; }
  /// Every tensor name, sorted.
  const std::vector<std::string>& names() const { return names_; }
  /// Number of tensors.
  size_t size() const { return names_.size(); }
  /// True when the checkpoint holds `name`.
  bool contains(const std::string& name) const { return by_name_.count(name) != 0; }
  /// Dtype, shape, shard and byte range of `name`; DataError when missing.
  const TensorInfo& info(const std::string& name) const;

  /// Zero-copy view of the bytes of `name`; DataError when missing.
  TensorView view(const std::string& name) const;
  /// The elements of `name` as float32 in C order, converted exactly for F16/BF16/F8 and with
  /// round-to-nearest for F64 and wide integers (BOOL → 0/1). Reads the tensor's pages.
  std::vector<float> to_f32(const std::string& name) const;
  /// How many elements of `name` are NaN or ±inf; 0 for integer and bool dtypes.
  uint64_t count_non_finite(const std::string& name) const;

  /// Releases the resident pages of `name`'s bytes (MappedFile::release over its byte range: the
  /// whole pages inside it; a page shared with a neighbouring tensor stays). File-backed pages of
  /// a private mapping count in the process's RSS until released, so streaming code calls this
  /// once it is done with a tensor (DESIGN.md "Memory model"). Views and zero-copy tensors of
  /// `name` (load_tensor) stay valid: their next read faults the bytes in from the file again.
  /// DataError when missing. Thread-safe.
  void release(const std::string& name) const;
  /// release() of each name.
  void release(const std::vector<std::string>& names) const;

  /// `__metadata__` of the single file, or of the first shard (by name) of a sharded model.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// `metadata.total_size` of the sharding index, when there is one and it is an integer.
  std::optional<uint64_t> index_total_size() const { return index_total_size_; }
  /// Sum of every tensor's bytes.
  uint64_t total_bytes() const { return total_bytes_; }
  /// Paths of the safetensors files, sorted; one entry for a single-file model.
  const std::vector<std::string>& shard_paths() const { return shard_paths_; }
  /// True when opened through a sharding index.
  bool sharded() const { return sharded_; }

 private:
  struct Entry {
    TensorInfo info;
    size_t shard = 0;  // index into shards_
  };
  const Entry& entry(const std::string& name) const;
  void open_single(const std::string& file);
  void open_index(const std::string& index_file);
  void add_tensors(const SafetensorsHeader& header, const std::string& file);
  void finish();

  std::string path_;
  bool sharded_ = false;
  std::vector<std::shared_ptr<const MappedFile>> shards_;
  std::vector<std::string> shard_paths_;
  std::unordered_map<std::string, Entry> by_name_;
  std::vector<std::string> names_;
  std::map<std::string, std::string> metadata_;
  std::optional<uint64_t> index_total_size_;
  uint64_t total_bytes_ = 0;
};

/// The checkpoint's entry for a tensor that config.json implies (`name`, `shape`), after checking
/// it is present with that shape. DataError naming the tensor otherwise ("missing: config.json
/// implies ..." or "shape [..] but config.json implies [..]").
const TensorInfo& require_tensor(const WeightStore& store, const std::string& name,
                                 const std::vector<int64_t>& shape);

}  // namespace lathe
