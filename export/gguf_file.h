// A GGUF file opened for reading: memory-mapped, its header parsed and validated (gguf.h), its
// tensors readable as raw bytes or dequantized to float32 (gguf_quants.h). Torch-free.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "export/gguf.h"

namespace lathe {
class MappedFile;
}

namespace lathe::gguf {

class File {
 public:
  /// Maps and parses `path`. ResourceError when it cannot be opened or mapped; DataError /
  /// UnsupportedError from parse() naming the file and the key or tensor at fault.
  explicit File(const std::string& path);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::string& path() const { return path_; }
  const Header& header() const { return header_; }
  /// The tensor named `name`; DataError(path, name) when the file has none.
  const TensorInfo& tensor(const std::string& name) const;
  /// The stored bytes of `t` (t.nbytes of them, any alignment), valid while this File lives.
  const uint8_t* bytes(const TensorInfo& t) const;
  /// The values of `t` in float32, row-major (shape()); UnsupportedError naming the tensor and its
  /// type for types gguf_quants.h does not read. Releases the tensor's mapped pages afterwards, so
  /// reading a whole file keeps the resident set flat.
  std::vector<float> dequantize(const TensorInfo& t) const;
  /// Drops the resident pages of `t`'s bytes (MappedFile::release).
  void release(const TensorInfo& t) const;
  /// Drops the resident pages of bytes [begin, end) of `t`'s data (offsets within the tensor).
  void release_range(const TensorInfo& t, uint64_t begin, uint64_t end) const;

 private:
  std::string path_;
  std::shared_ptr<const MappedFile> map_;
  Header header_;
};

/// True when `path` names a GGUF file: a regular file ending in ".gguf" (case-insensitive).
bool is_gguf_path(const std::string& path);

}  // namespace lathe::gguf
