// Read-only view of a whole file through mmap, shared by WeightStore and the tensors it hands out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace lathe {

/// A file mapped into memory for reading, unmapped on destruction. Neither copyable nor movable:
/// hold it in a std::shared_ptr so tensors that point into it can keep it alive.
///
/// The mapping is MAP_PRIVATE with PROT_READ|PROT_WRITE (copy-on-write) and MAP_NORESERVE. A stray
/// in-place write through a zero-copy tensor then changes a private copy of that page: the file on
/// disk is never modified, and the process does not die with SIGSEGV inside some torch kernel.
/// The price: such a write is visible to every view of the same mapping in this process, so
/// code must still treat loaded weights as read-only (clone before mutating). Where the kernel
/// refuses a writable private mapping of this size (strict overcommit, vm.overcommit_memory=2,
/// charges the whole file), the file is mapped PROT_READ instead and copy_on_write() is false; a
/// write then faults. Another process truncating the file while it is mapped makes reads past the
/// new end raise SIGBUS; lathe cannot guard against that.
class MappedFile {
 public:
  /// Maps `path`. Throws ResourceError (where = path, message with errno text) when the file
  /// cannot be opened, stat'ed, is not a regular file, or cannot be mapped. An empty file is valid
  /// and has data() == nullptr, size() == 0.
  explicit MappedFile(std::string path);
  ~MappedFile();

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  /// First byte of the file; page-aligned; null for an empty file.
  const uint8_t* data() const { return data_; }
  /// Size of the file in bytes, as it was when mapped.
  size_t size() const { return size_; }
  /// The path the file was opened with.
  const std::string& path() const { return path_; }
  /// True when the mapping is writable copy-on-write (see the class comment).
  bool copy_on_write() const { return copy_on_write_; }
  /// True when `p` points into [data(), data() + size()).
  bool contains(const void* p) const;

  /// Drops this process's pages of the whole pages inside [data() + begin, data() + end)
  /// (madvise MADV_DONTNEED; a partial page at either end stays), so they stop counting in the
  /// resident set; the page cache keeps them, so a later read re-faults them cheaply. Everything
  /// pointing into the mapping stays valid: a read after the release sees the file's bytes again.
  /// The one thing lost is a stray copy-on-write modification of a released page (see the class
  /// comment: loaded weights are read-only anyway). `end` is clamped to size(); an empty or
  /// sub-page range does nothing. Best effort: a failing madvise is ignored. Thread-safe.
  void release(uint64_t begin, uint64_t end) const;

 private:
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool copy_on_write_ = false;
};

}  // namespace lathe
