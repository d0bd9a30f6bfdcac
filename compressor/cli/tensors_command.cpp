// `lathe tensors MODEL`: lists every tensor of a checkpoint as WeightStore sees it, optionally with
// SHA-256 checksums, so other tools (tests/python/test_weight_store_parity.py) can cross-check.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "compressor/cli/commands.h"
#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/sha256.h"
#include "compressor/model/dtype.h"
#include "compressor/model/safetensors.h"
#include "compressor/model/weight_store.h"
#include "export/gguf_file.h"

namespace lathe::cli {
namespace {

struct TensorsOptions {
  std::string model;
  bool json = false;
  bool sha256 = false;
  std::string as;         // "" (raw bytes) or "f32"
  std::string dump, out;  // --dump NAME --out FILE: the tensor's values as float32
};

/// --dump: tensor `name`'s values as little-endian float32 in row-major order, written atomically.
void dump_values(const std::string& model, const std::string& name, const std::string& out) {
  std::vector<float> values;
  if (gguf::is_gguf_path(model)) {
    const gguf::File file(model);
    values = file.dequantize(file.tensor(name));
  } else {
    values = WeightStore(model).to_f32(name);
  }
  write_file_atomically(out, values.data(), values.size() * sizeof(float));
}

// SHA-256 of the tensor's stored bytes, or of its float32 little-endian conversion.
// The tensor's mapped pages are released afterwards, so hashing a whole checkpoint keeps RSS flat.
std::string tensor_sha256(const WeightStore& store, const std::string& name, bool as_f32) {
  const TensorView view = store.view(name);
  Sha256 hasher;
  if (!as_f32) {
    hasher.update(view.data, view.nbytes);
    store.release(name);
    return hasher.finish_hex();
  }
  // Convert in slices so a large tensor never needs a second full-size buffer.
  constexpr size_t kSlice = 1 << 16;
  std::vector<float> buffer(kSlice);
  const size_t n = static_cast<size_t>(view.numel);
  const size_t element = dtype_size(view.dtype);
  for (size_t done = 0; done < n; done += kSlice) {
    const size_t len = std::min(kSlice, n - done);
    convert_to_f32(view.dtype, view.data + done * element, len, buffer.data());
    hasher.update(buffer.data(), len * sizeof(float));
  }
  store.release(name);
  return hasher.finish_hex();
}

std::string shard_name(const TensorInfo& info) {
  return std::filesystem::path(info.shard_path).filename().string();
}

void print_json(const WeightStore& store, const TensorsOptions& options) {
  nlohmann::ordered_json out;
  out["model"] = options.model;
  out["sharded"] = store.sharded();
  nlohmann::ordered_json shards = nlohmann::ordered_json::array();
  for (const auto& path : store.shard_paths()) {
    shards.push_back(std::filesystem::path(path).filename().string());
  }
  out["shards"] = shards;
  out["total_bytes"] = store.total_bytes();
  if (options.sha256) out["sha256_of"] = options.as == "f32" ? "f32" : "raw";
  nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
  for (const auto& name : store.names()) {
    const TensorInfo& info = store.info(name);
    nlohmann::ordered_json row;
    row["name"] = name;
    row["dtype"] = dtype_name(info.dtype);
    row["shape"] = info.shape;
    row["shard"] = shard_name(info);
    row["bytes"] = info.nbytes();
    if (options.sha256) row["sha256"] = tensor_sha256(store, name, options.as == "f32");
    tensors.push_back(std::move(row));
  }
  out["tensors"] = std::move(tensors);
  std::cout << out.dump(2) << "\n";
}

// One aligned line per tensor: name, dtype, shape, shard, bytes[, sha256].
void print_table(const WeightStore& store, const TensorsOptions& options) {
  size_t name_width = 4, shape_width = 5, shard_width = 5;
  for (const auto& name : store.names()) {
    const TensorInfo& info = store.info(name);
    name_width = std::max(name_width, name.size());
    shape_width = std::max(shape_width, format_shape(info.shape).size());
    shard_width = std::max(shard_width, shard_name(info).size());
  }
  const auto pad = [](const std::string& s, size_t width) {
    return s + std::string(width > s.size() ? width - s.size() : 0, ' ');
  };
  std::cout << pad("name", name_width) << "  " << pad("dtype", 7) << "  "
            << pad("shape", shape_width) << "  " << pad("shard", shard_width) << "  bytes"
            << (options.sha256 ? (options.as == "f32" ? "  sha256(f32)" : "  sha256") : "") << "\n";
  for (const auto& name : store.names()) {
    const TensorInfo& info = store.info(name);
    std::cout << pad(name, name_width) << "  " << pad(dtype_name(info.dtype), 7) << "  "
              << pad(format_shape(info.shape), shape_width) << "  "
              << pad(shard_name(info), shard_width) << "  " << info.nbytes();
    if (options.sha256) std::cout << "  " << tensor_sha256(store, name, options.as == "f32");
    std::cout << "\n";
  }
  std::cout << store.size() << " tensors, " << store.total_bytes() << " bytes in "
            << store.shard_paths().size() << " file(s)\n";
}

// ---- GGUF ---------------------------------------------------------------------------------------

std::string gguf_sha256(const gguf::File& file, const gguf::TensorInfo& t, bool as_f32) {
  if (!as_f32) {
    const std::string hex = sha256_hex(file.bytes(t), t.nbytes);
    file.release(t);
    return hex;
  }
  const std::vector<float> values = file.dequantize(t);
  return sha256_hex(values.data(), values.size() * sizeof(float));
}

const char* gguf_type_name(uint32_t type) {
  return gguf::type_traits(type)->name;
}  // parse() checked it

void print_gguf(const gguf::File& file, const TensorsOptions& options) {
  const gguf::Header& h = file.header();
  uint64_t total = 0;
  for (const auto& t : h.tensors) total += t.nbytes;
  const bool f32 = options.as == "f32";
  if (options.json) {
    nlohmann::ordered_json out;
    out["model"] = options.model;
    out["format"] = "gguf";
    out["version"] = h.version;
    out["alignment"] = h.alignment;
    out["metadata_keys"] = h.metadata.size();
    out["total_bytes"] = total;
    if (options.sha256) out["sha256_of"] = f32 ? "f32" : "raw";
    nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
    for (const auto& t : h.tensors) {
      nlohmann::ordered_json row;
      row["name"] = t.name;
      row["type"] = gguf_type_name(t.type);
      row["shape"] = t.shape();
      row["offset"] = t.begin;
      row["bytes"] = t.nbytes;
      if (options.sha256) row["sha256"] = gguf_sha256(file, t, f32);
      tensors.push_back(std::move(row));
    }
    out["tensors"] = std::move(tensors);
    std::cout << out.dump(2) << "\n";
    return;
  }
  size_t name_width = 4, shape_width = 5;
  for (const auto& t : h.tensors) {
    name_width = std::max(name_width, t.name.size());
    shape_width = std::max(shape_width, format_shape(t.shape()).size());
  }
  const auto pad = [](const std::string& s, size_t width) {
    return s + std::string(width > s.size() ? width - s.size() : 0, ' ');
  };
  std::cout << pad("name", name_width) << "  " << pad("type", 7) << "  "
            << pad("shape", shape_width) << "  bytes"
            << (options.sha256 ? (f32 ? "  sha256(f32)" : "  sha256") : "") << "\n";
  for (const auto& t : h.tensors) {
    std::cout << pad(t.name, name_width) << "  " << pad(gguf_type_name(t.type), 7) << "  "
              << pad(format_shape(t.shape()), shape_width) << "  " << t.nbytes;
    if (options.sha256) std::cout << "  " << gguf_sha256(file, t, f32);
    std::cout << "\n";
  }
  std::cout << h.tensors.size() << " tensors, " << total << " bytes, GGUF v" << h.version << ", "
            << h.metadata.size() << " metadata keys\n";
}

}  // namespace

void add_tensors_command(CLI::App& app) {
  auto options = std::make_shared<TensorsOptions>();
  auto* cmd =
      app.add_subcommand("tensors", "List every tensor of a safetensors checkpoint or a GGUF file");
  cmd->add_option(
         "model", options->model,
         "model directory, model.safetensors.index.json, a .safetensors file, or a .gguf file")
      ->required();
  cmd->add_flag("--json", options->json, "print JSON instead of a table");
  auto* sha = cmd->add_flag("--sha256", options->sha256, "add the SHA-256 of each tensor");
  cmd->add_option("--as", options->as,
                  "hash the float32 (little-endian) conversion instead of the stored bytes (GGUF: "
                  "the dequantized values)")
      ->check(CLI::IsMember({"f32"}))
      ->needs(sha);
  auto* dump = cmd->add_option(
      "--dump", options->dump,
      "write this tensor's values (dequantized for GGUF) as little-endian float32 to --out");
  cmd->add_option("--out", options->out, "file for --dump")->needs(dump);
  cmd->callback([options] {
    if (!options->dump.empty()) {
      if (options->out.empty()) throw ConfigError("", "--out", "--dump needs --out FILE");
      dump_values(options->model, options->dump, options->out);
      return;
    }
    if (gguf::is_gguf_path(options->model)) {
      print_gguf(gguf::File(options->model), *options);
      return;
    }
    const WeightStore store(options->model);
    if (options->json) {
      print_json(store, *options);
    } else {
      print_table(store, *options);
    }
  });
}

}  // namespace lathe::cli
