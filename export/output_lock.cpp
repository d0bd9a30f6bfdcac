#include "export/output_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

#include "compressor/common/errors.h"

namespace fs = std::filesystem;

namespace lathe {
namespace {

std::string trimmed_output(std::string output) {
  while (output.size() > 1 && output.back() == '/') output.pop_back();
  return output;
}

/// The PID text a holder wrote into the lock file ("unknown" when unreadable).
std::string holder_of(int fd) {
  char buf[32] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
  return pid.empty() ? "unknown" : pid;
}

bool same_file(int fd, const std::string& path) {
  struct stat a {
  }, b{};
  return ::fstat(fd, &a) == 0 && ::stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

}  // namespace

OutputLock::OutputLock(const std::string& output, bool wait)
    : path_(trimmed_output(output) + ".lock") {
  const std::string where = trimmed_output(output);
  // `output: out/run1` with no out/ yet: make the directories the output will sit in.
  const fs::path parent = fs::path(path_).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec)
    throw ResourceError(where, "",
                        "cannot create the directory " + parent.string() + ": " + ec.message());
  // The holder unlinks the file when it finishes; a process that opened the old file meanwhile
  // would lock a file no one else sees, so after locking, check that the path still names it.
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      throw ResourceError(where, "",
                          "cannot create the lock file " + path_ + ": " + std::strerror(errno));
    }
    if (::flock(fd, wait ? LOCK_EX : LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string holder = holder_of(fd);
      ::close(fd);
      if (err == EWOULDBLOCK) {
        throw ResourceError(where, "",
                            "another lathe process (PID " + holder +
                                ") is writing this output (lock " + path_ +
                                "); wait for it to finish or stop it");
      }
      throw ResourceError(where, "", "cannot lock " + path_ + ": " + std::strerror(err));
    }
    if (!same_file(fd, path_)) {
      ::close(fd);
      continue;
    }
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd, 0) != 0 ||
        ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
      const std::string reason = std::strerror(errno);
      ::close(fd);
      throw ResourceError(where, "", "cannot write the lock file " + path_ + ": " + reason);
    }
    fd_ = fd;
    return;
  }
  throw ResourceError(where, "", "cannot take the lock " + path_ + ": it keeps being replaced");
}

OutputLock::~OutputLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // while still locked: the next process re-checks the path after locking
  ::close(fd_);
}

}  // namespace lathe
