#include "export/gguf_model_cache.h"

#include <sys/stat.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>

#include <fmt/format.h>

#include "compressor/common/errors.h"
#include "compressor/common/sha256.h"
#include "export/gguf_import.h"
#include "export/output_lock.h"

namespace fs = std::filesystem;

namespace lathe {
namespace {

/// Bumped whenever `lathe import` writes a different directory for the same file (a fixed config
/// key, another tensor mapping), so that caches made by an older lathe are not reused.
constexpr int kImportRevision = 1;

/// The cache directory's name for the file at `path`: its stem and a hash of what identifies this
/// version of it.
std::string cache_name(const std::string& path) {
  std::error_code ec;
  const fs::path absolute = fs::weakly_canonical(fs::absolute(path), ec);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw ResourceError(path, "", std::string("cannot stat: ") + std::strerror(errno));
  const std::string identity =
      fmt::format("{}\n{}\n{}.{:09}\nrevision {}\n", (ec ? fs::path(path) : absolute).string(),
                  static_cast<int64_t>(st.st_size), static_cast<int64_t>(st.st_mtim.tv_sec),
                  static_cast<int64_t>(st.st_mtim.tv_nsec), kImportRevision);
  std::string stem = fs::path(path).stem().string();
  for (char& c : stem) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) c = '_';
  }
  return stem.substr(0, 64) + "-" + sha256_hex(identity.data(), identity.size()).substr(0, 16);
}

}  // namespace

fs::path lathe_cache_dir() {
  if (const char* dir = std::getenv("LATHE_CACHE"); dir && *dir) return fs::path(dir);
  if (const char* home = std::getenv("HOME"); home && *home)
    return fs::path(home) / ".cache" / "lathe";
  throw ConfigError("", "LATHE_CACHE",
                    "neither LATHE_CACHE nor HOME is set: lathe needs a cache directory for "
                    "imported GGUF models");
}

bool is_gguf_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  if (fs::path(path).extension() == ".gguf") return true;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

std::string model_directory(const std::string& path) {
  if (!is_gguf_file(path)) return path;
  const fs::path root = lathe_cache_dir() / "gguf";
  const fs::path dir = root / cache_name(path);
  if (fs::is_directory(dir)) return dir.string();  // complete: the import publishes it by a rename
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec)
    throw ResourceError(root.string(), "", "cannot create the GGUF model cache: " + ec.message());
  const OutputLock lock(dir.string(),
                        /*wait=*/true);  // a concurrent import of the same file finishes first
  if (fs::is_directory(dir)) return dir.string();
  std::cerr << fmt::format("[gguf] {}: importing it once into {} (float32; docs/gguf.md)\n", path,
                           dir.string());
  ImportOptions options;
  options.dtype = "f32";
  const ImportResult r = import_gguf(path, dir.string(), options);
  std::cerr << fmt::format("[gguf] {} model, {} tensors, {:.1f} MB\n", r.architecture, r.tensors,
                           r.bytes / 1e6);
  return dir.string();
}

}  // namespace lathe
