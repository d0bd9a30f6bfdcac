#include "export/gguf_tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "compressor/common/errors.h"

namespace lathe::gguf {
namespace {

constexpr int kControl = 3, kUserDefined = 4;  // llama.cpp's token types
const std::string kSpaceMark = "\xE2\x96\x81";  // "▁" U+2581

/// Byte offsets of the code points of valid UTF-8 `s` (plus s.size() at the end); nullopt when
/// `s` is not UTF-8. Python slices a token by these (str indices are code points).
std::optional<std::vector<size_t>> code_points(const std::string& s) {
  std::vector<size_t> at;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return std::nullopt;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return std::nullopt;
    }
    at.push_back(i);
    i += n;
  }
  at.push_back(s.size());
  return at;
}

/// The code point at byte `i` of valid UTF-8 `s`.
uint32_t code_point_at(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return c;
  const int n = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
  uint32_t cp = c & (0x7F >> n);
  for (int k = 1; k < n; ++k) cp = cp << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  return cp;
}

/// Python's str.isspace() for one code point (Unicode category Zs, or bidi class WS, B or S).
bool python_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/// Gemma files store a token of spaces as spaces; the vocabulary spells them "▁" (one per code
/// point), for any token that holds a space and nothing but whitespace.
std::string respelled(const std::string& token, const std::vector<size_t>& cps) {
  bool space = false;
  for (size_t k = 0; k + 1 < cps.size(); ++k) {
    const uint32_t cp = code_point_at(token, cps[k]);
    if (!python_space(cp)) return token;
    space = space || cp == 0x20;
  }
  if (!space) return token;
  std::string out;
  for (size_t k = 0; k + 1 < cps.size(); ++k) out += kSpaceMark;
  return out;
}

struct Vocabulary {
  std::vector<std::string> tokens;             ///< as respelled, by id
  std::vector<std::vector<size_t>> points;     ///< code point offsets of each
  std::unordered_map<std::string, int64_t> id;  ///< token → its last id (a later duplicate wins)
  std::vector<int64_t> first_order;            ///< ids of each distinct token's first appearance
};

Vocabulary read_vocabulary(const Header& h, const std::string& label) {
  const Value* tokens = h.get("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != ValueType::kArray || tokens->element_type != ValueType::kString) {
    throw DataError(label, "tokenizer.ggml.tokens", "expected an array of strings");
  }
  Vocabulary v;
  const auto& list = tokens->value;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string& raw = list[i].get_ref<const std::string&>();
    std::optional<std::vector<size_t>> cps = code_points(raw);
    if (!cps) throw DataError(label, "tokenizer.ggml.tokens", "token " + std::to_string(i) + " is not UTF-8");
    std::string token = respelled(raw, *cps);
    if (token != raw) cps = code_points(token);
    if (!v.id.count(token)) v.first_order.push_back(static_cast<int64_t>(i));
    v.id[token] = static_cast<int64_t>(i);
    v.tokens.push_back(std::move(token));
    v.points.push_back(std::move(*cps));
  }
  return v;
}

/// transformers' generate_merges(vocab, scores = −position): for each distinct token in order of
/// first appearance, every split into two vocabulary tokens (ordered by their ids), then all of
/// them stably sorted best first by (score, left length, right length), lengths in code points.
std::vector<std::pair<std::string, std::string>> derive_merges(const Vocabulary& v) {
  struct Merge {
    int64_t score;
    size_t left_len, right_len;
    int64_t left_id, right_id;
  };
  std::vector<Merge> merges;
  for (const int64_t first : v.first_order) {
    const std::string& token = v.tokens[first];
    const int64_t score = -v.id.at(token);
    const std::vector<size_t>& cps = v.points[first];
    const size_t n = cps.size() - 1;
    std::vector<Merge> local;
    for (size_t k = 1; k < n; ++k) {
      auto l = v.id.find(token.substr(0, cps[k]));
      if (l == v.id.end()) continue;
      auto r = v.id.find(token.substr(cps[k]));
      if (r == v.id.end()) continue;
      local.push_back({score, k, n - k, l->second, r->second});
    }
    std::sort(local.begin(), local.end(),
              [](const Merge& a, const Merge& b) { return std::tie(a.left_id, a.right_id) < std::tie(b.left_id, b.right_id); });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    return std::tie(a.score, a.left_len, a.right_len) > std::tie(b.score, b.left_len, b.right_len);
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (const auto& m : merges) out.emplace_back(v.tokens[m.left_id], v.tokens[m.right_id]);
  return out;
}

int64_t token_id(const Header& h, const std::string& key, int64_t fallback, size_t vocab, const std::string& label) {
  const Value* v = h.get(key);
  if (!v) return fallback;
  if (!v->value.is_number_integer() || v->value.get<int64_t>() < 0 || v->value.get<uint64_t>() >= vocab) {
    throw DataError(label, key, "expected a token id below " + std::to_string(vocab));
  }
  return v->value.get<int64_t>();
}

bool flag(const Header& h, const std::string& key, bool fallback, const std::string& label) {
  const Value* v = h.get(key);
  if (!v) return fallback;
  if (v->type != ValueType::kBool) throw DataError(label, key, std::string("expected a bool, found ") + value_type_name(v->type));
  return v->value.get<bool>();
}

nlohmann::ordered_json added_token(int64_t id, const std::string& content, bool special) {
  return {{"id", id},           {"content", content},     {"single_word", false}, {"lstrip", false},
          {"rstrip", false},    {"normalized", false},    {"special", special}};
}

/// The added tokens transformers registers: the special tokens by name, control tokens as
/// special, user-defined ones that are in the vocabulary as plain; sorted by id.
nlohmann::ordered_json added_tokens(const Header& h, const Vocabulary& v, const std::vector<std::string>& specials,
                                    const std::string& label) {
  std::map<int64_t, std::pair<std::string, bool>> added;
  for (const auto& s : specials) {
    auto it = v.id.find(s);
    if (it != v.id.end()) added.emplace(it->second, std::make_pair(s, true));
  }
  const Value* types = h.get("tokenizer.ggml.token_type");
  if (!types) return nlohmann::ordered_json::array();
  if (types->type != ValueType::kArray || !types->value.is_array() || types->value.size() != v.tokens.size()) {
    throw DataError(label, "tokenizer.ggml.token_type", "expected one integer per token");
  }
  const auto& raw = h.get("tokenizer.ggml.tokens")->value;
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    const int64_t type = types->value[i].is_number_integer() ? types->value[i].get<int64_t>() : -1;
    const std::string& original = raw[i].get_ref<const std::string&>();  // transformers adds the file's spelling
    auto it = v.id.find(original);
    if (type == kControl && it != v.id.end()) added.emplace(it->second, std::make_pair(original, true));
    if (type == kUserDefined && it != v.id.end()) added.emplace(it->second, std::make_pair(original, false));
  }
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& [id, t] : added) out.push_back(added_token(id, t.first, t.second));
  return out;
}

nlohmann::ordered_json post_processor(const std::string& bos, int64_t bos_id, bool add_bos, const std::string& eos,
                                      int64_t eos_id, bool add_eos) {
  auto special = [](const std::string& t, int type) { return nlohmann::ordered_json{{"SpecialToken", {{"id", t}, {"type_id", type}}}}; };
  auto sequence = [](const char* s, int type) { return nlohmann::ordered_json{{"Sequence", {{"id", s}, {"type_id", type}}}}; };
  nlohmann::ordered_json single = nlohmann::ordered_json::array(), pair = nlohmann::ordered_json::array();
  nlohmann::ordered_json tokens = nlohmann::ordered_json::object();
  if (add_bos) single.push_back(special(bos, 0));
  single.push_back(sequence("A", 0));
  if (add_eos) single.push_back(special(eos, 0));
  pair = single;
  if (add_bos) pair.push_back(special(bos, 1));
  pair.push_back(sequence("B", 1));
  if (add_eos) pair.push_back(special(eos, 1));
  if (add_bos) tokens[bos] = {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}};
  if (add_eos) tokens[eos] = {{"id", eos}, {"ids", {eos_id}}, {"tokens", {eos}}};
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", tokens}};
}

}  // namespace

TokenizerFiles hf_tokenizer(const Header& h, const std::string& label) {
  const Value* model = h.get("tokenizer.ggml.model");
  const Value* arch = h.get("general.architecture");
  const std::string model_name = model && model->type == ValueType::kString ? model->value.get<std::string>() : "";
  const std::string arch_name = arch && arch->type == ValueType::kString ? arch->value.get<std::string>() : "";
  if (model_name != "llama" || arch_name != "gemma3") {
    throw UnsupportedError(label, "tokenizer.ggml.model",
                           "lathe builds Gemma 3's tokenizer (\"llama\" with general.architecture gemma3) from GGUF metadata, "
                           "not \"" + model_name + "\" of " + (arch_name.empty() ? "an unnamed architecture" : arch_name));
  }
  const Vocabulary v = read_vocabulary(h, label);
  const size_t n = v.tokens.size();
  const std::string pad = v.tokens[token_id(h, "tokenizer.ggml.padding_token_id", 0, n, label)];
  const int64_t eos_id = token_id(h, "tokenizer.ggml.eos_token_id", 1, n, label);
  const int64_t bos_id = token_id(h, "tokenizer.ggml.bos_token_id", 2, n, label);
  const std::string unk = v.tokens[token_id(h, "tokenizer.ggml.unknown_token_id", 3, n, label)];
  const std::string eos = v.tokens[eos_id], bos = v.tokens[bos_id], mask = "<mask>";
  const bool add_bos = flag(h, "tokenizer.ggml.add_bos_token", true, label);
  const bool add_eos = flag(h, "tokenizer.ggml.add_eos_token", false, label);

  // In id order, as tokenizers writes it. Appended to the ordered map's vector directly: its
  // operator[] searches linearly, which over 262,144 tokens takes a minute.
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  auto& entries = static_cast<std::vector<std::pair<const std::string, nlohmann::ordered_json>>&>(
      vocab.get_ref<nlohmann::ordered_json::object_t&>());
  entries.reserve(v.id.size());
  for (size_t i = 0; i < n; ++i) {
    if (v.id.at(v.tokens[i]) == static_cast<int64_t>(i)) entries.emplace_back(v.tokens[i], i);  // a duplicate keeps its last id
  }
  nlohmann::ordered_json merges = nlohmann::ordered_json::array();
  for (auto& [l, r] : derive_merges(v)) merges.push_back({l, r});

  TokenizerFiles files;
  files.tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added_tokens(h, v, {pad, eos, bos, unk, mask}, label)},
      {"normalizer", {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpaceMark}}},
      {"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "MergedWithPrevious"}, {"invert", false}}},
      {"post_processor", post_processor(bos, bos_id, add_bos, eos, eos_id, add_eos)},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", kSpaceMark}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}}}}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", unk},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}},
  };
  files.config = {{"tokenizer_class", "GemmaTokenizer"}, {"bos_token", bos}, {"eos_token", eos}, {"unk_token", unk},
                  {"pad_token", pad},  {"mask_token", mask}, {"add_bos_token", add_bos}, {"add_eos_token", add_eos}};
  return files;
}

}  // namespace lathe::gguf
