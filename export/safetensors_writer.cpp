#include "export/safetensors_writer.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/sha256.h"
#include "compressor/model/fingerprint.h"

namespace lathe {

std::string write_safetensors(const std::string& path, const std::vector<TensorBytes>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorBytes*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const TensorBytes* a, const TensorBytes* b) { return a->name < b->name; });
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const TensorBytes& t = *order[i];
    if (i > 0 && order[i - 1]->name == t.name)
      throw InternalError(path, t.name, "tensor written twice");
    if (t.name == "__metadata__") throw InternalError(path, t.name, "reserved name");
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) throw InternalError(path, t.name, "negative dimension");
      numel *= static_cast<uint64_t>(d);
    }
    if (numel * dtype_size(t.dtype) != t.size)
      throw InternalError(path, t.name, "data size does not match the shape");
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.size}}};
    offset += t.size;
  }
  std::string head = header.dump();
  head.append((8 - head.size() % 8) % 8, ' ');
  uint8_t length[8];
  for (int i = 0; i < 8; ++i)
    length[i] = static_cast<uint8_t>(static_cast<uint64_t>(head.size()) >> (8 * i));
  std::vector<FilePiece> pieces = {{length, sizeof length}, {head.data(), head.size()}};
  for (const TensorBytes* t : order) pieces.push_back({t->data, t->size});
  write_file_atomically(path, pieces);
  Sha256 sha;
  for (const FilePiece& piece : pieces) sha.update(piece.data, piece.size);
  return fingerprint_from_digest(sha.finish());
}

}  // namespace lathe
