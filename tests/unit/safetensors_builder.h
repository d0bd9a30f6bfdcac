// Test helpers: build safetensors bytes in memory (well-formed or deliberately broken), write
// them to temporary directories, and check the kind and field of a lathe::Error.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "compressor/common/errors.h"

namespace lathe::testing {

using Bytes = std::vector<uint8_t>;

/// `value` as `sizeof(T)` little-endian bytes.
template <typename T>
Bytes le_bytes(std::initializer_list<T> values) {
  Bytes out(values.size() * sizeof(T));
  size_t i = 0;
  for (const T& v : values) std::memcpy(out.data() + sizeof(T) * i++, &v, sizeof(T));
  return out;
}

/// A safetensors file: 8-byte length, `header` padded with spaces to `pad_to`, then `data`.
inline Bytes safetensors_bytes(const std::string& header, const Bytes& data, size_t pad_to = 8) {
  std::string text = header;
  while ((8 + text.size()) % pad_to != 0) text += ' ';
  Bytes out(8);
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  out.insert(out.end(), text.begin(), text.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

/// Builds well-formed files: tensors are laid out back to back in the order added.
class SafetensorsBuilder {
 public:
  /// Adds tensor `name` with the given safetensors dtype string, shape and raw bytes.
  SafetensorsBuilder& add(const std::string& name, const std::string& dtype,
                          const std::vector<int64_t>& shape, const Bytes& bytes) {
    std::string dims;
    for (size_t i = 0; i < shape.size(); ++i) dims += (i ? "," : "") + std::to_string(shape[i]);
    if (!entries_.empty()) entries_ += ",";
    entries_ += "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":[" + dims +
                "],\"data_offsets\":[" + std::to_string(data_.size()) + "," +
                std::to_string(data_.size() + bytes.size()) + "]}";
    data_.insert(data_.end(), bytes.begin(), bytes.end());
    return *this;
  }
  /// Adds a `__metadata__` string entry.
  SafetensorsBuilder& metadata(const std::string& key, const std::string& value) {
    if (!metadata_.empty()) metadata_ += ",";
    metadata_ += "\"" + key + "\":\"" + value + "\"";
    return *this;
  }
  /// The header JSON.
  std::string header() const {
    std::string out = "{";
    if (!metadata_.empty()) out += "\"__metadata__\":{" + metadata_ + "}";
    if (!metadata_.empty() && !entries_.empty()) out += ",";
    return out + entries_ + "}";
  }
  /// The whole file. With `data_misalign` > 0 the header is padded so the data buffer starts at
  /// an absolute offset ≡ data_misalign (mod 8), to test misaligned tensors.
  Bytes build(size_t data_misalign = 0) const {
    std::string text = header();
    while ((8 + text.size()) % 8 != data_misalign) text += ' ';
    return safetensors_bytes(text, data_, 1);
  }

 private:
  std::string entries_;
  std::string metadata_;
  Bytes data_;
};

/// A fresh directory under the system temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "lathe-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  /// Path of `name` inside the directory.
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  /// The directory.
  std::string path() const { return path_.string(); }

  /// Writes `bytes` to `name` and returns its path.
  std::string write(const std::string& name, const Bytes& bytes) const {
    std::ofstream out(file(name), std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    return file(name);
  }
  /// Writes `text` to `name` and returns its path.
  std::string write(const std::string& name, const std::string& text) const {
    return write(name, Bytes(text.begin(), text.end()));
  }

 private:
  std::filesystem::path path_;
};

/// Runs `action`, expects a lathe::Error of `kind` whose field is `field` and whose message holds
/// `message_part`; returns the what() text for further checks.
template <typename Action>
std::string expect_error(Action&& action, ErrorKind kind, const std::string& field,
                         const std::string& message_part) {
  try {
    action();
  } catch (const Error& e) {
    EXPECT_EQ(kind_name(e.kind()), std::string(kind_name(kind))) << e.what();
    EXPECT_EQ(e.field(), field) << e.what();
    EXPECT_NE(e.message().find(message_part), std::string::npos)
        << "message lacks '" << message_part << "': " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no lathe::Error thrown (expected field '" << field << "')";
  return "";
}

}  // namespace lathe::testing
