#include "export/gguf_tokenizer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "calibrate/tokenizer/byte_level.h"
#include "compressor/common/errors.h"

namespace lathe::gguf {
namespace {

constexpr int kControl = 3, kUserDefined = 4;   // llama.cpp's token types
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
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
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

/// The byte-level (GPT-2) spelling of `token`: unchanged when every code point is in the byte
/// alphabet, else each byte of its UTF-8 spelled as a character (transformers'
/// byte_level_tokenizer).
std::string byte_level_spelling(const std::string& token, const std::vector<size_t>& cps) {
  for (size_t k = 0; k + 1 < cps.size(); ++k) {
    if (tok::byte_level_byte(code_point_at(token, cps[k])) < 0) return tok::to_byte_level(token);
  }
  return token;
}

enum class Spelling { kAsStored, kGemmaSpaces, kByteLevel };

struct Vocabulary {
  std::vector<std::string> tokens;              ///< as respelled, by id
  std::vector<std::vector<size_t>> points;      ///< code point offsets of each
  std::unordered_map<std::string, int64_t> id;  ///< token → its last id (a later duplicate wins)
  std::vector<int64_t> first_order;             ///< ids of each distinct token's first appearance
};

Vocabulary read_vocabulary(const Header& h, Spelling spelling, const std::string& label) {
  const Value* tokens = h.get("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != ValueType::kArray || tokens->element_type != ValueType::kString) {
    throw DataError(label, "tokenizer.ggml.tokens", "expected an array of strings");
  }
  Vocabulary v;
  const auto& list = tokens->value;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string& raw = list[i].get_ref<const std::string&>();
    std::optional<std::vector<size_t>> cps = code_points(raw);
    if (!cps)
      throw DataError(label, "tokenizer.ggml.tokens",
                      "token " + std::to_string(i) + " is not UTF-8");
    std::string token = spelling == Spelling::kGemmaSpaces ? respelled(raw, *cps)
                        : spelling == Spelling::kByteLevel ? byte_level_spelling(raw, *cps)
                                                           : raw;
    if (token != raw) cps = code_points(token);
    if (!v.id.count(token)) v.first_order.push_back(static_cast<int64_t>(i));
    v.id[token] = static_cast<int64_t>(i);
    v.tokens.push_back(std::move(token));
    v.points.push_back(std::move(*cps));
  }
  if (v.tokens.empty())
    throw DataError(label, "tokenizer.ggml.tokens", "expected at least one token");
  return v;
}

/// transformers' generate_merges(vocab, vocab_scores): for each distinct token in order of first
/// appearance, every split into two vocabulary tokens (ordered by their ids), then all of them
/// stably sorted best first by (score of the merged token, left length, right length), lengths in
/// code points. `score[id]` is the score of token `id`; a duplicate token takes its last one.
std::vector<std::pair<std::string, std::string>> derive_merges(const Vocabulary& v,
                                                               const std::vector<double>& score) {
  struct Merge {
    double score;
    size_t left_len, right_len;
    int64_t left_id, right_id;
  };
  std::vector<Merge> merges;
  for (const int64_t first : v.first_order) {
    const std::string& token = v.tokens[first];
    const double s = score[v.id.at(token)];
    const std::vector<size_t>& cps = v.points[first];
    const size_t n = cps.size() - 1;
    std::vector<Merge> local;
    for (size_t k = 1; k < n; ++k) {
      auto l = v.id.find(token.substr(0, cps[k]));
      if (l == v.id.end()) continue;
      auto r = v.id.find(token.substr(cps[k]));
      if (r == v.id.end()) continue;
      local.push_back({s, k, n - k, l->second, r->second});
    }
    std::sort(local.begin(), local.end(), [](const Merge& a, const Merge& b) {
      return std::tie(a.left_id, a.right_id) < std::tie(b.left_id, b.right_id);
    });
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

/// tokenizer.ggml.scores, one finite number per token.
std::vector<double> file_scores(const Header& h, size_t n, const std::string& label) {
  const Value* scores = h.get("tokenizer.ggml.scores");
  if (!scores || scores->type != ValueType::kArray || !scores->value.is_array() ||
      scores->value.size() != n) {
    throw DataError(label, "tokenizer.ggml.scores",
                    "expected one number per token (the merges are derived from them)");
  }
  std::vector<double> out;
  for (const auto& s : scores->value) {
    if (!s.is_number() || !std::isfinite(s.get<double>())) {
      throw DataError(label, "tokenizer.ggml.scores", "expected finite numbers, found " + s.dump());
    }
    out.push_back(s.get<double>());
  }
  return out;
}

/// tokenizer.ggml.merges: strings "left right", both sides tokens of the vocabulary.
std::vector<std::pair<std::string, std::string>> file_merges(const Header& h, const Vocabulary& v,
                                                             const std::string& label) {
  const Value* merges = h.get("tokenizer.ggml.merges");
  if (!merges)
    throw DataError(label, "tokenizer.ggml.merges",
                    "missing: a byte-level BPE vocabulary needs its merges");
  if (merges->type != ValueType::kArray || merges->element_type != ValueType::kString) {
    throw DataError(label, "tokenizer.ggml.merges", "expected an array of strings");
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (size_t i = 0; i < merges->value.size(); ++i) {
    const std::string& m = merges->value[i].get_ref<const std::string&>();
    const size_t space = m.find(' ');
    const std::string where = "merge " + std::to_string(i) + " \"" + m + "\"";
    if (space == std::string::npos || m.find(' ', space + 1) != std::string::npos) {
      throw DataError(label, "tokenizer.ggml.merges",
                      where + ": expected two tokens separated by one space");
    }
    out.emplace_back(m.substr(0, space), m.substr(space + 1));
    if (!v.id.count(out.back().first) || !v.id.count(out.back().second)) {
      throw DataError(label, "tokenizer.ggml.merges", where + ": a side is not in the vocabulary");
    }
  }
  return out;
}

std::optional<int64_t> token_id(const Header& h, const std::string& key, size_t vocab,
                                const std::string& label) {
  const Value* v = h.get(key);
  if (!v) return std::nullopt;
  if (!v->value.is_number_integer() || v->value.get<int64_t>() < 0 ||
      v->value.get<uint64_t>() >= vocab) {
    throw DataError(label, key, "expected a token id below " + std::to_string(vocab));
  }
  return v->value.get<int64_t>();
}

bool flag(const Header& h, const std::string& key, bool fallback, const std::string& label) {
  const Value* v = h.get(key);
  if (!v) return fallback;
  if (v->type != ValueType::kBool)
    throw DataError(label, key, std::string("expected a bool, found ") + value_type_name(v->type));
  return v->value.get<bool>();
}

nlohmann::ordered_json added_token(int64_t id, const std::string& content, bool special) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", special}};
}

/// The added tokens transformers registers: the special tokens by name, control tokens as
/// special, user-defined ones as plain, each only when the vocabulary has it under the file's
/// spelling (a byte-level control token outside the byte alphabet is a llama.cpp mislabel that
/// transformers skips); sorted by id.
nlohmann::ordered_json added_tokens(const Header& h, const Vocabulary& v,
                                    const std::vector<std::string>& specials,
                                    const std::string& label) {
  std::map<int64_t, std::pair<std::string, bool>> added;
  for (const auto& s : specials) {
    auto it = v.id.find(s);
    if (it != v.id.end()) added.emplace(it->second, std::make_pair(s, true));
  }
  const Value* types = h.get("tokenizer.ggml.token_type");
  if (!types) return nlohmann::ordered_json::array();
  if (types->type != ValueType::kArray || !types->value.is_array() ||
      types->value.size() != v.tokens.size()) {
    throw DataError(label, "tokenizer.ggml.token_type", "expected one integer per token");
  }
  const auto& raw = h.get("tokenizer.ggml.tokens")->value;
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    const int64_t type = types->value[i].is_number_integer() ? types->value[i].get<int64_t>() : -1;
    const std::string& original =
        raw[i].get_ref<const std::string&>();  // transformers adds the file's spelling
    auto it = v.id.find(original);
    if (type == kControl && it != v.id.end())
      added.emplace(it->second, std::make_pair(original, true));
    if (type == kUserDefined && it != v.id.end())
      added.emplace(it->second, std::make_pair(original, false));
  }
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& [id, t] : added) out.push_back(added_token(id, t.first, t.second));
  return out;
}

/// The special tokens the file names by id (tokenizer.ggml.{bos,eos,unknown,padding}_token_id).
struct Specials {
  std::optional<int64_t> bos, eos, unk, pad;
  bool add_bos = false, add_eos = false;
};

Specials read_specials(const Header& h, size_t n, bool add_bos_default, const std::string& label) {
  Specials s;
  s.bos = token_id(h, "tokenizer.ggml.bos_token_id", n, label);
  s.eos = token_id(h, "tokenizer.ggml.eos_token_id", n, label);
  s.unk = token_id(h, "tokenizer.ggml.unknown_token_id", n, label);
  s.pad = token_id(h, "tokenizer.ggml.padding_token_id", n, label);
  s.add_bos = flag(h, "tokenizer.ggml.add_bos_token", add_bos_default, label);
  s.add_eos = flag(h, "tokenizer.ggml.add_eos_token", false, label);
  return s;
}

/// A BOS / EOS the post-processor adds must exist.
void require_added_specials(const Specials& s, const std::string& label) {
  if (s.add_bos && !s.bos)
    throw DataError(label, "tokenizer.ggml.add_bos_token", "true, but the file names no BOS token");
  if (s.add_eos && !s.eos)
    throw DataError(label, "tokenizer.ggml.add_eos_token", "true, but the file names no EOS token");
}

/// transformers' post-processor: BOS / EOS around each sequence as the file's add_*_token say.
nlohmann::ordered_json post_processor(const Vocabulary& v, const Specials& s) {
  auto special = [](const std::string& t, int type) {
    return nlohmann::ordered_json{{"SpecialToken", {{"id", t}, {"type_id", type}}}};
  };
  auto sequence = [](const char* name, int type) {
    return nlohmann::ordered_json{{"Sequence", {{"id", name}, {"type_id", type}}}};
  };
  const std::string bos = s.bos ? v.tokens[*s.bos] : "", eos = s.eos ? v.tokens[*s.eos] : "";
  nlohmann::ordered_json single = nlohmann::ordered_json::array(), pair;
  nlohmann::ordered_json tokens = nlohmann::ordered_json::object();
  if (s.add_bos) single.push_back(special(bos, 0));
  single.push_back(sequence("A", 0));
  if (s.add_eos) single.push_back(special(eos, 0));
  pair = single;
  if (s.add_bos) pair.push_back(special(bos, 1));
  pair.push_back(sequence("B", 1));
  if (s.add_eos) pair.push_back(special(eos, 1));
  if (s.add_bos) tokens[bos] = {{"id", bos}, {"ids", {*s.bos}}, {"tokens", {bos}}};
  if (s.add_eos) tokens[eos] = {{"id", eos}, {"ids", {*s.eos}}, {"tokens", {eos}}};
  return {{"type", "TemplateProcessing"},
          {"single", single},
          {"pair", pair},
          {"special_tokens", tokens}};
}

/// The vocabulary in id order, as tokenizers writes it; a duplicate keeps its last id. Appended to
/// the ordered map's vector directly: its operator[] searches linearly, which over 262,144 tokens
/// takes a minute.
nlohmann::ordered_json vocab_json(const Vocabulary& v) {
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  auto& entries = static_cast<std::vector<std::pair<const std::string, nlohmann::ordered_json>>&>(
      vocab.get_ref<nlohmann::ordered_json::object_t&>());
  entries.reserve(v.id.size());
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    if (v.id.at(v.tokens[i]) == static_cast<int64_t>(i)) entries.emplace_back(v.tokens[i], i);
  }
  return vocab;
}

nlohmann::ordered_json bpe_model(const Vocabulary& v,
                                 const std::vector<std::pair<std::string, std::string>>& merges,
                                 const nlohmann::ordered_json& unk, bool byte_level) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const auto& [l, r] : merges) list.push_back({l, r});
  const nlohmann::ordered_json affix =
      byte_level ? nlohmann::ordered_json("") : nlohmann::ordered_json(nullptr);
  return {{"type", "BPE"},
          {"dropout", nullptr},
          {"unk_token", unk},
          {"continuing_subword_prefix", affix},
          {"end_of_word_suffix", affix},
          {"fuse_unk", !byte_level},
          {"byte_fallback", !byte_level},
          {"ignore_merges", false},
          {"vocab", vocab_json(v)},
          {"merges", std::move(list)}};
}

nlohmann::ordered_json tokenizer_json(nlohmann::ordered_json added,
                                      nlohmann::ordered_json normalizer,
                                      nlohmann::ordered_json pre_tokenizer,
                                      nlohmann::ordered_json post, nlohmann::ordered_json decoder,
                                      nlohmann::ordered_json model) {
  return {{"version", "1.0"},       {"truncation", nullptr},    {"padding", nullptr},
          {"added_tokens", added},  {"normalizer", normalizer}, {"pre_tokenizer", pre_tokenizer},
          {"post_processor", post}, {"decoder", decoder},       {"model", model}};
}

/// tokenizer_config.json: the class stock transformers should load tokenizer.json with, and the
/// special tokens by content (null ones left out).
nlohmann::ordered_json tokenizer_config(const char* tokenizer_class, const Vocabulary& v,
                                        const Specials& s) {
  nlohmann::ordered_json c = {{"tokenizer_class", tokenizer_class}};
  const std::pair<const char*, std::optional<int64_t>> named[] = {
      {"bos_token", s.bos}, {"eos_token", s.eos}, {"unk_token", s.unk}, {"pad_token", s.pad}};
  for (const auto& [key, id] : named) {
    if (id) c[key] = v.tokens[*id];
  }
  c["add_bos_token"] = s.add_bos;
  c["add_eos_token"] = s.add_eos;
  return c;
}

nlohmann::ordered_json replace(const std::string& from, const std::string& to) {
  return {{"type", "Replace"}, {"pattern", {{"String", from}}}, {"content", to}};
}

/// Gemma (transformers' gemma_tokenizer + GemmaTokenizer): tokens of spaces respelled with "▁",
/// merges derived best first by position in the file, spaces replaced by "▁" and split after.
TokenizerFiles gemma_tokenizer(const Header& h, const std::string& label) {
  const Vocabulary v = read_vocabulary(h, Spelling::kGemmaSpaces, label);
  const size_t n = v.tokens.size();
  Specials s = read_specials(h, n, true, label);
  // GemmaTokenizer's special tokens where the file names none.
  const std::string pad = v.tokens[s.pad.value_or(0)], eos = v.tokens[s.eos.value_or(1)];
  const std::string bos = v.tokens[s.bos.value_or(2)], unk = v.tokens[s.unk.value_or(3)],
                    mask = "<mask>";
  s.bos = s.bos.value_or(2);
  s.eos = s.eos.value_or(1);
  std::vector<double> position(n);
  for (size_t i = 0; i < n; ++i) position[i] = -static_cast<double>(i);
  TokenizerFiles files;
  files.tokenizer = tokenizer_json(
      added_tokens(h, v, {pad, eos, bos, unk, mask}, label), replace(" ", kSpaceMark),
      {{"type", "Split"},
       {"pattern", {{"String", " "}}},
       {"behavior", "MergedWithPrevious"},
       {"invert", false}},
      post_processor(v, s),
      {{"type", "Sequence"},
       {"decoders", {replace(kSpaceMark, " "), {{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}},
      bpe_model(v, derive_merges(v, position), unk, false));
  files.config = {{"tokenizer_class", "GemmaTokenizer"},
                  {"bos_token", bos},
                  {"eos_token", eos},
                  {"unk_token", unk},
                  {"pad_token", pad},
                  {"mask_token", mask},
                  {"add_bos_token", s.add_bos},
                  {"add_eos_token", s.add_eos}};
  return files;
}

/// Llama's sentencepiece BPE (transformers' sentencepiece_tokenizer + LlamaTokenizer): the file's
/// merges, or merges derived best first by tokenizer.ggml.scores; "▁" prepended to the first
/// piece (Metaspace, prepend_scheme first); byte fallback.
TokenizerFiles llama_tokenizer(const Header& h, const std::string& label) {
  const Vocabulary v = read_vocabulary(h, Spelling::kAsStored, label);
  const Specials s = read_specials(h, v.tokens.size(), true, label);
  require_added_specials(s, label);
  const auto merges = h.get("tokenizer.ggml.merges")
                          ? file_merges(h, v, label)
                          : derive_merges(v, file_scores(h, v.tokens.size(), label));
  std::vector<std::string> specials = {"<unk>", "<s>", "</s>"};  // LlamaTokenizer's defaults
  for (const auto& id : {s.bos, s.eos, s.unk, s.pad}) {
    if (id) specials.push_back(v.tokens[*id]);
  }
  TokenizerFiles files;
  files.tokenizer =
      tokenizer_json(added_tokens(h, v, specials, label), nullptr,
                     {{"type", "Metaspace"},
                      {"replacement", kSpaceMark},
                      {"prepend_scheme", "first"},
                      {"split", false}},
                     post_processor(v, s),
                     {{"type", "Sequence"},
                      {"decoders",
                       {replace(kSpaceMark, " "),
                        {{"type", "ByteFallback"}},
                        {{"type", "Fuse"}},
                        {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}},
                     bpe_model(v, merges, nullptr, false));
  files.config = tokenizer_config("TokenizersBackend", v, s);
  return files;
}

// Split patterns transformers puts before ByteLevel for a tokenizer.ggml.pre
// (gguf_tokenizer_mapping.py GGUF_PRE_TOKENIZER_SPLITS), the same as llama.cpp's for that name.
const char* const kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen35Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kTekkenSplit =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+)"
    R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*)"
    R"(|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kGpt4oSplit =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

const std::map<std::string, const char*>& pre_tokenizer_splits() {
  static const std::map<std::string, const char*> splits = {
      {"llama3", kLlama3Split},       {"llama-v3", kLlama3Split},
      {"llama-bpe", kLlama3Split},    {"falcon3", kLlama3Split},
      {"falcon-h1", kLlama3Split},    {"pixtral", kLlama3Split},
      {"midm-2.0", kLlama3Split},     {"lfm2", kLlama3Split},
      {"jina-v5-nano", kLlama3Split}, {"dbrx", kLlama3Split},
      {"smaug-bpe", kLlama3Split},    {"tekken", kTekkenSplit},
      {"qwen2", kQwen2Split},         {"deepseek-r1-qwen", kQwen2Split},
      {"kormo", kQwen2Split},         {"f2llmv2", kQwen2Split},
      {"megrez", kQwen2Split},        {"qwen35", kQwen35Split},
      {"gpt-4o", kGpt4oSplit},        {"llama4", kGpt4oSplit},
      {"kanana2", kGpt4oSplit},       {"talkie", kGpt4oSplit},
      {"minimax-m2", kGpt4oSplit},
  };
  return splits;
}

/// The pre-tokenizer of tokenizer.ggml.pre: a known split then bytes to characters, or GPT-2's
/// own regex for "gpt2". transformers falls back to GPT-2's regex for any other name, which is not
/// what llama.cpp splits with for it: refused.
nlohmann::ordered_json byte_level_pre_tokenizer(const Header& h, const std::string& label) {
  const Value* pre = h.get("tokenizer.ggml.pre");
  if (!pre)
    throw DataError(label, "tokenizer.ggml.pre",
                    "missing: a byte-level BPE vocabulary needs its pre-tokenizer");
  if (pre->type != ValueType::kString) {
    throw DataError(label, "tokenizer.ggml.pre",
                    std::string("expected a string, found ") + value_type_name(pre->type));
  }
  const std::string name = pre->value.get<std::string>();
  nlohmann::ordered_json byte_level = {{"type", "ByteLevel"},
                                       {"add_prefix_space", false},
                                       {"trim_offsets", true},
                                       {"use_regex", name == "gpt2"}};
  if (name == "gpt2") return byte_level;
  const auto& splits = pre_tokenizer_splits();
  auto it = splits.find(name);
  if (it == splits.end()) {
    std::string known = "gpt2";
    for (const auto& [k, unused] : splits) known += ", " + k;
    throw UnsupportedError(label, "tokenizer.ggml.pre",
                           "lathe does not know how llama.cpp's \"" + name +
                               "\" pre-tokenizer splits text (it knows: " + known + ")");
  }
  nlohmann::ordered_json split = {{"type", "Split"},
                                  {"pattern", {{"Regex", it->second}}},
                                  {"behavior", "Isolated"},
                                  {"invert", false}};
  return {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}};
}

/// Byte-level BPE (transformers' byte_level_tokenizer + GPT2Tokenizer): tokens outside the byte
/// alphabet respelled byte by byte, the file's merges, the split of tokenizer.ggml.pre.
TokenizerFiles byte_level_tokenizer(const Header& h, const std::string& label) {
  const nlohmann::ordered_json pre_tokenizer = byte_level_pre_tokenizer(h, label);
  const Vocabulary v = read_vocabulary(h, Spelling::kByteLevel, label);
  const Specials s = read_specials(h, v.tokens.size(), false, label);
  require_added_specials(s, label);
  const auto merges = file_merges(h, v, label);
  std::vector<std::string> specials;
  for (const auto& id : {s.bos, s.eos, s.unk, s.pad}) {
    if (id) specials.push_back(v.tokens[*id]);
  }
  const nlohmann::ordered_json decoder = {{"type", "ByteLevel"},
                                          {"add_prefix_space", true},
                                          {"trim_offsets", true},
                                          {"use_regex", true}};
  TokenizerFiles files;
  files.tokenizer =
      tokenizer_json(added_tokens(h, v, specials, label), nullptr, pre_tokenizer,
                     post_processor(v, s), decoder, bpe_model(v, merges, nullptr, true));
  files.config = tokenizer_config("TokenizersBackend", v, s);
  return files;
}

}  // namespace

TokenizerFiles hf_tokenizer(const Header& h, const std::string& label) {
  const Value* model = h.get("tokenizer.ggml.model");
  const Value* arch = h.get("general.architecture");
  if (!model || model->type != ValueType::kString) {
    throw DataError(label, "tokenizer.ggml.model",
                    "expected a string naming the tokenizer (llama, gpt2, ...)");
  }
  const std::string model_name = model->value.get<std::string>();
  const std::string arch_name =
      arch && arch->type == ValueType::kString ? arch->value.get<std::string>() : "";
  if (model_name == "gpt2") return byte_level_tokenizer(h, label);
  if (model_name == "llama" &&
      (arch_name == "gemma" || arch_name == "gemma2" || arch_name == "gemma3")) {
    return gemma_tokenizer(h, label);
  }
  // transformers gives phi3's sentencepiece vocabulary a tokenizer of its own, which lathe does not
  // build.
  if (model_name == "llama" && arch_name != "phi3") return llama_tokenizer(h, label);
  throw UnsupportedError(label, "tokenizer.ggml.model",
                         "lathe builds the \"llama\" (sentencepiece BPE) and \"gpt2\" (byte-level "
                         "BPE) tokenizers from "
                         "GGUF metadata, not \"" +
                             model_name + "\" of " +
                             (arch_name.empty() ? "an unnamed architecture" : arch_name));
}

}  // namespace lathe::gguf
