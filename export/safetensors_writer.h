// Writes safetensors files (FORMATS.md §1) deterministically: tensors in ascending name order, the
// header JSON with sorted keys and no whitespace, padded with spaces to a multiple of 8 bytes, so
// the same tensors always give the same bytes (resume relies on it). Torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "compressor/model/dtype.h"

namespace lathe {

/// One tensor to write: `data` points at exactly `size` = numel × dtype_size(dtype) little-endian
/// bytes, which the caller keeps alive until write_safetensors returns (nothing is copied).
struct TensorBytes {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};

/// Writes `tensors` to `path` atomically (temporary file, fsync, rename), streaming each tensor's
/// bytes from where they are with `metadata` as
/// `__metadata__` (omitted when empty). Returns the SHA-256 of the file's bytes ("sha256:<hex>").
/// InternalError for duplicate names or a data size that does not match the shape; ResourceError
/// (where = path) when writing fails.
std::string write_safetensors(const std::string& path, const std::vector<TensorBytes>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace lathe
