#include "export/gguf_file.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "compressor/common/errors.h"
#include "compressor/model/mapped_file.h"
#include "export/gguf_quants.h"

namespace lathe::gguf {

File::File(const std::string& path)
    : path_(path),
      map_(std::make_shared<const MappedFile>(path)),
      header_(parse(map_->data(), map_->size(), path)) {}

File::~File() = default;

const TensorInfo& File::tensor(const std::string& name) const {
  const TensorInfo* t = header_.find(name);
  if (!t) throw DataError(path_, name, "no such tensor in this GGUF file");
  return *t;
}

const uint8_t* File::bytes(const TensorInfo& t) const {
  return map_->data() + t.begin;
}

std::vector<float> File::dequantize(const TensorInfo& t) const {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  gguf::dequantize(t.type, bytes(t), t.numel(), out.data(), path_, t.name);
  release(t);
  return out;
}

void File::release(const TensorInfo& t) const {
  map_->release(t.begin, t.begin + t.nbytes);
}

void File::release_range(const TensorInfo& t, uint64_t begin, uint64_t end) const {
  map_->release(t.begin + std::min(begin, t.nbytes), t.begin + std::min(end, t.nbytes));
}

bool is_gguf_path(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".gguf" && std::filesystem::is_regular_file(path);
}

}  // namespace lathe::gguf
