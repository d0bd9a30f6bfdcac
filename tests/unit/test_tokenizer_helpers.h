// Small tokenizer.json files for the tokenizer unit tests, written in code so each test states only
// the components it is about.
#pragma once

#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "calibrate/tokenizer.h"
#include "compressor/common/errors.h"

namespace lathe::test {

/// The parts of a test tokenizer. The vocab always holds the printable ASCII characters, "▁", the
/// 256 byte tokens <0x00>..<0xFF> and then `extra_tokens`, with ids in that order.
struct TokenizerParts {
  std::vector<std::string> extra_tokens;
  nlohmann::json merges = nlohmann::json::array();
  nlohmann::json model_options = nlohmann::json::object();  ///< merged into "model"
  nlohmann::json normalizer = nullptr;
  nlohmann::json pre_tokenizer = nullptr;
  nlohmann::json post_processor = nullptr;
  nlohmann::json decoder = nullptr;
  nlohmann::json added_tokens = nlohmann::json::array();
};

/// The vocab of a test tokenizer (see TokenizerParts).
inline nlohmann::json test_vocab(const std::vector<std::string>& extra) {
  nlohmann::json vocab = nlohmann::json::object();
  int id = 0;
  for (char c = ' '; c <= '~'; ++c) vocab[std::string(1, c)] = id++;
  vocab["\u2581"] = id++;
  char name[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = id++;
  }
  for (const std::string& token : extra) {
    if (!vocab.contains(token)) vocab[token] = id++;
  }
  return vocab;
}

/// tokenizer.json text for `parts`.
inline std::string tokenizer_json(const TokenizerParts& parts) {
  nlohmann::json model = {
      {"type", "BPE"}, {"vocab", test_vocab(parts.extra_tokens)}, {"merges", parts.merges}};
  model.update(parts.model_options);
  nlohmann::json root = {{"version", "1.0"},
                         {"added_tokens", parts.added_tokens},
                         {"normalizer", parts.normalizer},
                         {"pre_tokenizer", parts.pre_tokenizer},
                         {"post_processor", parts.post_processor},
                         {"decoder", parts.decoder},
                         {"model", model}};
  return root.dump();
}

/// A tokenizer for `parts`.
inline Tokenizer make_tokenizer(const TokenizerParts& parts) {
  return Tokenizer::from_json(tokenizer_json(parts), "test.json");
}

/// The token strings `text` encodes to (without special tokens unless asked).
inline std::vector<std::string> tokens_of(const Tokenizer& tokenizer, const std::string& text,
                                          bool add_special_tokens = false) {
  std::vector<std::string> out;
  for (int32_t id : tokenizer.encode(text, add_special_tokens)) {
    out.push_back(tokenizer.id_to_token(id).value_or("<no token>"));
  }
  return out;
}

/// An added-token entry for the "added_tokens" array.
inline nlohmann::json added_token(int id, const std::string& content, bool special,
                                  nlohmann::json flags = nlohmann::json::object()) {
  nlohmann::json token = {{"id", id},          {"content", content}, {"single_word", false},
                          {"lstrip", false},   {"rstrip", false},    {"normalized", !special},
                          {"special", special}};
  token.update(flags);
  return token;
}

/// Id that the next token after the test vocab gets.
inline int next_free_id(const TokenizerParts& parts) {
  return static_cast<int>(test_vocab(parts.extra_tokens).size());
}

/// Runs `body`, expects a lathe::Error of `kind` whose field contains `field`; returns it.
template <typename Body>
Error expect_error(ErrorKind kind, const std::string& field, Body&& body) {
  try {
    body();
  } catch (const Error& e) {
    EXPECT_EQ(kind_name(e.kind()), std::string(kind_name(kind))) << e.what();
    EXPECT_NE(e.field().find(field), std::string::npos)
        << "field '" << e.field() << "' in " << e.what();
    return e;
  }
  ADD_FAILURE() << "no error thrown, expected one naming " << field;
  return InternalError("", "", "none");
}

}  // namespace lathe::test
