// Torch-free parsing and validation of a GGUF file (FORMATS.md §5; llama.cpp's gguf.h / ggml.h are
// the reference): header, metadata key/value pairs and tensor infos. The parser takes raw bytes, so
// the fuzz target (tests/fuzz/fuzz_gguf.cpp) and the readers share exactly the same checks. The
// dequantization of the tensor data is in gguf_quants.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lathe::gguf {

/// Metadata value types (gguf.h `gguf_type`).
enum class ValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

/// "u8", "string", "array", … for messages.
const char* value_type_name(ValueType type);

/// Tensor data types (ggml.h `ggml_type`) that a GGUF file may hold. lathe dequantizes the ones
/// gguf_quants.h lists; the others (IQ*, TQ*, MXFP4, …) are known, parsed and listed, and refused
/// by name when their values are needed.
enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

/// Elements per block and bytes per block of a tensor type (ggml's type traits).
struct TypeTraits {
  const char* name;  ///< ggml's spelling: "Q4_K", "F32", …
  uint64_t block_size;
  uint64_t type_size;
};

/// The traits of type id `id`, or nullopt for an id ggml does not define (or a removed one: 4, 5,
/// 31-33, 36-38).
std::optional<TypeTraits> type_traits(uint32_t id);

/// A metadata value: its GGUF type (for arrays also the element type) and the value as JSON
/// (integers stay integers, u64 above 2^63 included; f32/f64 as numbers; strings with their bytes
/// exactly as stored, which GGUF says are UTF-8 but a file may break: dump such JSON with an error
/// handler; arrays as JSON arrays).
struct Value {
  ValueType type = ValueType::kU8;
  ValueType element_type = ValueType::kU8;  ///< arrays only
  nlohmann::json value;
};

/// One tensor, after validation. `dims` are in ggml order (dims[0] varies fastest: the row
/// length); `shape()` is the row-major (PyTorch / HF) order, the reverse.
struct TensorInfo {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type = 0;    ///< TensorType value (known: type_traits() is set)
  uint64_t begin = 0;   ///< absolute byte offset of the data in the file
  uint64_t nbytes = 0;  ///< bytes of data
  uint64_t numel() const;
  std::vector<int64_t> shape() const;
};

/// A validated GGUF file header.
struct Header {
  uint32_t version = 0;
  uint64_t alignment = 32;  ///< general.alignment, else 32
  uint64_t data_begin = 0;  ///< absolute offset of the tensor data section
  std::map<std::string, Value> metadata;
  std::vector<TensorInfo> tensors;  ///< in file order

  /// The tensor named `name`, or nullptr.
  const TensorInfo* find(const std::string& name) const;
  /// The metadata value of `key`, or nullptr.
  const Value* get(const std::string& key) const;
};

/// Largest tensor rank (GGML_MAX_DIMS).
inline constexpr uint32_t kMaxDims = 4;
/// Deepest nesting of arrays inside arrays accepted in metadata.
inline constexpr int kMaxArrayDepth = 4;

/// Parses and validates the GGUF file whose `size` bytes start at `bytes`: magic "GGUF"; version 3
/// (1 and 2 refused: UnsupportedError naming the version); tensor and metadata counts that fit in
/// the file; every value type known; string and array lengths inside the file; no duplicate keys
/// or tensor names; general.alignment a u32 power of two; tensor ranks 1..4, dims ≥ 1 whose
/// product does not overflow and whose row length is a multiple of the type's block size; known
/// type ids; data offsets aligned, inside the file and not overlapping. Throws DataError with
/// where = `label` and field = the key or tensor at fault, stating expected vs found.
Header parse(const uint8_t* bytes, size_t size, const std::string& label);

}  // namespace lathe::gguf
