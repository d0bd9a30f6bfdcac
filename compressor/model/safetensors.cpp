#include "compressor/model/safetensors.h"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <tuple>

#include "compressor/common/errors.h"
#include "compressor/common/strict_json.h"

namespace lathe {
namespace {

using nlohmann::json;

constexpr size_t kNotFound = std::string_view::npos;

// Offset of the first byte that breaks UTF-8 (RFC 3629: no overlong forms, no surrogates,
// nothing above U+10FFFF), or kNotFound.
size_t first_invalid_utf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint8_t c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      return i;
    }
    if (n - i < len || s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
    }
    i += len;
  }
  return kNotFound;
}

// Index of the '}' closing the object that opens at text[0], found by bracket counting outside
// strings; kNotFound if it never closes. The real syntax check is nlohmann's; this only tells
// where the object ends so that what follows can be checked for "only spaces".
size_t object_end(std::string_view text) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (depth == 0 || --depth == 0) return i;
    }
  }
  return kNotFound;
}

std::string in_quotes(const std::string& s) {
  return "'" + s + "'";
}

std::string hex_byte(uint8_t b) {
  static constexpr char kHex[] = "0123456789abcdef";
  return std::string{kHex[b >> 4], kHex[b & 0xF]};
}

// 'x' for a printable ASCII character, else "byte 0xNN".
std::string describe_byte(char c) {
  const auto b = static_cast<uint8_t>(c);
  return b >= 0x21 && b < 0x7F ? "'" + std::string(1, c) + "'" : "byte 0x" + hex_byte(b);
}

// Short text of a JSON value for messages: its JSON, cut at 60 characters.
std::string describe(const json& value) {
  std::string text = value.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

std::string range_text(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

// The 8-byte little-endian N, checked against rule 1.
uint64_t read_header_bytes(const uint8_t* bytes, size_t file_size, const std::string& label) {
  if (file_size < 8) {
    throw DataError(label, "header length",
                    "file has " + std::to_string(file_size) +
                        " bytes; a safetensors file starts with an 8-byte header length");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > kMaxSafetensorsHeaderBytes) {
    throw DataError(label, "header length",
                    "header length " + std::to_string(n) + " exceeds the limit of " +
                        std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  if (n > file_size - 8) {
    throw DataError(label, "header length",
                    "header length " + std::to_string(n) + " runs past the end of the file (" +
                        std::to_string(file_size - 8) + " bytes follow the length field)");
  }
  return n;
}

// Rule 2: UTF-8, starts with '{', one object, then only spaces; duplicate keys rejected.
json parse_header_json(const uint8_t* text_bytes, size_t n, const std::string& label) {
  if (const size_t bad = first_invalid_utf8(text_bytes, n); bad != kNotFound) {
    throw DataError(label, "header",
                    "header is not valid UTF-8: byte 0x" + hex_byte(text_bytes[bad]) +
                        " at header offset " + std::to_string(bad) +
                        " does not start or continue a valid sequence");
  }
  const std::string_view text(reinterpret_cast<const char*>(text_bytes), n);
  if (text.empty() || text[0] != '{') {
    throw DataError(label, "header",
                    "header must be a JSON object starting with '{', found " +
                        (text.empty() ? std::string("an empty header") : describe_byte(text[0])));
  }
  const size_t close = object_end(text);
  const std::string_view object = close == kNotFound ? text : text.substr(0, close + 1);
  if (close != kNotFound) {
    const size_t junk = text.find_first_not_of(' ', close + 1);
    if (junk != kNotFound) {
      throw DataError(label, "header",
                      "only spaces may follow the JSON object, found " + describe_byte(text[junk]) +
                          " at header offset " + std::to_string(junk));
    }
  }
  // Depth 3 is what a valid header needs (object → entry → shape); 8 leaves room for precise
  // messages about malformed entries while bounding the work on hostile input.
  json header = parse_json_strict(object, label, "header", 8);
  if (!header.is_object()) throw DataError(label, "header", "header is not a JSON object");
  return header;
}

// A JSON number that is a non-negative integer representable as uint64_t.
std::optional<uint64_t> as_count(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    return static_cast<uint64_t>(value.get<int64_t>());  // "-0" parses as a signed zero
  }
  return std::nullopt;
}

// Rule 3: the dtype string names a type lathe reads.
DType parse_entry_dtype(const std::string& name, const json& entry, const std::string& label) {
  const json& value = entry.at("dtype");
  if (!value.is_string()) {
    throw DataError(label, name, "dtype must be a string, found " + describe(value));
  }
  const auto& text = value.get_ref<const std::string&>();
  if (const auto dtype = parse_dtype(text)) return *dtype;
  if (is_known_unsupported_dtype(text)) {
    throw UnsupportedError(label, name,
                           "dtype " + text + " is valid safetensors but lathe does not read it");
  }
  throw DataError(label, name,
                  "unknown dtype " + in_quotes(text) +
                      "; expected one of BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, "
                      "I64, U64, F8_E4M3, F8_E5M2");
}

// Rule 3: an array of at most 8 non-negative integers, each representable as int64_t.
std::vector<int64_t> parse_entry_shape(const std::string& name, const json& entry,
                                       const std::string& label) {
  const json& value = entry.at("shape");
  if (!value.is_array()) {
    throw DataError(label, name, "shape must be an array of integers, found " + describe(value));
  }
  if (value.size() > kMaxSafetensorsRank) {
    throw DataError(label, name,
                    "shape has rank " + std::to_string(value.size()) + "; at most " +
                        std::to_string(kMaxSafetensorsRank) + " dimensions are supported");
  }
  std::vector<int64_t> shape;
  for (size_t i = 0; i < value.size(); ++i) {
    const auto dim = as_count(value[i]);
    if (!dim || *dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw DataError(label, name,
                      "shape[" + std::to_string(i) + "] must be a non-negative integer, found " +
                          describe(value[i]));
    }
    shape.push_back(static_cast<int64_t>(*dim));
  }
  return shape;
}

// Rule 3: exactly two non-negative integers.
std::pair<uint64_t, uint64_t> parse_entry_offsets(const std::string& name, const json& entry,
                                                  const std::string& label) {
  const json& value = entry.at("data_offsets");
  if (!value.is_array() || value.size() != 2 || !as_count(value[0]) || !as_count(value[1])) {
    throw DataError(
        label, name,
        "data_offsets must be two non-negative integers [begin, end), found " + describe(value));
  }
  return {*as_count(value[0]), *as_count(value[1])};
}

// Rule 4: bytes that `shape` of `dtype` occupies, or nullopt when the count overflows 64 bits.
// Sub-byte types would have to fill whole bytes; every DType lathe reads is at least 8 bits.
std::optional<uint64_t> byte_count(DType dtype, const std::vector<int64_t>& shape) {
  uint64_t elements = 1;
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  for (const int64_t dim : shape) {
    if (__builtin_mul_overflow(elements, static_cast<uint64_t>(dim), &elements)) {
      return std::nullopt;
    }
  }
  uint64_t bits = 0;
  if (__builtin_mul_overflow(elements, static_cast<uint64_t>(dtype_bits(dtype)), &bits)) {
    return std::nullopt;
  }
  return bits / 8;
}

SafetensorsEntry parse_entry(const std::string& name, const json& entry,
                             const SafetensorsHeader& header, const std::string& label) {
  if (!entry.is_object()) {
    throw DataError(label, name, "entry must be an object, found " + describe(entry));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) throw DataError(label, name, std::string("entry has no ") + key);
  }
  for (const auto& item : entry.items()) {
    if (item.key() != "dtype" && item.key() != "shape" && item.key() != "data_offsets") {
      throw DataError(label, name,
                      "unexpected key " + in_quotes(item.key()) +
                          " in entry; expected only dtype, shape, data_offsets");
    }
  }
  SafetensorsEntry out;
  out.name = name;
  out.dtype = parse_entry_dtype(name, entry, label);
  out.shape = parse_entry_shape(name, entry, label);
  const auto [begin, end] = parse_entry_offsets(name, entry, label);
  if (begin > end) {
    throw DataError(label, name,
                    "data_offsets " + range_text(begin, end) + " end before they begin");
  }
  if (end > header.data_bytes) {
    throw DataError(label, name,
                    "data_offsets " + range_text(begin, end) + " run past the " +
                        std::to_string(header.data_bytes) + "-byte data buffer");
  }
  const auto needed = byte_count(out.dtype, out.shape);
  const std::string what = "shape " + format_shape(out.shape) + " of " + dtype_name(out.dtype);
  if (!needed) throw DataError(label, name, what + " overflows a 64-bit byte count");
  if (*needed != end - begin) {
    throw DataError(label, name,
                    "data_offsets " + range_text(begin, end) + " hold " +
                        std::to_string(end - begin) + " bytes but " + what + " needs " +
                        std::to_string(*needed));
  }
  out.begin = header.data_begin + begin;
  out.end = header.data_begin + end;
  return out;
}

std::map<std::string, std::string> parse_metadata(const json& value, const std::string& label) {
  std::map<std::string, std::string> out;
  if (value.is_null()) return out;  // the reference implementation accepts null
  if (!value.is_object()) {
    throw DataError(label, "__metadata__",
                    "__metadata__ must be an object of strings, found " + describe(value));
  }
  for (const auto& item : value.items()) {
    if (!item.value().is_string()) {
      throw DataError(label, "__metadata__." + item.key(),
                      "metadata value of " + in_quotes(item.key()) + " must be a string, found " +
                          describe(item.value()));
    }
    out.emplace(item.key(), item.value().get<std::string>());
  }
  return out;
}

// Rule 6: sorted by begin, the tensors cover [0, B) with no gap and no overlap.
void check_tiling(const SafetensorsHeader& header, const std::string& label) {
  std::vector<const SafetensorsEntry*> order;
  for (const auto& entry : header.tensors) order.push_back(&entry);
  // Empty tensors sort before a non-empty one at the same offset, so they never look overlapped.
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
  });
  const uint64_t base = header.data_begin;
  uint64_t cursor = base;
  const SafetensorsEntry* previous = nullptr;
  for (const auto* entry : order) {
    const std::string here = "data_offsets " + range_text(entry->begin - base, entry->end - base);
    if (entry->begin < cursor) {
      throw DataError(label, entry->name,
                      here + " overlap tensor " + in_quotes(previous->name) + " at " +
                          range_text(previous->begin - base, previous->end - base));
    }
    if (entry->begin > cursor) {
      throw DataError(label, entry->name,
                      here + " leave a gap: bytes " +
                          range_text(cursor - base, entry->begin - base) +
                          " of the data buffer belong to no tensor");
    }
    cursor = entry->end;
    if (entry->end > entry->begin) previous = entry;
  }
  if (cursor != base + header.data_bytes) {
    throw DataError(label, "data buffer",
                    "bytes " + range_text(cursor - base, header.data_bytes) +
                        " at the end of the data buffer belong to no tensor" +
                        (previous ? " (last tensor: " + in_quotes(previous->name) + ")" : ""));
  }
}

}  // namespace

int64_t SafetensorsEntry::numel() const {
  int64_t n = 1;
  for (const int64_t dim : shape) n *= dim;  // validated: fits, since bytes fit in the file
  return n;
}

const SafetensorsEntry* SafetensorsHeader::find(const std::string& name) const {
  const auto it =
      std::lower_bound(tensors.begin(), tensors.end(), name,
                       [](const SafetensorsEntry& e, const std::string& n) { return e.name < n; });
  return it != tensors.end() && it->name == name ? &*it : nullptr;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t file_size,
                                           const std::string& file_label) {
  SafetensorsHeader header;
  header.header_bytes = read_header_bytes(bytes, file_size, file_label);
  header.data_begin = 8 + header.header_bytes;
  header.data_bytes = file_size - header.data_begin;
  const json root = parse_header_json(bytes + 8, header.header_bytes, file_label);
  for (const auto& item : root.items()) {  // nlohmann objects iterate in key order
    if (item.key() == "__metadata__") {
      header.metadata = parse_metadata(item.value(), file_label);
    } else if (item.key().empty()) {
      throw DataError(file_label, "tensor name", "a tensor has an empty name");
    } else {
      header.tensors.push_back(parse_entry(item.key(), item.value(), header, file_label));
    }
  }
  check_tiling(header, file_label);
  return header;
}

std::string format_shape(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

}  // namespace lathe
