#include "compressor/common/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "compressor/common/errors.h"

namespace lathe {

void write_file_atomically(const std::string& path, const void* data, size_t size) {
  write_file_atomically(path, std::vector<FilePiece>{{data, size}});
}

void write_file_atomically(const std::string& path, const std::vector<FilePiece>& pieces) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw ResourceError(path, "",
                        std::string("cannot create the output file: ") + std::strerror(errno));
  auto fail = [&](const char* what) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    throw ResourceError(path, "", std::string(what) + ": " + std::strerror(err));
  };
  for (const FilePiece& piece : pieces) {
    const char* p = static_cast<const char*>(piece.data);
    size_t left = piece.size;
    while (left > 0) {
      const ssize_t n = ::write(fd, p, left);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail("write failed");
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  if (::fsync(fd) != 0) fail("fsync failed");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw ResourceError(path, "", std::string("close failed: ") + std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw ResourceError(
        path, "", std::string("cannot rename the finished file into place: ") + std::strerror(err));
  }
}

void write_file_atomically(const std::string& path, std::string_view text) {
  write_file_atomically(path, text.data(), text.size());
}

}  // namespace lathe
