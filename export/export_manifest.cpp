#include "export/export_manifest.h"

#include <algorithm>
#include <exception>
#include <map>

#include <nlohmann/json.hpp>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/sha256.h"
#include "compressor/common/strict_json.h"
#include "compressor/model/fingerprint.h"
#include "compressor/model/weight_store.h"

namespace fs = std::filesystem;

namespace lathe {
namespace {

constexpr const char* kFormat = "lathe-export-manifest";
constexpr int kVersion = 1;

/// Regular files below `dir` as sorted relative paths with '/', except the manifest.
std::vector<std::string> export_files(const fs::path& dir) {
  std::vector<std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const std::string rel = fs::relative(e.path(), dir).generic_string();
    if (rel != kExportManifest) files.push_back(rel);
  }
  std::sort(files.begin(), files.end());
  return files;
}

bool is_shard(const std::string& rel) {
  return fs::path(rel).extension() == ".safetensors";
}

/// "sha256:<hex>" of one tensor's bytes, as the file holds them.
std::string tensor_fingerprint(const WeightStore& shard, const std::string& name) {
  const TensorView v = shard.view(name);
  std::string hex = sha256_hex(v.data, v.nbytes);
  shard.release(name);
  return "sha256:" + hex;
}

}  // namespace

int64_t write_export_manifest(const fs::path& dir) {
  nlohmann::json files = nlohmann::json::object(), tensors = nlohmann::json::object();
  const std::vector<std::string> rels = export_files(dir);
  for (const auto& rel : rels) {
    const fs::path path = dir / rel;
    files[rel] = {{"bytes", fs::file_size(path)}, {"sha256", file_fingerprint(path.string())}};
    if (!is_shard(rel)) continue;
    const WeightStore shard(path.string());
    for (const auto& name : shard.names())
      tensors[name] = {{"file", rel}, {"sha256", tensor_fingerprint(shard, name)}};
  }
  const nlohmann::json manifest = {
      {"format", kFormat}, {"version", kVersion}, {"files", files}, {"tensors", tensors}};
  write_file_atomically((dir / kExportManifest).string(), manifest.dump(2) + "\n");
  return static_cast<int64_t>(rels.size());
}

std::optional<IntegrityReport> check_export_manifest(const fs::path& dir) {
  const fs::path path = dir / kExportManifest;
  if (!fs::exists(path)) return std::nullopt;
  const std::string where = path.string();
  const nlohmann::json m = parse_json_strict(read_file(where), where, "");
  if (!m.is_object() || m.value("format", "") != kFormat) {
    throw DataError(where, "format", std::string("expected \"") + kFormat + "\"");
  }
  if (!m.contains("version") || m["version"] != kVersion)
    throw DataError(where, "version", "expected 1");
  for (const char* key : {"files", "tensors"}) {
    if (!m.contains(key) || !m[key].is_object()) throw DataError(where, key, "expected an object");
  }
  // tensors by file, each with its expected fingerprint
  std::map<std::string, std::map<std::string, std::string>> by_file;
  for (const auto& [name, t] : m["tensors"].items()) {
    if (!t.is_object() || !t.contains("file") || !t["file"].is_string() || !t.contains("sha256") ||
        !t["sha256"].is_string()) {
      throw DataError(where, "tensors." + name, "expected {\"file\": string, \"sha256\": string}");
    }
    by_file[t["file"].get<std::string>()][name] = t["sha256"].get<std::string>();
  }
  IntegrityReport report;
  report.tensors = static_cast<int64_t>(m["tensors"].size());
  for (const auto& [rel, f] : m["files"].items()) {
    if (!f.is_object() || !f.contains("sha256") || !f["sha256"].is_string() ||
        !f.contains("bytes") || !f["bytes"].is_number_unsigned()) {
      throw DataError(where, "files." + rel, "expected {\"bytes\": integer, \"sha256\": string}");
    }
    ++report.files;
    const fs::path file = dir / rel;
    if (!fs::is_regular_file(file)) {
      report.problems.push_back({rel, "", "missing"});
      continue;
    }
    if (fs::file_size(file) == f["bytes"].get<uint64_t>() &&
        file_fingerprint(file.string()) == f["sha256"])
      continue;
    const size_t before = report.problems.size();
    if (is_shard(rel) && by_file.count(rel)) {
      try {
        const WeightStore shard(file.string());
        for (const auto& [name, expected] : by_file[rel]) {
          if (!shard.contains(name))
            report.problems.push_back({rel, name, "tensor missing from the shard"});
          else if (tensor_fingerprint(shard, name) != expected)
            report.problems.push_back(
                {rel, name, "bytes differ from " + std::string(kExportManifest)});
        }
      } catch (const Error& e) {
        report.problems.push_back({rel, "", std::string("not a readable shard: ") + e.what()});
      }
    }
    if (report.problems.size() == before) {
      report.problems.push_back(
          {rel, "", "bytes differ from " + std::string(kExportManifest) + " (outside any tensor)"});
    }
  }
  for (const auto& rel : export_files(dir)) {
    if (!m["files"].contains(rel)) report.unlisted.push_back(rel);
  }
  return report;
}

}  // namespace lathe
