#include "compressor/common/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "compressor/common/errors.h"

namespace lathe {

std::string read_file(const std::string& path, const std::string& cannot_open) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ResourceError(path, "", cannot_open + ": " + std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0 || S_ISDIR(info.st_mode)) {
    const std::string reason = S_ISDIR(info.st_mode) ? "is a directory" : std::strerror(errno);
    ::close(fd);
    throw ResourceError(path, "", "cannot read: " + reason);
  }
  std::string bytes;
  bytes.reserve(static_cast<size_t>(std::max<off_t>(info.st_size, 0)));
  char buffer[1 << 16];
  for (;;) {
    const ssize_t got = ::read(fd, buffer, sizeof(buffer));
    if (got == 0) break;
    if (got < 0) {
      if (errno == EINTR) continue;
      const std::string reason = std::strerror(errno);
      ::close(fd);
      throw ResourceError(path, "", "read failed: " + reason);
    }
    bytes.append(buffer, static_cast<size_t>(got));
  }
  ::close(fd);
  return bytes;
}

}  // namespace lathe
