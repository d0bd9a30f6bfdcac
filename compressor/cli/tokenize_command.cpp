// `lathe tokenize TOKENIZER [--text S | --file F | --jsonl F] [--add-special-tokens] [--decode]
//  [--skip-special-tokens] [--json] [--repeat N]`
//
// Encodes text to ids (or, with --decode, ids to text) with a tokenizer.json or a model directory.
// Output: ids separated by spaces (or the decoded text); with --json {"ids": [...], "count": n}
// (decode: {"text": "..."}); with --jsonl one such object per input line, where each input line
// is a JSON string (decode: a JSON array of ids). --repeat N encodes the input(s) N more times
// and reports the mean throughput on stderr (a benchmark aid; single-threaded).
#include <CLI/CLI.hpp>

#include <chrono>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "calibrate/tokenizer.h"
#include "compressor/cli/commands.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"
#include "export/gguf_model_cache.h"

namespace lathe::cli {
namespace {

struct TokenizeArgs {
  std::string tokenizer;
  std::string text;
  std::string file;
  std::string jsonl;
  bool add_special_tokens = false;
  bool decode = false;
  bool skip_special_tokens = false;
  bool json = false;
  int repeat = 0;
};

std::string read_input(const std::string& path) {
  if (path == "-") {
    return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  return read_file(path);
}

// Ids for --decode: a JSON array, or integers separated by spaces, commas or newlines.
std::vector<int32_t> parse_ids(const std::string& text, const std::string& where) {
  std::vector<int32_t> ids;
  std::string cleaned = text;
  for (char& c : cleaned) {
    if (c == ',' || c == '[' || c == ']') c = ' ';
  }
  std::istringstream in(cleaned);
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long long value = 0;
    try {
      value = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || value < INT32_MIN || value > INT32_MAX) {
      throw ConfigError(where, "ids", "'" + word + "' is not a token id");
    }
    ids.push_back(static_cast<int32_t>(value));
  }
  return ids;
}

nlohmann::json encode_json(const Tokenizer& tokenizer, std::string_view text, bool special) {
  const std::vector<int32_t> ids = tokenizer.encode(text, special);
  return {{"ids", ids}, {"count", ids.size()}};
}

void report_throughput(const Tokenizer& tokenizer, const std::vector<std::string>& texts,
                       const TokenizeArgs& args) {
  size_t bytes = 0, count = 0;
  for (const std::string& text : texts) bytes += text.size();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < args.repeat; ++i) {
    count = 0;
    for (const std::string& text : texts)
      count += tokenizer.encode(text, args.add_special_tokens).size();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / args.repeat;
  std::cerr << fmt::format(
      "encode: {} texts, {} bytes -> {} tokens in {:.4f} s ({:.2f} MB/s, "
      "mean of {})\n",
      texts.size(), bytes, count, seconds, bytes / seconds / 1e6, args.repeat);
}

void run_jsonl(const Tokenizer& tokenizer, const TokenizeArgs& args) {
  std::istringstream lines(read_input(args.jsonl));
  std::string line;
  size_t number = 0;
  std::vector<std::string> texts;  // kept for --repeat
  while (std::getline(lines, line)) {
    ++number;
    if (line.empty()) continue;
    const std::string where = args.jsonl + ":" + std::to_string(number);
    const nlohmann::json value = parse_json_strict(line, where, "");
    if (args.decode) {
      if (!value.is_array()) throw DataError(where, "", "expected a JSON array of ids");
      std::vector<int32_t> ids;
      for (const nlohmann::json& id : value) {
        if (!id.is_number_integer() || id.get<int64_t>() < INT32_MIN ||
            id.get<int64_t>() > INT32_MAX) {
          throw DataError(where, "", "expected integer token ids, found " + id.dump());
        }
        ids.push_back(id.get<int32_t>());
      }
      const std::string text = tokenizer.decode(ids, args.skip_special_tokens);
      std::cout << nlohmann::json{{"text", text}}.dump() << "\n";
    } else {
      if (!value.is_string()) throw DataError(where, "", "expected a JSON string");
      std::cout << encode_json(tokenizer, value.get<std::string>(), args.add_special_tokens).dump()
                << "\n";
      if (args.repeat > 0) texts.push_back(value.get<std::string>());
    }
  }
  if (args.repeat > 0 && !args.decode) report_throughput(tokenizer, texts, args);
}

void run_tokenize(const TokenizeArgs& args) {
  const Tokenizer tokenizer = Tokenizer::from_file(args.tokenizer);
  if (!args.jsonl.empty()) return run_jsonl(tokenizer, args);
  const std::string input = args.file.empty() ? args.text : read_input(args.file);
  if (args.decode) {
    const std::string text = tokenizer.decode(
        parse_ids(input, args.file.empty() ? "--text" : args.file), args.skip_special_tokens);
    if (args.json) {
      std::cout << nlohmann::json{{"text", text}}.dump() << "\n";
    } else {
      std::cout << text;
    }
    return;
  }
  if (args.repeat > 0) report_throughput(tokenizer, std::vector<std::string>{input}, args);
  const nlohmann::json result = encode_json(tokenizer, input, args.add_special_tokens);
  if (args.json) {
    std::cout << result.dump() << "\n";
    return;
  }
  std::string line;
  for (int32_t id : result["ids"]) line += (line.empty() ? "" : " ") + std::to_string(id);
  std::cout << line << "\n";
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  auto* cmd = app.add_subcommand("tokenize",
                                 "Encode text to token ids, or decode ids to text, "
                                 "with a tokenizer.json (or a model directory)");
  cmd->add_option("tokenizer", args->tokenizer, "tokenizer.json, or a directory holding one")
      ->required();
  auto* text = cmd->add_option("--text", args->text, "the input text (with --decode: ids)");
  auto* file = cmd->add_option("--file", args->file, "read the input from a file ('-': stdin)");
  auto* jsonl = cmd->add_option("--jsonl", args->jsonl,
                                "one input per line: JSON strings (with --decode: JSON id arrays)");
  text->excludes(file)->excludes(jsonl);
  file->excludes(jsonl);
  cmd->add_flag("--add-special-tokens", args->add_special_tokens,
                "let the post-processor add its special tokens (e.g. BOS)");
  cmd->add_flag("--decode", args->decode, "decode ids to text instead of encoding");
  cmd->add_flag("--skip-special-tokens", args->skip_special_tokens,
                "with --decode: leave special tokens out");
  cmd->add_flag("--json", args->json,
                "print {\"ids\": [...], \"count\": n} (decode: {\"text\": ...})");
  cmd->add_option("--repeat", args->repeat, "encode N times and print the throughput on stderr");
  cmd->callback([args] {
    args->tokenizer =
        model_directory(args->tokenizer);  // a .gguf: the tokenizer of its imported directory
    run_tokenize(*args);
  });
}

}  // namespace lathe::cli
