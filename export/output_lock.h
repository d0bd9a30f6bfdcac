// One writer per output: an advisory lock (flock) that run, apply, calibrate and export hold on
// their output while they write it (docs/output.md "One writer per output"). The lock is the file
// `<output>.lock` beside the output and its `<output>.partial`; it holds the holder's PID for the
// message a second process prints. The kernel drops a flock when its process dies, so the lock of a
// killed run is simply taken over by the next one, which then resumes. Torch-free.
#pragma once

#include <string>

namespace lathe {

class OutputLock {
 public:
  /// Locks `output` (a directory or file path that may not exist yet), without waiting unless
  /// `wait`: ResourceError(output) naming the holder's PID when another process holds it (with
  /// `wait`, blocks until it lets go instead). Missing parent directories are created (an output
  /// `out/run1` with no `out/` yet). ResourceError when they or the lock file cannot be created
  /// (e.g. a read-only parent directory).
  explicit OutputLock(const std::string& output, bool wait = false);
  ~OutputLock();  ///< unlocks and removes the lock file
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

  /// The lock file: `<output>.lock`.
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace lathe
