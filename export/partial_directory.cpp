#include "export/partial_directory.h"

#include <string>
#include <system_error>

#include "compressor/common/errors.h"

namespace fs = std::filesystem;

namespace lathe {

PartialDirectory::PartialDirectory(const fs::path& dir, bool force)
    : dir_(dir), partial_(dir.string() + ".partial") {
  if (fs::exists(dir_) && !force) {
    throw ConfigError(dir_.string(), "", "the directory exists; use --force to replace it");
  }
  std::error_code ec;
  fs::remove_all(partial_, ec);
  fs::create_directories(partial_, ec);
  if (ec)
    throw ResourceError(partial_.string(), "", "cannot create the directory: " + ec.message());
}

PartialDirectory::~PartialDirectory() {
  if (published_) return;
  std::error_code ec;
  fs::remove_all(partial_, ec);
}

void PartialDirectory::publish() {
  std::error_code ec;
  fs::remove_all(dir_, ec);
  fs::rename(partial_, dir_, ec);
  if (ec)
    throw ResourceError(dir_.string(), "",
                        "cannot rename " + partial_.string() + " into place: " + ec.message());
  published_ = true;
}

}  // namespace lathe
