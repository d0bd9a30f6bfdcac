// Fingerprints of lathe's inputs (FORMATS.md §7): strings "sha256:<64 lower-case hex>" that change
// when, and only when, the input they summarise changes. Cached statistics, resume state and the
// output manifest store them, so a changed model, config, dataset or option is detected instead of
// silently reusing stale results. Torch-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "compressor/common/sha256.h"
#include "compressor/model/architecture.h"

namespace lathe {

class WeightStore;

/// "sha256:" followed by the 64 hex characters of `digest`.
std::string fingerprint_from_digest(const Sha256::Digest& digest);

/// True when `text` is "sha256:" followed by exactly 64 lower-case hex characters.
bool is_fingerprint(std::string_view text);

/// Fingerprint of the named tensors of `store`, independent of how they are split into shards.
/// The SHA-256 message is, for each distinct name in ascending byte order:
///
///     name 0x00 dtype 0x00 shape 0x00 digest
///
/// where `name` is the tensor name's UTF-8 bytes, `dtype` its safetensors spelling ("BF16",
/// "F32", ...; dtype_name()), `shape` its dimensions in decimal ASCII joined by ',' with no
/// spaces ("4096,14336"; "0" for an empty dimension; the empty string for a scalar), and `digest`
/// the 32 raw bytes of SHA-256 over the tensor's data bytes exactly as stored (little-endian).
/// Nothing else is hashed: no metadata, shard names or offsets. Duplicates in `names` count once;
/// an empty list gives the digest of the empty message. Reads every byte of the named tensors
/// (per-tensor digests run on all cores) and releases the pages it read (WeightStore::release), so
/// hashing a checkpoint larger than RAM keeps RSS flat. Throws DataError (field = the name) for a
/// name the store does not hold. Use it for the weights a statistic depends on, e.g. every tensor
/// upstream of layer i.
std::string tensor_fingerprint(const WeightStore& store, const std::vector<std::string>& names);

/// tensor_fingerprint() over every tensor of the store: FORMATS.md §7 *weights* fingerprint.
/// A single-file and a sharded checkpoint holding the same tensors give the same value.
std::string weights_fingerprint(const WeightStore& store);

/// The weights each decoder layer's calibration statistics depend on: entry i covers the token
/// embedding and every tensor of layers 0..i (expected_layer_tensors), chained so each tensor is
/// hashed once: u_{-1} = tensor_fingerprint({embed_tokens}), u_i = Fingerprinter(
/// "lathe.upstream-weights/1").add("previous", u_{i-1}).add("layer", tensor_fingerprint(layer i)).
/// A changed weight in layer j changes entries j.. only, so the first changed entry names the
/// layer that changed. Throws like tensor_fingerprint.
std::vector<std::string> upstream_weight_fingerprints(const WeightStore& store,
                                                      const ModelSpec& spec, ExpertLayout layout);

/// weights_fingerprint() and upstream_weight_fingerprints() from one read of every tensor (the
/// decide stage needs both; each hash reads the whole checkpoint).
struct ModelFingerprints {
  std::string weights;
  std::vector<std::string> upstream;
};
ModelFingerprints model_fingerprints(const WeightStore& store, const ModelSpec& spec,
                                     ExpertLayout layout);

/// FORMATS.md §7 *config* fingerprint: SHA-256 of `config.dump()`, i.e. the JSON value with object
/// keys sorted by their UTF-8 bytes (nlohmann::json keeps objects sorted), no whitespace, strings
/// in UTF-8 with only the escapes JSON requires, integers in decimal and floating-point numbers in
/// nlohmann's shortest round-trip form. Key order and whitespace of the file do not matter; a
/// changed value does (1 and 1.0 differ: they are different JSON numbers to transformers too).
std::string config_fingerprint(const nlohmann::json& config);

/// SHA-256 of the bytes of the file at `path`, read in pieces (never whole into memory); the
/// FORMATS.md §7 *tokenizer* fingerprint when `path` is tokenizer.json. Throws ResourceError
/// (where = path) when the file cannot be opened or read.
std::string file_fingerprint(const std::string& path);

/// Combines labelled parts into one fingerprint, e.g. a collector's options or the calibration
/// set (FORMATS.md §7). The SHA-256 message is an unambiguous sequence of fields, each encoded as
/// its byte length (u64 little-endian) followed by its bytes:
///
///     field(purpose)  then per add():  field(label) type field(value)
///
/// `type` is one byte saying how the value was given: 's' text, 'i' signed integer (value =
/// decimal ASCII, e.g. "-12"), 'j' JSON (value = nlohmann dump(), as config_fingerprint), 'b' raw
/// bytes. So add("n", 5) and add("n", "5") differ, and no two different sequences of parts give the
/// same message. The order of add() calls is part of the value: callers add in a fixed order.
class Fingerprinter {
 public:
  /// `purpose` names what is being fingerprinted and its encoding version, e.g.
  /// "lathe.collector.router-stats/1", so equal parts of different things do not collide.
  explicit Fingerprinter(std::string_view purpose);

  /// Appends a text part.
  Fingerprinter& add(std::string_view label, std::string_view text);
  /// Appends an integer part.
  Fingerprinter& add(std::string_view label, int64_t value);
  /// Appends a JSON part (options as parsed from a recipe, canonicalised as config_fingerprint).
  Fingerprinter& add_json(std::string_view label, const nlohmann::json& value);
  /// Appends `size` raw bytes at `data` (e.g. token ids as u32 little-endian).
  Fingerprinter& add_bytes(std::string_view label, const void* data, size_t size);

  /// The fingerprint of everything added; the object must not be used afterwards.
  std::string finish();

 private:
  void field(const void* data, size_t size);
  void part(std::string_view label, char type, const void* data, size_t size);

  Sha256 sha_;
};

}  // namespace lathe
