// lathe_export.json: the SHA-256 of every file of an export directory (gptq/, ct/, hf/) and of
// every tensor of its safetensors shards (docs/export.md "Integrity"). `lathe verify` checks an
// export against it, so that any changed byte of any file fails verification, naming the module
// when the byte is inside a tensor. Torch-free.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace lathe {

/// The manifest's file name inside an export directory.
inline constexpr const char* kExportManifest = "lathe_export.json";

/// Hashes every regular file below `dir` (recursively, except the manifest itself) and every tensor
/// of its `*.safetensors` files, and writes `dir/lathe_export.json` atomically. Returns the number
/// of files hashed. ResourceError when a file cannot be read; DataError for a malformed shard.
int64_t write_export_manifest(const std::filesystem::path& dir);

/// One way an export differs from its manifest.
struct IntegrityProblem {
  std::string file;    ///< path relative to the export directory
  std::string tensor;  ///< the tensor whose bytes differ; empty when the problem is not inside one
  std::string what;    ///< e.g. "bytes differ from lathe_export.json", "missing"
};

struct IntegrityReport {
  int64_t files = 0, tensors = 0;          ///< what the manifest lists
  std::vector<IntegrityProblem> problems;  ///< empty when every listed file and tensor matches
  std::vector<std::string> unlisted;       ///< files present but not in the manifest (not checked)
};

/// Checks `dir` against its lathe_export.json: every listed file must exist with its size and
/// SHA-256; for a shard that differs, each tensor is hashed to name the ones that changed (a shard
/// whose tensors all match differs in its header). nullopt when `dir` has no manifest. DataError
/// for a malformed manifest (naming the field).
std::optional<IntegrityReport> check_export_manifest(const std::filesystem::path& dir);

}  // namespace lathe
