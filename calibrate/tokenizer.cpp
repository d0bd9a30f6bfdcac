#include "calibrate/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "calibrate/tokenizer/added_vocabulary.h"
#include "calibrate/tokenizer/bpe.h"
#include "calibrate/tokenizer/decoders.h"
#include "calibrate/tokenizer/json_reader.h"
#include "calibrate/tokenizer/normalizers.h"
#include "calibrate/tokenizer/post_processors.h"
#include "calibrate/tokenizer/pre_tokenizers.h"
#include "calibrate/tokenizer/unicode.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"

namespace lathe {
namespace tok {

/// Everything a loaded tokenizer.json holds.
struct TokenizerPipeline {
  std::string source;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;
  AddedVocabulary added;
  std::optional<int32_t> bos, eos, pad;
  std::string config_path;  // tokenizer_config.json (from_model_dir), for add_bos_token's errors
  nlohmann::json add_bos_token;  // its value as found (null: absent); checked by adds_bos()
};

}  // namespace tok

namespace {

bool is_directory(const std::string& path) {
  std::error_code ignored;
  return std::filesystem::is_directory(path, ignored);
}

// bos_token and friends: a string, an AddedToken object {"content": ...}, or null.
std::optional<int32_t> special_from_config(const tok::JsonReader& config, const char* key,
                                           const tok::TokenizerPipeline& pipeline) {
  auto field = config.find(key);
  if (!field) return std::nullopt;
  const std::string name =
      field->value().is_object() ? field->string_at("content") : field->as_string();
  if (auto id = pipeline.added.token_to_id(name)) return id;
  if (auto id = pipeline.model->token_to_id(name)) return id;
  field->fail("token '" + name + "' is neither an added token nor in the vocab of tokenizer.json");
}

std::shared_ptr<tok::TokenizerPipeline> load_pipeline(std::string_view json_text,
                                                      const std::string& where) {
  const nlohmann::json json = parse_json_strict(json_text, where, "");
  const tok::JsonReader root(json, where, "");
  if (!json.is_object()) root.fail("expected a JSON object (a tokenizers tokenizer.json)");
  if (root.has("version") && root.string_at("version") != "1.0") {
    root.at("version").unsupported("unknown tokenizer.json version '" + root.string_at("version") +
                                   "' (expected 1.0)");
  }
  auto pipeline = std::make_shared<tok::TokenizerPipeline>();
  pipeline->source = where;
  pipeline->model = std::make_unique<tok::BpeModel>(root.at("model"));
  if (auto n = root.find("normalizer")) pipeline->normalizer = tok::parse_normalizer(*n);
  if (auto p = root.find("pre_tokenizer")) pipeline->pre_tokenizer = tok::parse_pre_tokenizer(*p);
  if (auto p = root.find("post_processor"))
    pipeline->post_processor = tok::parse_post_processor(*p);
  if (auto d = root.find("decoder")) pipeline->decoder = tok::parse_decoder(*d);
  // Added tokens come last: a normalized one is matched in its normalised form.
  if (auto added = root.find("added_tokens")) {
    pipeline->added = tok::AddedVocabulary(*added, *pipeline->model, pipeline->normalizer.get());
  }
  return pipeline;
}

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<const tok::TokenizerPipeline> pipeline)
    : pipeline_(std::move(pipeline)) {}

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& where) {
  return Tokenizer(load_pipeline(json_text, where));
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  if (is_directory(path)) return from_model_dir(path);
  return from_json(read_file(path), path);
}

Tokenizer Tokenizer::from_model_dir(const std::string& dir) {
  const std::string path = dir + "/tokenizer.json";
  auto pipeline = load_pipeline(read_file(path), path);
  const std::string config_path = dir + "/tokenizer_config.json";
  if (std::ifstream(config_path)) {
    const nlohmann::json config = parse_json_strict(read_file(config_path), config_path, "");
    const tok::JsonReader root(config, config_path, "");
    if (!config.is_object()) root.fail("expected a JSON object");
    pipeline->bos = special_from_config(root, "bos_token", *pipeline);
    pipeline->eos = special_from_config(root, "eos_token", *pipeline);
    pipeline->pad = special_from_config(root, "pad_token", *pipeline);
    pipeline->config_path = config_path;
    if (auto add_bos = root.find("add_bos_token")) pipeline->add_bos_token = add_bos->value();
  }
  return Tokenizer(std::move(pipeline));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const size_t bad = unicode::find_invalid_utf8(text);
  if (bad != std::string_view::npos) {
    char byte[8];
    std::snprintf(byte, sizeof(byte), "0x%02X", static_cast<unsigned char>(text[bad]));
    throw DataError(
        "input text", "byte " + std::to_string(bad),
        std::string("invalid UTF-8 (byte ") + byte + " does not start a valid sequence)");
  }
  const tok::TokenizerPipeline& p = *pipeline_;
  tok::Pieces pieces;
  if (!text.empty()) pieces.push_back({std::string(text), -1, true});
  p.added.extract_raw(pieces);
  if (p.normalizer) {
    for (tok::Piece& piece : pieces) {
      if (piece.token_id < 0) p.normalizer->normalize(piece.text);
    }
    pieces.erase(std::remove_if(pieces.begin(), pieces.end(),
                                [](const tok::Piece& piece) { return piece.text.empty(); }),
                 pieces.end());
  }
  p.added.extract_normalized(pieces);
  if (p.pre_tokenizer) p.pre_tokenizer->pre_tokenize(pieces);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const tok::Piece& piece : pieces) {
    if (piece.token_id >= 0) {
      ids.push_back(piece.token_id);
    } else {
      p.model->tokenize(piece.text, ids);
    }
  }
  if (p.post_processor) p.post_processor->process(ids, add_special_tokens);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const tok::TokenizerPipeline& p = *pipeline_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* text = nullptr;
    if (const tok::AddedToken* added = p.added.find(id)) {
      // A normalized token decodes from its normalised form (tokenizers' simple_id_to_token).
      text = added->normalized_form.empty() ? &added->content : &added->normalized_form;
    } else {
      text = p.model->id_to_token(id);
    }
    if (text == nullptr) {
      throw ConfigError("decode", "id " + std::to_string(id),
                        "not a token id of " + p.source + " (ids run from 0 to " +
                            std::to_string(id_limit() - 1) + ")");
    }
    if (skip_special_tokens && p.added.is_special_content(*text)) continue;
    tokens.push_back(*text);
  }
  if (!p.decoder) {
    std::string joined;
    for (size_t i = 0; i < tokens.size(); ++i) joined += (i ? " " : "") + tokens[i];
    return joined;
  }
  p.decoder->decode_chain(tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

int64_t Tokenizer::vocab_size() const {
  int64_t size = static_cast<int64_t>(pipeline_->model->size());
  for (const tok::AddedToken* token : pipeline_->added.tokens()) {
    if (!pipeline_->model->token_to_id(token->content)) ++size;
  }
  return size;
}

int64_t Tokenizer::id_limit() const {
  int64_t limit = pipeline_->model->id_limit();
  for (const tok::AddedToken* token : pipeline_->added.tokens()) {
    limit = std::max<int64_t>(limit, token->id + 1);
  }
  return limit;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto id = pipeline_->added.token_to_id(token)) return id;
  return pipeline_->model->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (const tok::AddedToken* added = pipeline_->added.find(id)) return added->content;
  if (const std::string* token = pipeline_->model->id_to_token(id)) return *token;
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  const tok::AddedToken* added = pipeline_->added.find(id);
  return added != nullptr && added->special;
}

std::optional<int32_t> Tokenizer::bos_id() const {
  return pipeline_->bos;
}
bool Tokenizer::adds_bos() const {
  if (pipeline_->add_bos_token.is_null()) return false;
  return tok::JsonReader(pipeline_->add_bos_token, pipeline_->config_path, "add_bos_token")
      .as_bool();
}
std::optional<int32_t> Tokenizer::eos_id() const {
  return pipeline_->eos;
}
std::optional<int32_t> Tokenizer::pad_id() const {
  return pipeline_->pad;
}
const std::string& Tokenizer::source() const {
  return pipeline_->source;
}

}  // namespace lathe
