#include "compressor/model/fingerprint.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/model/dtype.h"
#include "compressor/model/mapped_file.h"
#include "compressor/model/weight_store.h"

namespace lathe {
namespace {

constexpr std::string_view kPrefix = "sha256:";

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text;
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? "," : "") + std::to_string(shape[i]);
  return text;
}

// Hashed bytes are released every this many bytes, so one huge tensor never becomes resident whole.
constexpr uint64_t kReleaseChunk = 64ull << 20;

// SHA-256 of each view's bytes. Independent per tensor, so they run in parallel: hashing is the
// whole cost (~0.5 GB/s per core), and a large checkpoint is tens of gigabytes. The mapped pages
// read are released as hashing goes (MappedFile::release), so resident memory stays at about one
// chunk per thread instead of growing to the checkpoint's size.
std::vector<Sha256::Digest> data_digests(const std::vector<TensorView>& views) {
  std::vector<Sha256::Digest> digests(views.size());
  const auto count = static_cast<int64_t>(views.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < count; ++i) {
    const TensorView& v = views[i];
    const bool mapped = v.mapping && v.mapping->contains(v.data);
    const uint64_t offset = mapped ? static_cast<uint64_t>(v.data - v.mapping->data()) : 0;
    Sha256 sha;
    for (uint64_t done = 0; done < v.nbytes;) {
      const uint64_t step = std::min(kReleaseChunk, v.nbytes - done);
      sha.update(v.data + done, step);
      done += step;
      // From the tensor's start: a page straddling two chunks is whole only now.
      if (mapped) v.mapping->release(offset, offset + done);
    }
    digests[i] = sha.finish();
  }
  return digests;
}

}  // namespace

std::string fingerprint_from_digest(const Sha256::Digest& digest) {
  return std::string(kPrefix) + to_hex(digest.data(), digest.size());
}

bool is_fingerprint(std::string_view text) {
  if (text.size() != kPrefix.size() + 64 || text.substr(0, kPrefix.size()) != kPrefix) return false;
  return std::all_of(text.begin() + kPrefix.size(), text.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

namespace {

/// Digest of each tensor's bytes by name, for the names given (each read once).
std::map<std::string, Sha256::Digest> digests_by_name(const WeightStore& store,
                                                      const std::vector<std::string>& names) {
  std::vector<TensorView> views;
  views.reserve(names.size());
  for (const std::string& name : names) views.push_back(store.view(name));  // throws if missing
  const std::vector<Sha256::Digest> digests = data_digests(views);
  std::map<std::string, Sha256::Digest> out;
  for (size_t i = 0; i < names.size(); ++i) out[names[i]] = digests[i];
  return out;
}

/// The tensor fingerprint of `names` from digests already computed.
std::string compose_fingerprint(const WeightStore& store, const std::vector<std::string>& names,
                                const std::map<std::string, Sha256::Digest>& digests) {
  std::vector<std::string> sorted = names;
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  static constexpr char kNul = '\0';
  Sha256 sha;
  for (const std::string& name : sorted) {
    const TensorView v = store.view(name);
    const Sha256::Digest& digest = digests.at(name);
    sha.update(name);
    sha.update(&kNul, 1);
    sha.update(dtype_name(v.dtype));
    sha.update(&kNul, 1);
    sha.update(shape_text(v.shape));
    sha.update(&kNul, 1);
    sha.update(digest.data(), digest.size());
  }
  return fingerprint_from_digest(sha.finish());
}

/// The upstream chain (upstream_weight_fingerprints) from digests already computed.
std::vector<std::string> compose_upstream(const WeightStore& store, const ModelSpec& spec,
                                          ExpertLayout layout,
                                          const std::map<std::string, Sha256::Digest>& digests) {
  std::vector<std::string> out;
  std::string previous = compose_fingerprint(store, {"model.embed_tokens.weight"}, digests);
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    std::vector<std::string> names;
    for (const auto& t : expected_layer_tensors(spec, layout, i)) names.push_back(t.name);
    previous = Fingerprinter("lathe.upstream-weights/1")
                   .add("previous", previous)
                   .add("layer", compose_fingerprint(store, names, digests))
                   .finish();
    out.push_back(previous);
  }
  return out;
}

/// The names upstream_weight_fingerprints covers: the embedding and every layer tensor.
std::vector<std::string> upstream_names(const ModelSpec& spec, ExpertLayout layout) {
  std::vector<std::string> names = {"model.embed_tokens.weight"};
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    for (const auto& t : expected_layer_tensors(spec, layout, i)) names.push_back(t.name);
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

}  // namespace

std::string tensor_fingerprint(const WeightStore& store, const std::vector<std::string>& names) {
  std::vector<std::string> sorted = names;
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  return compose_fingerprint(store, sorted, digests_by_name(store, sorted));
}

std::string weights_fingerprint(const WeightStore& store) {
  return tensor_fingerprint(store, store.names());
}

std::vector<std::string> upstream_weight_fingerprints(const WeightStore& store,
                                                      const ModelSpec& spec, ExpertLayout layout) {
  return compose_upstream(store, spec, layout,
                          digests_by_name(store, upstream_names(spec, layout)));
}

ModelFingerprints model_fingerprints(const WeightStore& store, const ModelSpec& spec,
                                     ExpertLayout layout) {
  const std::map<std::string, Sha256::Digest> digests = digests_by_name(store, store.names());
  return {compose_fingerprint(store, store.names(), digests),
          compose_upstream(store, spec, layout, digests)};
}

std::string config_fingerprint(const nlohmann::json& config) {
  Sha256 sha;
  sha.update(config.dump());
  return fingerprint_from_digest(sha.finish());
}

std::string file_fingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ResourceError(path, "", std::string("cannot open: ") + std::strerror(errno));
  Sha256 sha;
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    sha.update(buffer.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) throw ResourceError(path, "", "read failed while computing its fingerprint");
  return fingerprint_from_digest(sha.finish());
}

Fingerprinter::Fingerprinter(std::string_view purpose) {
  field(purpose.data(), purpose.size());
}

void Fingerprinter::field(const void* data, size_t size) {
  uint8_t length[8];
  for (int i = 0; i < 8; ++i)
    length[i] = static_cast<uint8_t>(static_cast<uint64_t>(size) >> (8 * i));
  sha_.update(length, sizeof(length));
  sha_.update(data, size);
}

void Fingerprinter::part(std::string_view label, char type, const void* data, size_t size) {
  field(label.data(), label.size());
  sha_.update(&type, 1);
  field(data, size);
}

Fingerprinter& Fingerprinter::add(std::string_view label, std::string_view text) {
  part(label, 's', text.data(), text.size());
  return *this;
}

Fingerprinter& Fingerprinter::add(std::string_view label, int64_t value) {
  const std::string text = std::to_string(value);
  part(label, 'i', text.data(), text.size());
  return *this;
}

Fingerprinter& Fingerprinter::add_json(std::string_view label, const nlohmann::json& value) {
  const std::string text = value.dump();
  part(label, 'j', text.data(), text.size());
  return *this;
}

Fingerprinter& Fingerprinter::add_bytes(std::string_view label, const void* data, size_t size) {
  part(label, 'b', data, size);
  return *this;
}

std::string Fingerprinter::finish() {
  return fingerprint_from_digest(sha_.finish());
}

}  // namespace lathe
