// The atomic output directory: files are written into `<dir>.partial`, which is renamed to `<dir>`
// when complete, so `<dir>` either does not exist or is whole. Torch-free.
#pragma once

#include <filesystem>

namespace lathe {

/// A directory that appears complete or not at all: files are written into `<dir>.partial`, and
/// publish() renames it to `dir`. The constructor refuses an existing `dir` without `force`
/// (ConfigError naming it) and clears a stale `<dir>.partial`.
class PartialDirectory {
 public:
  PartialDirectory(const std::filesystem::path& dir, bool force);
  ~PartialDirectory();  ///< removes the partial directory when publish() was not reached
  const std::filesystem::path& path() const { return partial_; }
  void publish();

 private:
  std::filesystem::path dir_, partial_;
  bool published_ = false;
};

}  // namespace lathe
