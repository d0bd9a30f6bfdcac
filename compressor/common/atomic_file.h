// Output files that appear atomically (DESIGN.md "Reliability rules"): written to a temporary name
// beside the target, flushed to disk, then renamed over it, so a reader or a crash never sees a
// half-written file at the final path. Torch-free.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace lathe {

/// Writes `size` bytes at `data` to `path` atomically: `<path>.tmp-<pid>` is created in the same
/// directory, written, fsync'ed and renamed over `path` (an existing file there is replaced;
/// callers decide beforehand whether that is allowed). On failure the temporary file is removed and
/// ResourceError (where = path) says what failed, with the OS reason.
void write_file_atomically(const std::string& path, const void* data, size_t size);

/// A piece of a file being written: `size` bytes at `data`.
struct FilePiece {
  const void* data;
  size_t size;
};

/// write_file_atomically of the concatenation of `pieces`, without building it in memory.
void write_file_atomically(const std::string& path, const std::vector<FilePiece>& pieces);

/// Text form of write_file_atomically.
void write_file_atomically(const std::string& path, std::string_view text);

}  // namespace lathe
