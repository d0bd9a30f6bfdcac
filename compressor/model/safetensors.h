// Torch-free parsing and validation of one safetensors file's header (FORMATS.md §1). The parser
// takes raw bytes, so the fuzz target and WeightStore share exactly the same checks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "compressor/model/dtype.h"

namespace lathe {

/// Upper bound on the header length N, as in the safetensors reference implementation.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;
/// Highest tensor rank accepted.
inline constexpr size_t kMaxSafetensorsRank = 8;

/// One tensor of a safetensors file, after validation.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;  ///< C order; empty for a scalar
  uint64_t begin = 0;          ///< absolute byte offset of the first byte in the file
  uint64_t end = 0;            ///< absolute offset one past the last byte; end − begin = nbytes

  /// Bytes of data (end − begin); equals numel() × dtype_size(dtype).
  uint64_t nbytes() const { return end - begin; }
  /// Number of elements (1 for a scalar, 0 when any dimension is 0).
  int64_t numel() const;
};

/// A validated safetensors header.
struct SafetensorsHeader {
  uint64_t header_bytes = 0;                    ///< N, the JSON header length
  uint64_t data_begin = 0;                      ///< 8 + N: absolute offset of the data buffer
  uint64_t data_bytes = 0;                      ///< B = file size − 8 − N
  std::vector<SafetensorsEntry> tensors;        ///< sorted by name
  std::map<std::string, std::string> metadata;  ///< `__metadata__`, empty when absent

  /// The entry named `name`, or nullptr.
  const SafetensorsEntry* find(const std::string& name) const;
};

/// Parses and validates the header of a safetensors file whose `file_size` bytes start at `bytes`
/// (only the first 8 + N are read; the data buffer is never touched). Enforces every rule of
/// FORMATS.md §1: length bounds, UTF-8, a single JSON object with only trailing spaces, no
/// duplicate keys, known dtypes, non-negative integer shapes of rank ≤ 8, two integer offsets,
/// byte counts that match shape × dtype (overflow-checked), offsets inside the buffer that tile
/// it exactly, non-empty names, string metadata. Throws DataError with where = `file_label`,
/// field = the tensor name or header key at fault, and a message stating expected vs found;
/// UnsupportedError for dtypes the format defines but lathe does not read (F4, F8_E8M0, ...).
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t file_size,
                                           const std::string& file_label);

/// "[4, 8]"-style text of a shape, as used in messages and listings ("[]" for a scalar).
std::string format_shape(const std::vector<int64_t>& shape);

}  // namespace lathe
