// StatsStore: the HDF5 file of calibration statistics (DESIGN.md "Core types", issue 4 item 3).
// Every entry carries the fingerprints of the inputs it was computed from; reading an entry whose
// inputs have changed is refused with a message naming the input, so a stale statistic is never
// silently used. Files appear at their final path only when complete.
//
// File layout (HDF5 1.8+ readable, e.g. by h5py):
//
//   /                                  attributes: format = "lathe-stats", format_version = 1,
//                                      lathe_version, complete (uint8: 1 once committed)
//   /<kind>/layer_<i>/<tap>/<task>     one dataset per statistic (StatsKey), contiguous, no filters
//   /<kind>/all_layers/<tap>/<task>    a statistic spanning the whole model (layer = kAllLayers)
//
//   dataset attributes (all strings variable-length UTF-8 unless noted):
//     weights_fingerprint, calibration_fingerprint, options_fingerprint   "sha256:<hex>"
//     lathe_version     the lathe that wrote the entry
//     dtype             the tensor's safetensors spelling: F32, F64, I64, I32, U8, BOOL, F16, BF16
//     tokens            int64: calibration tokens that contributed (n, or n_e for an expert)
//   The dataset's dataspace is the tensor's shape (scalar dataspace for a 0-d tensor). Elements
//   are little-endian IEEE floats or integers; BOOL is h5py's enum {FALSE = 0, TRUE = 1} over
//   int8; F16 and BF16 are 16-bit HDF5 float types with their bit layouts.
//
// Object modification times are not recorded, so the same puts in the same order give a
// byte-identical file (DESIGN.md: re-runs produce byte-identical files).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace lathe {

/// Identifies one statistic. Each name part is a non-empty HDF5 link name: no '/', not "." or
/// "..", no NUL. Examples: {"router_mass", 3, "router.logits", "code"},
/// {"hessian", 0, "expert[5].in", "all"}.
struct StatsKey {
  /// `layer` value for a statistic over the whole model, stored under "all_layers".
  static constexpr int64_t kAllLayers = -1;

  std::string kind;   ///< what is measured, e.g. "router_mass", "channel_abs_max", "hessian"
  int64_t layer = 0;  ///< decoder layer index, or kAllLayers
  std::string tap;    ///< where it was observed (DecoderLayer tap name), e.g. "mlp.in"
  std::string task;   ///< calibration task label, e.g. "prose"; "all" for every task together

  bool operator==(const StatsKey& other) const;
  bool operator!=(const StatsKey& other) const { return !(*this == other); }
  /// Orders by kind, layer (numerically), tap, task.
  bool operator<(const StatsKey& other) const;
};

/// The HDF5 path of `key` inside the store, e.g. "router_mass/layer_3/router.logits/code"; error
/// messages name keys this way.
std::string to_string(const StatsKey& key);

/// The inputs a statistic was computed from, each a fingerprint "sha256:<hex>" (fingerprint.h).
struct StatsFingerprints {
  std::string weights;      ///< the weights it depends on (tensor_fingerprint of layers ≤ i)
  std::string calibration;  ///< the calibration set (tokenizer, token ids, sequence length)
  std::string options;      ///< the collector's options, including its own version
};

/// What the store records about one entry besides its values.
struct StatsInfo {
  StatsFingerprints fingerprints;
  std::string lathe_version;
  std::string dtype;           ///< safetensors spelling, e.g. "F64"
  std::vector<int64_t> shape;  ///< empty for a 0-d tensor
  int64_t tokens = 0;          ///< calibration tokens that contributed (n_e for an expert)
};

/// An HDF5 statistics file, opened for reading (open) or being written (create, update).
///
/// Writing is atomic: a writable store works on `<path>.tmp-<pid>` (root attribute complete = 0);
/// commit() sets complete = 1, flushes, fsyncs and renames it over `path`. A store destroyed
/// without commit() deletes its temporary file, and a process killed mid-write leaves only that
/// `.tmp-<pid>` file (safe to delete), never a file at `path`. open() refuses any file without
/// complete = 1, so a copied temporary file is not mistaken for a store either.
///
/// Every HDF5 failure is rethrown as a lathe error whose `where` is the store's final path and
/// whose `field` is the key involved (empty for file-level failures), with HDF5's innermost
/// reason in the message: ResourceError while writing, DataError while reading.
///
/// Movable, not copyable. One thread at a time may use a store object.
class StatsStore {
 public:
  /// Starts a new, empty store that commit() will place at `path`. Nothing is written at `path`
  /// until then; an existing file there is replaced by commit(), so callers decide beforehand
  /// whether replacing is allowed (`--force`). Throws ResourceError when the directory of `path`
  /// does not exist or the temporary file cannot be created, InternalError when this process is
  /// already writing `path` through another StatsStore.
  static StatsStore create(const std::string& path);

  /// Opens the complete store at `path` read-only; never modifies the file. Throws ResourceError
  /// when it does not exist, DataError (where = path) when it is not an HDF5 file, is truncated or
  /// corrupt, is not a lathe statistics store, or lacks complete = 1 (a run that did not finish),
  /// UnsupportedError for a newer format_version.
  static StatsStore open(const std::string& path);

  /// Opens the complete store at `path` for adding or replacing entries: its contents are copied
  /// into a temporary file that commit() renames over `path`. The file at `path` is never
  /// modified in place, and stays as it was when commit() is not reached. Errors as open() and
  /// create().
  static StatsStore update(const std::string& path);

  ~StatsStore();
  StatsStore(StatsStore&&) noexcept;
  StatsStore& operator=(StatsStore&&) noexcept;
  StatsStore(const StatsStore&) = delete;
  StatsStore& operator=(const StatsStore&) = delete;

  /// The final path of the store.
  const std::string& path() const;
  /// True for a store from create() or update() that has not been committed yet.
  bool writable() const;

  /// Stores `value` (any device; copied to CPU, contiguous) under `key`, replacing an existing
  /// entry with that key, with the fingerprints of its inputs and the number of calibration
  /// tokens that contributed. Dtypes: float32, float64, float16, bfloat16, int64, int32, uint8,
  /// bool. Throws ConfigError (field = the key) for a key part that is not a valid name,
  /// UnsupportedError for another dtype, InternalError for a read-only store, a fingerprint that
  /// is not "sha256:<64 hex>" or tokens < 0, ResourceError when HDF5 fails to write.
  void put(const StatsKey& key, const at::Tensor& value, const StatsFingerprints& fingerprints,
           int64_t tokens);

  /// The values stored under `key`, with their stored dtype and shape, on CPU, after checking that
  /// they were computed from the `expected` inputs. Throws DataError (field = the key) when the key
  /// is missing, or when any fingerprint differs: the message has one clause per changed input,
  /// "model weights changed", "calibration data changed", "collector options changed", each with
  /// the stored and the current fingerprint, so the caller can recompute. The lathe version is
  /// recorded but not compared: a collector whose statistic changes meaning bumps the version in
  /// its options.
  at::Tensor get(const StatsKey& key, const StatsFingerprints& expected) const;

  /// The recorded attributes of `key`, without checking fingerprints or reading values. DataError
  /// (field = the key) when missing or when its attributes are malformed.
  StatsInfo info(const StatsKey& key) const;

  /// The values stored under `key` without comparing fingerprints: for reports about the store
  /// itself (coverage), never for a pass's input. DataError (field = the key) when missing.
  at::Tensor get_as_stored(const StatsKey& key) const;

  /// True when `key` is present and its three fingerprints equal `expected`: get() would succeed.
  bool is_current(const StatsKey& key, const StatsFingerprints& expected) const;

  /// True when an entry with `key` exists (whatever its fingerprints).
  bool contains(const StatsKey& key) const;

  /// Every key in the store, sorted. DataError naming the HDF5 path of any object that does not
  /// fit the layout above.
  std::vector<StatsKey> keys() const;

  /// Marks the store complete, flushes and fsyncs it, and renames it over `path()` atomically;
  /// afterwards the object reads the committed file (writable() is false). InternalError on a
  /// read-only store; ResourceError when writing, syncing or renaming fails (the temporary file is
  /// then removed and nothing appears at `path()`).
  void commit();

 private:
  struct Impl;
  explicit StatsStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Where `lathe calibrate` keeps the calibration set's description_json (UTF-8 bytes, uint8).
StatsKey calibration_description_key();

/// That description as stored, or nullopt when the store has none.
std::optional<std::string> stored_calibration_description(const StatsStore& store);

}  // namespace lathe
