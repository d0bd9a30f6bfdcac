#include "compressor/model/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "compressor/common/errors.h"

namespace lathe {
namespace {

std::string errno_text(int error) {
  return std::strerror(error);
}

// Closes the descriptor on every exit path of the constructor; the mapping outlives it.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

MappedFile::MappedFile(std::string path) : path_(std::move(path)) {
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ResourceError(path_, "", "cannot open: " + errno_text(errno));
  FdCloser closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw ResourceError(path_, "", "cannot stat: " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) throw ResourceError(path_, "", "not a regular file");
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) return;  // mmap rejects length 0; an empty file simply has no bytes

  void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  copy_on_write_ = p != MAP_FAILED;
  if (p == MAP_FAILED && errno == ENOMEM) {
    p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  }
  if (p == MAP_FAILED) {
    throw ResourceError(path_, "",
                        "cannot map " + std::to_string(size_) + " bytes: " + errno_text(errno));
  }
  data_ = static_cast<uint8_t*>(p);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

bool MappedFile::contains(const void* p) const {
  // Compare as integers: relational operators on unrelated pointers are unspecified.
  const auto address = reinterpret_cast<uintptr_t>(p);
  const auto base = reinterpret_cast<uintptr_t>(data_);
  return data_ != nullptr && address >= base && address - base < size_;
}

void MappedFile::release(uint64_t begin, uint64_t end) const {
  if (data_ == nullptr) return;
  end = std::min<uint64_t>(end, size_);
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t first = (begin + page - 1) / page * page;  // data_ is page-aligned
  const uint64_t last = end / page * page;
  if (first >= last) return;
  // MADV_DONTNEED on a private file mapping: the next access maps the file's page again.
  (void)::madvise(data_ + first, last - first, MADV_DONTNEED);
}

}  // namespace lathe
