#include "compressor/model/activation_buffer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <cerrno>
#include <cstring>

#include "compressor/common/errors.h"

namespace lathe {
namespace {

/// An unlinked temporary file of `bytes` bytes, mapped shared; nullptr-safe cleanup by the caller.
void* map_spill_file(const std::filesystem::path& dir, uint64_t bytes) {
  std::string pattern = (dir / "lathe-activations-XXXXXX").string();
  const int fd = ::mkstemp(pattern.data());
  if (fd < 0)
    throw ResourceError(dir.string(), "",
                        std::string("cannot create a spill file: ") + std::strerror(errno));
  ::unlink(pattern.c_str());  // the mapping keeps the space; a killed run leaves nothing behind
  const int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  if (rc != 0) {
    ::close(fd);
    throw ResourceError(dir.string(), "",
                        "cannot reserve " + std::to_string(bytes) +
                            " bytes for spilled activations: " + std::strerror(rc));
  }
  void* data = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (data == MAP_FAILED)
    throw ResourceError(dir.string(), "", std::string("mmap failed: ") + std::strerror(map_errno));
  return data;
}

}  // namespace

ActivationBuffer::ActivationBuffer(int64_t n, int64_t t, int64_t d, at::ScalarType dtype,
                                   uint64_t memory_limit_bytes,
                                   const std::filesystem::path& spill_dir) {
  bytes_ = static_cast<uint64_t>(n) * t * d * c10::elementSize(dtype);
  const auto options = at::TensorOptions().dtype(dtype);
  if (bytes_ <= memory_limit_bytes || bytes_ == 0) {
    tensor_ = at::empty({n, t, d}, options);
    return;
  }
  mapping_ = map_spill_file(spill_dir, bytes_);
  tensor_ = at::from_blob(mapping_, {n, t, d}, options);
}

ActivationBuffer::~ActivationBuffer() {
  tensor_ = at::Tensor();
  if (mapping_) ::munmap(mapping_, bytes_);
}

ActivationBuffer::ActivationBuffer(ActivationBuffer&& other) noexcept
    : tensor_(std::move(other.tensor_)), mapping_(other.mapping_), bytes_(other.bytes_) {
  other.mapping_ = nullptr;
}

ActivationBuffer& ActivationBuffer::operator=(ActivationBuffer&& other) noexcept {
  if (this != &other) {
    tensor_ = at::Tensor();
    if (mapping_) ::munmap(mapping_, bytes_);
    tensor_ = std::move(other.tensor_);
    mapping_ = other.mapping_;
    bytes_ = other.bytes_;
    other.mapping_ = nullptr;
  }
  return *this;
}

at::Tensor ActivationBuffer::rows(int64_t begin, int64_t end) const {
  return tensor_.slice(0, begin, end);
}

void ActivationBuffer::write(int64_t begin, const at::Tensor& values) {
  tensor_.slice(0, begin, begin + values.size(0)).copy_(values);
}

}  // namespace lathe
