#include "calibrate/tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>
#include <queue>

#include "calibrate/tokenizer/unicode.h"

namespace lathe::tok {
namespace {

// Largest id accepted in a vocabulary (ids are int32 everywhere downstream).
constexpr int64_t kMaxTokenId = 0x7FFFFFFE;
// Pre-tokens shorter than this are cached (tokenizers uses the same limit), up to kCacheCapacity.
constexpr size_t kCacheMaxLength = 256;
constexpr size_t kCacheCapacity = 200000;

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// A candidate merge in the queue; the queue yields the lowest rank, then the leftmost position.
struct Candidate {
  uint32_t rank;
  int32_t pos;
  int32_t new_id;
  bool operator<(const Candidate& other) const {
    return rank != other.rank ? rank > other.rank : pos > other.pos;
  }
};

}  // namespace

BpeModel::BpeModel(const JsonReader& json) {
  if (json.has("type") && json.type() != "BPE") {
    json.at("type").unsupported("model type '" + json.type() + "' is not supported (only BPE)");
  }
  if (json.has("dropout") && json.at("dropout").as_number() != 0.0) {
    json.at("dropout").unsupported("BPE dropout is random; lathe needs deterministic tokenization");
  }
  prefix_ = json.string_or("continuing_subword_prefix", "");
  suffix_ = json.string_or("end_of_word_suffix", "");
  fuse_unk_ = json.bool_or("fuse_unk", false);
  byte_fallback_ = json.bool_or("byte_fallback", false);
  ignore_merges_ = json.bool_or("ignore_merges", false);
  read_vocab(json.at("vocab"));
  read_merges(json.at("merges"));
  if (json.has("unk_token")) {
    const JsonReader unk = json.at("unk_token");
    unk_id_ = token_to_id(unk.as_string());
    if (!unk_id_) unk.fail("unk_token '" + unk.as_string() + "' is not in the vocab");
  }
  char name[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    byte_ids_[b] = token_to_id(name).value_or(-1);
  }
  for (int c = 0; c < 128; ++c) {
    const char s[1] = {static_cast<char>(c)};
    ascii_ids_[c] = token_to_id(std::string_view(s, 1)).value_or(-1);
  }
}

void BpeModel::read_vocab(const JsonReader& vocab) {
  if (!vocab.value().is_object()) vocab.fail("expected an object mapping tokens to ids");
  tokens_.reserve(vocab.value().size());
  index_of_id_.reserve(vocab.value().size());
  for (auto it = vocab.value().begin(); it != vocab.value().end(); ++it) {
    const int64_t id = JsonReader(it.value(), vocab.file(), vocab.path() + "." + it.key()).as_int();
    if (id < 0 || id > kMaxTokenId) {
      vocab.fail("token '" + it.key() + "' has id " + std::to_string(id) + ", outside [0, " +
                 std::to_string(kMaxTokenId) + "]");
    }
    const auto [previous, inserted] =
        index_of_id_.emplace(static_cast<int32_t>(id), static_cast<uint32_t>(tokens_.size()));
    if (!inserted) {
      vocab.fail("tokens '" + tokens_[previous->second] + "' and '" + it.key() + "' both have id " +
                 std::to_string(id));
    }
    tokens_.push_back(it.key());
    id_limit_ = std::max(id_limit_, static_cast<int32_t>(id + 1));
  }
  // Built only now: the views point into tokens_, which no longer moves.
  vocab_.reserve(tokens_.size());
  for (const auto& [id, index] : index_of_id_) vocab_.emplace(tokens_[index], id);
}

void BpeModel::read_merges(const JsonReader& merges) {
  const size_t n = merges.array_size();
  merges_.reserve(n);
  uint32_t rank = 0;
  for (size_t i = 0; i < n; ++i) {
    const JsonReader merge = merges.element(i);
    if (merge.value().is_string()) {  // legacy "a b"
      const std::string line = merge.as_string();
      if (line.rfind("#version", 0) == 0) continue;
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        merge.fail("expected two tokens separated by one space, found \"" + line + "\"");
      }
      add_merge(merge, rank++, line.substr(0, space), line.substr(space + 1));
    } else {
      if (merge.array_size() != 2) merge.fail("expected a pair of tokens");
      add_merge(merge, rank++, merge.element(0).as_string(), merge.element(1).as_string());
    }
  }
}

void BpeModel::add_merge(const JsonReader& where, uint32_t rank, const std::string& a,
                         const std::string& b) {
  const auto a_id = token_to_id(a), b_id = token_to_id(b);
  if (!a_id) where.fail("merge part '" + a + "' is not in the vocab");
  if (!b_id) where.fail("merge part '" + b + "' is not in the vocab");
  if (b.size() < prefix_.size()) {
    where.fail("merge part '" + b + "' is shorter than continuing_subword_prefix");
  }
  const std::string merged = a + b.substr(prefix_.size());
  const auto new_id = token_to_id(merged);
  if (!new_id) where.fail("merge result '" + merged + "' is not in the vocab");
  // A repeated pair keeps its last rank, as tokenizers' HashMap collect does.
  merges_[pair_key(*a_id, *b_id)] = Merge{rank, *new_id};
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  auto it = index_of_id_.find(id);
  return it == index_of_id_.end() ? nullptr : &tokens_[it->second];
}

const BpeModel::Merge* BpeModel::find_merge(int32_t left, int32_t right) const {
  auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

// One symbol per character (tokenizers' merge_word): vocabulary lookup, else the <0xNN> tokens of
// its bytes, else unk (fused with a preceding unk when fuse_unk), else nothing.
std::vector<BpeModel::Symbol> BpeModel::initial_symbols(std::string_view word) const {
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&symbols](int32_t id, uint32_t len) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (!symbols.empty()) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, len});
  };
  const bool affixes = !prefix_.empty() || !suffix_.empty();
  int32_t unk_pending = -1;  // a pending unk symbol (id) and its byte length
  uint32_t unk_len = 0;
  std::string piece;
  for (size_t i = 0; i < word.size();) {
    const size_t start = i;
    i += unicode::utf8_length(static_cast<unsigned char>(word[i]));
    const auto len = static_cast<uint32_t>(i - start);
    int32_t id = -1;
    if (!affixes && len == 1) {
      id = ascii_ids_[static_cast<unsigned char>(word[start])];
    } else if (!affixes) {
      id = token_to_id(word.substr(start, len)).value_or(-1);
    } else {
      piece.assign(start == 0 ? "" : prefix_);
      piece.append(word.substr(start, len));
      if (i == word.size()) piece.append(suffix_);
      id = token_to_id(piece).value_or(-1);
    }
    if (id >= 0) {
      if (unk_pending >= 0) add(unk_pending, unk_len);
      unk_pending = -1;
      add(id, len);
      continue;
    }
    if (byte_fallback_) {
      const std::string_view bytes = affixes ? std::string_view(piece) : word.substr(start, len);
      const bool all = std::all_of(bytes.begin(), bytes.end(), [this](char b) {
        return byte_ids_[static_cast<unsigned char>(b)] >= 0;
      });
      if (all) {  // tokenizers does not flush a pending unk here
        for (char b : bytes) add(byte_ids_[static_cast<unsigned char>(b)], 1);
        continue;
      }
    }
    if (!unk_id_) continue;
    if (unk_pending >= 0 && fuse_unk_) {
      unk_len += len;
    } else {
      if (unk_pending >= 0) add(unk_pending, unk_len);
      unk_pending = *unk_id_;
      unk_len = len;
    }
  }
  if (unk_pending >= 0) add(unk_pending, unk_len);
  return symbols;
}

// tokenizers' Word::merge_all without dropout: the queue may hold stale candidates, which are
// recognised by a removed symbol (len 0) or a pair that no longer yields the same new id.
void BpeModel::merge_all(std::vector<Symbol>& symbols) const {
  std::priority_queue<Candidate> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  const auto size = static_cast<int32_t>(symbols.size());
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<size_t>(top.pos)];
    if (left.len == 0 || left.next == -1) continue;
    const Symbol right = symbols[static_cast<size_t>(left.next)];
    const Merge* current = find_merge(left.id, right.id);
    if (current == nullptr || current->new_id != top.new_id) continue;
    symbols[static_cast<size_t>(left.next)].len = 0;
    left.id = top.new_id;
    left.len += right.len;
    left.next = right.next;
    if (right.next >= 0 && right.next < size)
      symbols[static_cast<size_t>(right.next)].prev = top.pos;
    if (left.prev >= 0) {
      if (const Merge* m = find_merge(symbols[static_cast<size_t>(left.prev)].id, left.id)) {
        queue.push({m->rank, left.prev, m->new_id});
      }
    }
    if (left.next >= 0 && left.next < size) {
      if (const Merge* m = find_merge(left.id, symbols[static_cast<size_t>(left.next)].id)) {
        queue.push({m->rank, top.pos, m->new_id});
      }
    }
  }
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto id = token_to_id(word)) {
      ids.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() < kCacheMaxLength;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<Symbol> symbols = initial_symbols(word);
  merge_all(symbols);
  const size_t first = ids.size();
  for (const Symbol& s : symbols) {
    if (s.len != 0) ids.push_back(s.id);
  }
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) {
      cache_.emplace(std::move(key),
                     std::vector<int32_t>(ids.begin() + static_cast<long>(first), ids.end()));
    }
  }
}

}  // namespace lathe::tok
