// Added tokens of tokenizer.json ("added_tokens"): ids assigned as tokenizers assigns them, and the
// extraction of those tokens from the input before normalisation (tokens with normalized=false,
// matched in the raw text) and after it (normalized=true, matched in each normalised piece),
// leftmost-longest, with the single_word, lstrip and rstrip rules.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "calibrate/tokenizer/bpe.h"
#include "calibrate/tokenizer/json_reader.h"
#include "calibrate/tokenizer/normalizers.h"
#include "calibrate/tokenizer/pieces.h"

namespace lathe::tok {

/// One added token.
struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  /// The normaliser's output for `content` when `normalized` and it differs; what is matched in
  /// normalised text and what decoding emits (tokenizers' normalized_cache).
  std::string normalized_form;
};

/// The added tokens of one tokenizer.
class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  /// Reads the "added_tokens" array. A token's id is its id in the model vocab when its content
  /// is there, else the next free id after the model vocab (tokenizers' rule); a file whose
  /// "id" disagrees is rejected with a DataError naming the token (tokenizers only warns and uses
  /// its own id, which would shift every later token). Empty contents are skipped.
  AddedVocabulary(const JsonReader& list, const BpeModel& model, const Normalizer* normalizer);

  /// Splits raw input pieces around tokens with normalized=false.
  void extract_raw(Pieces& pieces) const { extract(pieces, raw_trie_); }
  /// Splits normalised pieces around tokens with normalized=true.
  void extract_normalized(Pieces& pieces) const { extract(pieces, normalized_trie_); }

  /// The token with `id`, or nullptr.
  const AddedToken* find(int32_t id) const;
  /// The id of an added token's content.
  std::optional<int32_t> token_to_id(std::string_view content) const;
  /// True when `text` is the content of a special token (tokenizers compares strings).
  bool is_special_content(std::string_view text) const;
  /// Every added token, by ascending id.
  std::vector<const AddedToken*> tokens() const;

 private:
  // A byte trie of the patterns of one matching pass.
  struct Trie {
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
      int32_t token = -1;                                       // id of the token ending here
    };
    std::vector<Node> nodes;
    std::array<int32_t, 256> root{};  // child of the root per first byte, -1 when none
    void add(std::string_view pattern, int32_t id);
    /// Longest pattern starting at text[pos]: (length, id), or (0, -1).
    std::pair<size_t, int32_t> longest_at(std::string_view text, size_t pos) const;
  };

  void add(const JsonReader& entry, AddedToken token, int32_t& next_id, const BpeModel& model,
           const Normalizer* normalizer);
  void build_tries();
  void extract(Pieces& pieces, const Trie& trie) const;
  void split_one(const Piece& piece, const Trie& trie, Pieces& out) const;

  std::unordered_map<int32_t, AddedToken> by_id_;
  std::unordered_map<std::string, int32_t> by_content_;
  std::unordered_set<std::string> special_contents_;
  Trie raw_trie_;
  Trie normalized_trie_;
};

}  // namespace lathe::tok
