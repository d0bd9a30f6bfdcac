#include "calibrate/tokenizer/added_vocabulary.h"

#include <algorithm>

#include "calibrate/tokenizer/unicode.h"

namespace lathe::tok {
namespace {

using unicode::Category;

// Rust regex's Unicode \w (Alphabetic, marks, decimal digits, connector punctuation, joiners),
// which single_word tests at the token's edges. Alphabetic is approximated by letters, letter
// numbers and the circled/squared Latin letters, its only members outside L, M and Nl.
bool is_word_char(char32_t cp) {
  if (cp < 128) {
    return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
           cp == '_';
  }
  switch (unicode::category(cp)) {
    case Category::Lu:
    case Category::Ll:
    case Category::Lt:
    case Category::Lm:
    case Category::Lo:
    case Category::Mn:
    case Category::Mc:
    case Category::Me:
    case Category::Nd:
    case Category::Nl:
    case Category::Pc: return true;
    default: break;
  }
  return cp == 0x200C || cp == 0x200D || (cp >= 0x24B6 && cp <= 0x24E9) ||
         (cp >= 0x1F130 && cp <= 0x1F149) || (cp >= 0x1F150 && cp <= 0x1F169) ||
         (cp >= 0x1F170 && cp <= 0x1F189);
}

// The last code point of text[0, end) (valid UTF-8, end > 0), and its start.
char32_t code_point_before(std::string_view text, size_t end, size_t& start) {
  start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  size_t i = start;
  return unicode::next_code_point(text, i);
}

}  // namespace

AddedVocabulary::AddedVocabulary(const JsonReader& list, const BpeModel& model,
                                 const Normalizer* normalizer) {
  // All tokens are added in one call, so the first new id is the model's vocabulary size.
  auto next_id = static_cast<int32_t>(model.size());
  for (size_t i = 0; i < list.array_size(); ++i) {
    const JsonReader entry = list.element(i);
    AddedToken token;
    token.content = entry.string_at("content");
    token.special = entry.bool_or("special", false);
    token.single_word = entry.bool_or("single_word", false);
    token.lstrip = entry.bool_or("lstrip", false);
    token.rstrip = entry.bool_or("rstrip", false);
    token.normalized = entry.bool_or("normalized", !token.special);
    add(entry, std::move(token), next_id, model, normalizer);
  }
  build_tries();
}

void AddedVocabulary::add(const JsonReader& entry, AddedToken token, int32_t& next_id,
                          const BpeModel& model, const Normalizer* normalizer) {
  if (token.content.empty()) return;
  auto known = by_content_.find(token.content);
  std::optional<int32_t> id = known != by_content_.end() ? std::optional<int32_t>(known->second)
                                                         : model.token_to_id(token.content);
  if (!id) id = next_id++;
  const int64_t declared = entry.at("id").as_int();
  if (declared != *id) {
    entry.at("id").fail("added token '" + token.content + "' has id " + std::to_string(declared) +
                        " but tokenizers would give it id " + std::to_string(*id) +
                        " (its content's id in the vocab, or the next id after the vocab)");
  }
  token.id = *id;
  if (token.normalized && normalizer != nullptr) {
    std::string form = token.content;
    normalizer->normalize(form);
    if (form != token.content) token.normalized_form = std::move(form);
  }
  by_content_[token.content] = token.id;
  if (token.special) special_contents_.insert(token.content);
  by_id_[token.id] = std::move(token);
}

void AddedVocabulary::build_tries() {
  for (Trie* trie : {&raw_trie_, &normalized_trie_}) {
    trie->nodes.assign(1, Trie::Node{});
    trie->root.fill(-1);
  }
  for (const AddedToken* token : tokens()) {
    if (token->normalized) {
      const std::string& form =
          token->normalized_form.empty() ? token->content : token->normalized_form;
      normalized_trie_.add(form, token->id);
    } else {
      raw_trie_.add(token->content, token->id);
    }
  }
}

void AddedVocabulary::Trie::add(std::string_view pattern, int32_t id) {
  int32_t node = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const auto byte = static_cast<unsigned char>(pattern[i]);
    auto& children = nodes[static_cast<size_t>(node)].children;
    auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(byte, int32_t{-1}));
    if (it != children.end() && it->first == byte) {
      node = it->second;
      continue;
    }
    const auto child = static_cast<int32_t>(nodes.size());
    children.insert(it, {byte, child});
    if (node == 0) root[byte] = child;
    nodes.emplace_back();
    node = child;
  }
  if (nodes[static_cast<size_t>(node)].token < 0) nodes[static_cast<size_t>(node)].token = id;
}

std::pair<size_t, int32_t> AddedVocabulary::Trie::longest_at(std::string_view text,
                                                             size_t pos) const {
  std::pair<size_t, int32_t> best{0, -1};
  int32_t node = root[static_cast<unsigned char>(text[pos])];
  size_t i = pos + 1;
  while (node >= 0) {
    const Node& n = nodes[static_cast<size_t>(node)];
    if (n.token >= 0) best = {i - pos, n.token};
    if (i >= text.size() || n.children.empty()) break;
    const auto byte = static_cast<unsigned char>(text[i]);
    auto it =
        std::lower_bound(n.children.begin(), n.children.end(), std::make_pair(byte, int32_t{-1}));
    node = it != n.children.end() && it->first == byte ? it->second : -1;
    ++i;
  }
  return best;
}

void AddedVocabulary::extract(Pieces& pieces, const Trie& trie) const {
  if (trie.nodes.size() <= 1) return;
  split_each(pieces, [&](Piece& piece, Pieces& out) { split_one(piece, trie, out); });
}

// tokenizers' AddedVocabulary::find_matches: leftmost-longest matches, each filtered by
// single_word and widened by lstrip/rstrip; the text between them stays to be tokenized.
void AddedVocabulary::split_one(const Piece& piece, const Trie& trie, Pieces& out) const {
  const std::string_view text = piece.text;
  size_t start_offset = 0;
  auto emit = [&](size_t start, size_t stop, int32_t id) {
    if (stop <= start) return;
    Piece part;
    part.text = std::string(text.substr(start, stop - start));
    part.token_id = id;
    part.at_origin = piece.at_origin && start == 0;
    out.push_back(std::move(part));
  };
  for (size_t pos = 0; pos < text.size();) {
    auto [length, id] = trie.longest_at(text, pos);
    if (id < 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + length;
    pos = stop;
    const AddedToken& token = by_id_.at(id);
    if (token.single_word) {
      size_t unused = 0;
      const bool word_before = start > 0 && is_word_char(code_point_before(text, start, unused));
      size_t after = stop;
      const bool word_after =
          stop < text.size() && is_word_char(unicode::next_code_point(text, after));
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        size_t prev = 0;
        if (!unicode::is_white_space(code_point_before(text, new_start, prev))) break;
        new_start = prev;
      }
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        size_t next = stop;
        if (!unicode::is_white_space(unicode::next_code_point(text, next))) break;
        stop = next;
      }
    }
    if (start_offset < start) emit(start_offset, start, -1);
    emit(start, stop, id);
    start_offset = stop;
  }
  if (start_offset < text.size()) emit(start_offset, text.size(), -1);
}

const AddedToken* AddedVocabulary::find(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &it->second;
}

std::optional<int32_t> AddedVocabulary::token_to_id(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  if (it == by_content_.end()) return std::nullopt;
  return it->second;
}

bool AddedVocabulary::is_special_content(std::string_view text) const {
  return !special_contents_.empty() && special_contents_.count(std::string(text)) > 0;
}

std::vector<const AddedToken*> AddedVocabulary::tokens() const {
  std::vector<const AddedToken*> out;
  for (const auto& [id, token] : by_id_) out.push_back(&token);
  std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->id < b->id; });
  return out;
}

}  // namespace lathe::tok
