// `lathe forward MODEL --tokens FILE.json --out LOGITS.bin`: runs the layer-streaming forward on
// token id lists and writes the logits, for parity checks against other implementations.
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "compressor/cli/commands.h"
#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"
#include "compressor/model/causal_lm.h"
#include "export/gguf_model_cache.h"
#include "export/open_model.h"

namespace lathe::cli {
namespace {

/// Reads {"ids": [[int...]...]} into a right-padded [B, T] batch and its validity mask.
std::pair<at::Tensor, at::Tensor> read_token_batch(const std::string& path) {
  const nlohmann::json doc =
      parse_json_strict(read_file(path, "cannot open the token file"), path, "");
  if (!doc.is_object() || !doc.contains("ids") || !doc["ids"].is_array() || doc["ids"].empty()) {
    throw DataError(path, "ids", "expected a non-empty list of token id lists");
  }
  const auto& rows = doc["ids"];
  size_t longest = 0;
  for (const auto& row : rows) {
    if (!row.is_array() || row.empty())
      throw DataError(path, "ids", "every sequence must be a non-empty list");
    longest = std::max(longest, row.size());
  }
  at::Tensor ids =
      at::zeros({static_cast<int64_t>(rows.size()), static_cast<int64_t>(longest)}, at::kLong);
  at::Tensor valid = at::zeros_like(ids, at::kBool);
  for (size_t b = 0; b < rows.size(); ++b) {
    for (size_t t = 0; t < rows[b].size(); ++t) {
      if (!rows[b][t].is_number_integer()) {
        throw DataError(path, "ids[" + std::to_string(b) + "][" + std::to_string(t) + "]",
                        "expected an integer");
      }
      ids[b][t] = rows[b][t].get<int64_t>();
      valid[b][t] = true;
    }
  }
  return {ids, valid};
}

}  // namespace

void add_forward_command(CLI::App& app) {
  struct Args {
    std::string model, tokens, out, dtype = "f32";
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("forward",
                                 "Run the model on token ids and write float32 logits [B, T, V]");
  cmd->add_option("model", args->model,
                  "HF model directory, lathe output directory, GPTQ / compressed-tensors export, "
                  "or .gguf file")
      ->required();
  cmd->add_option("--tokens", args->tokens,
                  "JSON file {\"ids\": [[...], ...]} (ragged; right-padded)")
      ->required();
  cmd->add_option("--out", args->out, "raw little-endian float32 logits file")->required();
  cmd->add_option("--dtype", args->dtype, "working precision: f32 or bf16")->capture_default_str();
  cmd->callback([args] {
    args->model = model_directory(args->model);
    if (args->dtype != "f32" && args->dtype != "bf16")
      throw ConfigError("", "--dtype", "expected f32 or bf16");
    ForwardOptions options;
    options.dtype = args->dtype == "bf16" ? at::kBFloat16 : at::kFloat;
    const CausalLM model =
        open_model(args->model, options);  // quantized weights of OUT, OUT/gptq, OUT/ct
    auto [ids, valid] = read_token_batch(args->tokens);
    const at::Tensor logits = model.logits(ids, valid).contiguous();
    write_file_atomically(args->out, logits.data_ptr(), logits.nbytes());
    nlohmann::json meta = {{"shape", logits.sizes().vec()}, {"dtype", "float32"}};
    std::cout << meta.dump() << "\n";
  });
}

}  // namespace lathe::cli
