// The BPE model of tokenizer.json ("model": {"type": "BPE", ...}), merging exactly as tokenizers'
// Word::merge_all does (lowest merge rank first, leftmost on ties, through a priority queue), with
// unk_token/fuse_unk, byte_fallback (<0xNN> tokens), ignore_merges,
// continuing_subword_prefix and end_of_word_suffix.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "calibrate/tokenizer/json_reader.h"

namespace lathe::tok {

/// A BPE vocabulary with its merges. Thread-safe: the word cache is guarded by a mutex.
class BpeModel {
 public:
  /// Reads the model object. Throws DataError (naming the field, and the merge index for bad
  /// merges) for a missing vocab or merges, ids that are negative or repeated, merges whose parts
  /// or result are not in the vocab, an unk_token outside the vocab; UnsupportedError for a
  /// non-zero dropout or a model type other than BPE.
  explicit BpeModel(const JsonReader& json);

  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  /// Appends the ids of one pre-token (non-empty, valid UTF-8) to `ids`.
  void tokenize(std::string_view word, std::vector<int32_t>& ids) const;

  /// The id of a vocabulary token.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  /// The token of an id, nullptr when the vocabulary has no such id.
  const std::string* id_to_token(int32_t id) const;
  /// Number of vocabulary entries.
  size_t size() const { return vocab_.size(); }
  /// One past the largest id.
  int32_t id_limit() const { return id_limit_; }

 private:
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    uint32_t len;
  };

  void read_vocab(const JsonReader& vocab);
  void read_merges(const JsonReader& merges);
  void add_merge(const JsonReader& where, uint32_t rank, const std::string& a,
                 const std::string& b);
  const Merge* find_merge(int32_t left, int32_t right) const;
  std::vector<Symbol> initial_symbols(std::string_view word) const;
  void merge_all(std::vector<Symbol>& symbols) const;

  // Ids may be sparse in a hostile file, so tokens are stored densely and found through maps.
  std::vector<std::string> tokens_;                      // in file order
  std::unordered_map<std::string_view, int32_t> vocab_;  // views into tokens_ -> id
  std::unordered_map<int32_t, uint32_t> index_of_id_;    // id -> index in tokens_
  int32_t id_limit_ = 0;
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> merge
  std::optional<int32_t> unk_id_;
  std::string prefix_;  // continuing_subword_prefix
  std::string suffix_;  // end_of_word_suffix
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  int32_t byte_ids_[256];   // <0xNN> token ids, -1 when absent
  int32_t ascii_ids_[128];  // id of each ASCII character token, -1 when absent

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace lathe::tok
