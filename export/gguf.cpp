#include "export/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "compressor/common/errors.h"

namespace lathe::gguf {
namespace {

constexpr uint64_t kDefaultAlignment = 32;
constexpr size_t kMaxNameBytes = 63;  // GGML_MAX_NAME − 1
// The least bytes a metadata pair and a tensor info can take, to bound the counts by the file.
constexpr uint64_t kMinPairBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

/// Reads little-endian values from the file's bytes, never past its end.
class Cursor {
 public:
  Cursor(const uint8_t* bytes, size_t size, const std::string& label)
      : bytes_(bytes), size_(size), label_(label) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  void need(uint64_t n, const std::string& field, const char* what) const {
    if (n > left()) {
      throw DataError(label_, field,
                      std::string("truncated ") + what + ": needs " + std::to_string(n) +
                          " bytes at offset " + std::to_string(pos_) + ", the file has " +
                          std::to_string(left()) + " left");
    }
  }
  template <typename T>
  T read(const std::string& field, const char* what) {
    need(sizeof(T), field, what);
    T v;
    std::memcpy(&v, bytes_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const std::string& field, const char* what) {
    const uint64_t n = read<uint64_t>(field, what);
    need(n, field, what);
    std::string s(reinterpret_cast<const char*>(bytes_ + pos_), static_cast<size_t>(n));
    pos_ += n;
    return s;
  }

 private:
  const uint8_t* bytes_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& label_;
};

/// Bytes one element of a fixed-size type takes; 0 for string and array.
uint64_t fixed_size(ValueType t) {
  switch (t) {
    case ValueType::kU8:
    case ValueType::kI8:
    case ValueType::kBool: return 1;
    case ValueType::kU16:
    case ValueType::kI16: return 2;
    case ValueType::kU32:
    case ValueType::kI32:
    case ValueType::kF32: return 4;
    case ValueType::kU64:
    case ValueType::kI64:
    case ValueType::kF64: return 8;
    default: return 0;
  }
}

ValueType value_type(uint32_t id, const std::string& label, const std::string& field) {
  if (id > static_cast<uint32_t>(ValueType::kF64)) {
    throw DataError(label, field,
                    "unknown metadata value type " + std::to_string(id) + " (expected 0..12)");
  }
  return static_cast<ValueType>(id);
}

nlohmann::json read_scalar(Cursor& c, ValueType t, const std::string& field,
                           const std::string& label) {
  switch (t) {
    case ValueType::kU8: return c.read<uint8_t>(field, "u8");
    case ValueType::kI8: return c.read<int8_t>(field, "i8");
    case ValueType::kU16: return c.read<uint16_t>(field, "u16");
    case ValueType::kI16: return c.read<int16_t>(field, "i16");
    case ValueType::kU32: return c.read<uint32_t>(field, "u32");
    case ValueType::kI32: return c.read<int32_t>(field, "i32");
    case ValueType::kF32: return static_cast<double>(c.read<float>(field, "f32"));
    case ValueType::kU64: return c.read<uint64_t>(field, "u64");
    case ValueType::kI64: return c.read<int64_t>(field, "i64");
    case ValueType::kF64: return c.read<double>(field, "f64");
    case ValueType::kBool: {
      const uint8_t b = c.read<uint8_t>(field, "bool");
      if (b > 1)
        throw DataError(label, field, "bool value " + std::to_string(b) + " (expected 0 or 1)");
      return b == 1;
    }
    case ValueType::kString: return c.string(field, "string");
    default: throw InternalError(label, field, "read_scalar of an array");
  }
}

/// An array value (its element type and count already known to be readable), arrays nested up to
/// kMaxArrayDepth.
nlohmann::json read_array(Cursor& c, const std::string& field, const std::string& label, int depth,
                          ValueType* element) {
  if (depth > kMaxArrayDepth) {
    throw DataError(label, field, "arrays nested deeper than " + std::to_string(kMaxArrayDepth));
  }
  *element = value_type(c.read<uint32_t>(field, "array type"), label, field);
  const uint64_t count = c.read<uint64_t>(field, "array length");
  // Every element takes at least this many bytes: a count the file cannot hold is refused before
  // anything is allocated.
  const uint64_t least = *element == ValueType::kString  ? 8
                         : *element == ValueType::kArray ? 12
                                                         : fixed_size(*element);
  if (count > c.left() / least) {
    throw DataError(label, field,
                    "array of " + std::to_string(count) + " " + value_type_name(*element) +
                        " values needs at least " + std::to_string(least) +
                        " bytes each; the file has " + std::to_string(c.left()) + " left");
  }
  nlohmann::json out = nlohmann::json::array();
  out.get_ref<nlohmann::json::array_t&>().reserve(static_cast<size_t>(count));
  for (uint64_t i = 0; i < count; ++i) {
    if (*element == ValueType::kArray) {
      ValueType inner;
      out.push_back(read_array(c, field, label, depth + 1, &inner));
    } else {
      out.push_back(read_scalar(c, *element, field, label));
    }
  }
  return out;
}

Value read_value(Cursor& c, const std::string& key, const std::string& label) {
  Value v;
  v.type = value_type(c.read<uint32_t>(key, "value type"), label, key);
  if (v.type == ValueType::kArray) {
    v.value = read_array(c, key, label, 1, &v.element_type);
  } else {
    v.value = read_scalar(c, v.type, key, label);
  }
  return v;
}

/// a · b, or nullopt on overflow past `limit`.
std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b, uint64_t limit) {
  if (a != 0 && b > limit / a) return std::nullopt;
  return a * b;
}

uint64_t alignment_of(const std::map<std::string, Value>& metadata, const std::string& label) {
  auto it = metadata.find("general.alignment");
  if (it == metadata.end()) return kDefaultAlignment;
  const Value& v = it->second;
  if (v.type != ValueType::kU32) {
    throw DataError(label, "general.alignment",
                    std::string("expected a u32, found ") + value_type_name(v.type));
  }
  const uint64_t a = v.value.get<uint64_t>();
  if (a == 0 || (a & (a - 1)) != 0) {
    throw DataError(label, "general.alignment",
                    "expected a power of two, found " + std::to_string(a));
  }
  return a;
}

TensorInfo read_tensor_info(Cursor& c, const std::string& label, size_t index) {
  TensorInfo t;
  const std::string where = "tensor " + std::to_string(index);
  t.name = c.string(where, "tensor name");
  if (t.name.empty()) throw DataError(label, where, "empty tensor name");
  if (t.name.size() > kMaxNameBytes) {
    throw DataError(
        label, where,
        "tensor name of " + std::to_string(t.name.size()) + " bytes (ggml allows at most 63)");
  }
  const uint32_t rank = c.read<uint32_t>(t.name, "rank");
  if (rank < 1 || rank > kMaxDims) {
    throw DataError(
        label, t.name,
        "rank " + std::to_string(rank) + " (expected 1.." + std::to_string(kMaxDims) + ")");
  }
  for (uint32_t d = 0; d < rank; ++d) t.dims.push_back(c.read<uint64_t>(t.name, "dimension"));
  t.type = c.read<uint32_t>(t.name, "type");
  const std::optional<TypeTraits> traits = type_traits(t.type);
  if (!traits) throw DataError(label, t.name, "unknown ggml type id " + std::to_string(t.type));
  const uint64_t offset = c.read<uint64_t>(t.name, "offset");
  // numel ≤ 2^63 − 1, as ggml's int64_t element counts require
  uint64_t numel = 1;
  for (const uint64_t d : t.dims) {
    const std::optional<uint64_t> n =
        checked_mul(numel, d, static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
    if (!n)
      throw DataError(label, t.name,
                      "the product of the dimensions overflows 64-bit element counts");
    numel = *n;
  }
  if (t.dims[0] % traits->block_size != 0) {
    throw DataError(label, t.name,
                    "row length " + std::to_string(t.dims[0]) + " is not a multiple of " +
                        traits->name + "'s block of " + std::to_string(traits->block_size));
  }
  const std::optional<uint64_t> bytes = checked_mul(numel / traits->block_size, traits->type_size,
                                                    std::numeric_limits<uint64_t>::max());
  if (!bytes) throw DataError(label, t.name, "the data size overflows 64 bits");
  t.nbytes = *bytes;
  t.begin = offset;  // relative until the data section is known
  return t;
}

/// Turns relative offsets into absolute ones and checks alignment, bounds and overlaps.
void place_tensors(std::vector<TensorInfo>& tensors, uint64_t data_begin, uint64_t alignment,
                   uint64_t size, const std::string& label) {
  for (auto& t : tensors) {
    if (t.begin % alignment != 0) {
      throw DataError(label, t.name,
                      "data offset " + std::to_string(t.begin) +
                          " is not a multiple of the alignment " + std::to_string(alignment));
    }
    if (t.begin > size - data_begin || t.nbytes > size - data_begin - t.begin) {
      throw DataError(label, t.name,
                      "data [" + std::to_string(t.begin) + ", +" + std::to_string(t.nbytes) +
                          ") past the end of the " + std::to_string(size - data_begin) +
                          "-byte data section");
    }
    t.begin += data_begin;
  }
  std::vector<const TensorInfo*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < order.size(); ++i) {
    if (order[i - 1]->begin + order[i - 1]->nbytes > order[i]->begin) {
      throw DataError(label, order[i]->name, "its data overlaps that of " + order[i - 1]->name);
    }
  }
}

}  // namespace

const char* value_type_name(ValueType type) {
  static const char* const names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                      "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(type);
  return i < sizeof names / sizeof names[0] ? names[i] : "?";
}

std::optional<TypeTraits> type_traits(uint32_t id) {
  constexpr uint64_t qk_k = 256;
  switch (static_cast<TensorType>(id)) {
    case TensorType::kF32: return TypeTraits{"F32", 1, 4};
    case TensorType::kF16: return TypeTraits{"F16", 1, 2};
    case TensorType::kQ4_0: return TypeTraits{"Q4_0", 32, 2 + 16};
    case TensorType::kQ4_1: return TypeTraits{"Q4_1", 32, 2 + 2 + 16};
    case TensorType::kQ5_0: return TypeTraits{"Q5_0", 32, 2 + 4 + 16};
    case TensorType::kQ5_1: return TypeTraits{"Q5_1", 32, 2 + 2 + 4 + 16};
    case TensorType::kQ8_0: return TypeTraits{"Q8_0", 32, 2 + 32};
    case TensorType::kQ8_1: return TypeTraits{"Q8_1", 32, 4 + 4 + 32};
    case TensorType::kQ2_K: return TypeTraits{"Q2_K", qk_k, 2 + 2 + qk_k / 16 + qk_k / 4};
    case TensorType::kQ3_K: return TypeTraits{"Q3_K", qk_k, 2 + qk_k / 4 + qk_k / 8 + 12};
    case TensorType::kQ4_K: return TypeTraits{"Q4_K", qk_k, 2 + 2 + qk_k / 2 + 12};
    case TensorType::kQ5_K: return TypeTraits{"Q5_K", qk_k, 2 + 2 + qk_k / 2 + qk_k / 8 + 12};
    case TensorType::kQ6_K: return TypeTraits{"Q6_K", qk_k, 2 + qk_k / 2 + qk_k / 4 + qk_k / 16};
    case TensorType::kQ8_K: return TypeTraits{"Q8_K", qk_k, 4 + qk_k + qk_k / 8};
    case TensorType::kIQ2_XXS: return TypeTraits{"IQ2_XXS", qk_k, 2 + qk_k / 4};
    case TensorType::kIQ2_XS: return TypeTraits{"IQ2_XS", qk_k, 2 + qk_k / 4 + qk_k / 32};
    case TensorType::kIQ3_XXS: return TypeTraits{"IQ3_XXS", qk_k, 2 + qk_k / 4 + qk_k / 8};
    case TensorType::kIQ1_S: return TypeTraits{"IQ1_S", qk_k, 2 + qk_k / 8 + qk_k / 16};
    case TensorType::kIQ4_NL: return TypeTraits{"IQ4_NL", 32, 2 + 16};
    case TensorType::kIQ3_S:
      return TypeTraits{"IQ3_S", qk_k, 2 + qk_k / 4 + qk_k / 8 + qk_k / 32 + 4};
    case TensorType::kIQ2_S: return TypeTraits{"IQ2_S", qk_k, 2 + qk_k / 4 + qk_k / 16};
    case TensorType::kIQ4_XS: return TypeTraits{"IQ4_XS", qk_k, 2 + 2 + qk_k / 2 + qk_k / 64};
    case TensorType::kI8: return TypeTraits{"I8", 1, 1};
    case TensorType::kI16: return TypeTraits{"I16", 1, 2};
    case TensorType::kI32: return TypeTraits{"I32", 1, 4};
    case TensorType::kI64: return TypeTraits{"I64", 1, 8};
    case TensorType::kF64: return TypeTraits{"F64", 1, 8};
    case TensorType::kIQ1_M: return TypeTraits{"IQ1_M", qk_k, qk_k / 8 + qk_k / 16 + qk_k / 32};
    case TensorType::kBF16: return TypeTraits{"BF16", 1, 2};
    case TensorType::kTQ1_0: return TypeTraits{"TQ1_0", qk_k, 2 + 4 * 13};
    case TensorType::kTQ2_0: return TypeTraits{"TQ2_0", qk_k, 2 + 64};
    case TensorType::kMXFP4: return TypeTraits{"MXFP4", 32, 1 + 16};
  }
  return std::nullopt;
}

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (const uint64_t d : dims) n *= d;  // checked at parse time
  return n;
}

std::vector<int64_t> TensorInfo::shape() const {
  return std::vector<int64_t>(dims.rbegin(), dims.rend());
}

const TensorInfo* Header::find(const std::string& name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const Value* Header::get(const std::string& key) const {
  auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

Header parse(const uint8_t* bytes, size_t size, const std::string& label) {
  Cursor c(bytes, size, label);
  Header h;
  const uint32_t magic = c.read<uint32_t>("magic", "header");
  if (magic != 0x46554747u) {  // "GGUF" read little-endian
    throw DataError(label, "magic", "not a GGUF file (the first 4 bytes are not \"GGUF\")");
  }
  h.version = c.read<uint32_t>("version", "header");
  if (h.version == 1 || h.version == 2) {
    throw UnsupportedError(label, "version",
                           "GGUF version " + std::to_string(h.version) +
                               " is not supported (lathe reads version 3): convert the model again "
                               "with a current llama.cpp");
  }
  if (h.version != 3) {
    const bool swapped = (h.version & 0xFFFFu) == 0 && h.version != 0;
    throw DataError(
        label, "version",
        "version " + std::to_string(h.version) + " (expected 3" +
            (swapped ? "; this looks like a big-endian file, which lathe does not read" : "") +
            ")");
  }
  const uint64_t tensor_count = c.read<uint64_t>("tensor_count", "header");
  const uint64_t kv_count = c.read<uint64_t>("metadata_kv_count", "header");
  if (kv_count > c.left() / kMinPairBytes) {
    throw DataError(label, "metadata_kv_count",
                    std::to_string(kv_count) + " pairs cannot fit in the " +
                        std::to_string(c.left()) + " bytes left");
  }
  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key = c.string("metadata key " + std::to_string(i), "metadata key");
    if (key.empty()) throw DataError(label, "metadata key " + std::to_string(i), "empty key");
    if (h.metadata.count(key)) throw DataError(label, key, "duplicate metadata key");
    Value v = read_value(c, key, label);
    h.metadata.emplace(std::move(key), std::move(v));
  }
  if (tensor_count > c.left() / kMinTensorInfoBytes) {
    throw DataError(label, "tensor_count",
                    std::to_string(tensor_count) + " tensor infos cannot fit in the " +
                        std::to_string(c.left()) + " bytes left");
  }
  h.alignment = alignment_of(h.metadata, label);
  std::map<std::string, size_t> seen;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    TensorInfo t = read_tensor_info(c, label, static_cast<size_t>(i));
    if (!seen.emplace(t.name, i).second) throw DataError(label, t.name, "duplicate tensor name");
    h.tensors.push_back(std::move(t));
  }
  const uint64_t pad = (h.alignment - c.pos() % h.alignment) % h.alignment;
  if (tensor_count > 0 && pad > c.left()) {
    throw DataError(label, "data", "the file ends before its aligned data section");
  }
  h.data_begin = c.pos() + std::min<uint64_t>(pad, c.left());
  place_tensors(h.tensors, h.data_begin, h.alignment, size, label);
  return h;
}

}  // namespace lathe::gguf
