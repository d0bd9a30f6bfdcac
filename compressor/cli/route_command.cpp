// `lathe route MODEL --bank BANK (--prompt TEXT | --prompts FILE) [--per-prompt] [--layer0-only]
// [--out DIR] [--json FILE]`: PreMoe's TAER (ALGORITHMS.md §4.3; docs/tcess.md). The prompts'
// router mass vectors are compared with every task pattern of a `tcess` pattern bank; the nearest
// task's kept experts can be materialised into a pruned checkpoint (the apply stage replays the
// surgery).
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "calibrate/collectors.h"
#include "calibrate/tokenizer.h"
#include "compressor/cli/commands.h"
#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/fingerprint.h"
#include "compressor/model/streaming.h"
#include "compressor/passes/pattern_bank.h"
#include "compressor/pipeline/apply.h"
#include "export/gguf_model_cache.h"
#include "export/output_lock.h"

namespace lathe::cli {
namespace {

struct RouteArgs {
  std::string model, bank, prompts_file, out, json_out, device = "cpu", dtype = "f32";
  std::vector<std::string> prompts;
  bool layer0_only = false, per_prompt = false, force = false;
  int64_t max_tokens = 2048, micro_batch = 8;
};

/// The prompts of --prompts: a .jsonl file holds one {"text": ...} object per non-blank line, any
/// other file one prompt per non-blank line. DataError naming the line.
std::vector<std::string> read_prompts(const std::string& path) {
  const std::string text = read_file(path, "cannot read the prompts");
  const bool jsonl = std::filesystem::path(path).extension() == ".jsonl";
  std::vector<std::string> out;
  size_t start = 0;
  for (int64_t line_no = 1; start <= text.size(); ++line_no) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (!jsonl) {
      out.push_back(line);
      continue;
    }
    const std::string field = fmt::format("line {}", line_no);
    const nlohmann::json doc = parse_json_strict(line, path, field);
    if (!doc.is_object() || !doc.contains("text") || !doc["text"].is_string()) {
      throw DataError(path, field, "expected an object with a string \"text\"");
    }
    out.push_back(doc["text"].get<std::string>());
  }
  if (out.empty()) throw DataError(path, "", "no prompt in the file");
  return out;
}

nlohmann::json prompt_indices(size_t first, size_t count) {
  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i < count; ++i) out.push_back(first + i);
  return out;
}

/// The bank must describe this model: same MoE layers and expert counts, then the same weights.
void check_bank_matches(const PatternBank& bank, const CausalLM& model,
                        const std::string& bank_path) {
  const ModelSpec& spec = model.spec();
  std::vector<int64_t> layers, experts;
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    if (!spec.layers[i].is_moe) continue;
    layers.push_back(i);
    experts.push_back(spec.layers[i].num_experts);
  }
  if (layers != bank.moe_layers || experts != bank.num_experts) {
    throw DataError(bank_path, "model.moe_layers",
                    "the pattern bank was made for a model with other MoE layers or expert "
                    "counts than this " +
                        spec.model_type + " model");
  }
  const std::string fp = weights_fingerprint(model.store());
  if (fp != bank.weights_fingerprint) {
    throw DataError(
        bank_path, "model.weights_fingerprint",
        fmt::format("the pattern bank was made from other weights ({}) than the model's ({})",
                    bank.weights_fingerprint, fp));
  }
}

/// Thrown by the layer callback once the last needed MoE layer is done: the rest of the model is
/// not run.
struct EnoughLayers {};

/// Per query (one per prompt, or one for all), the mass vectors Σ_t p·1[e ∈ TopK] / T of the first
/// `layers` MoE layers (the same statistic as the bank's), and the tokens of each query.
std::pair<std::vector<std::vector<std::vector<double>>>, std::vector<int64_t>> query_mass(
    const CausalLM& model, const std::vector<std::vector<int32_t>>& tokens,
    const std::vector<int64_t>& moe_layers, size_t layers, bool per_prompt, const RouteArgs& args) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  int64_t width = 0;
  for (const auto& t : tokens) width = std::max<int64_t>(width, static_cast<int64_t>(t.size()));
  std::vector<int64_t> flat(static_cast<size_t>(n * width), 0), lengths(n);
  std::vector<int32_t> task_of(n, 0);
  std::vector<std::string> tasks = {"query"};
  if (per_prompt) tasks.clear();
  for (int64_t i = 0; i < n; ++i) {
    lengths[i] = static_cast<int64_t>(tokens[i].size());
    std::copy(tokens[i].begin(), tokens[i].end(), flat.begin() + i * width);
    if (per_prompt) {
      task_of[i] = static_cast<int32_t>(i);
      tasks.push_back("p" + std::to_string(i));
    }
  }
  const at::Tensor ids = at::from_blob(flat.data(), {n, width}, at::kLong).clone();
  const at::Tensor valid =
      at::arange(width, at::kLong).unsqueeze(0) < at::tensor(lengths, at::kLong).unsqueeze(1);
  CollectorOptions options;
  options.channels = options.neurons = false;
  options.forward_dtype = args.dtype;
  StatsCollector collector(model.spec(), options, task_of, tasks);
  std::map<std::string, size_t> task_index;
  for (size_t t = 0; t < tasks.size(); ++t) task_index[tasks[t]] = t;
  std::vector<std::vector<std::vector<double>>> mass(tasks.size(),
                                                     std::vector<std::vector<double>>(layers));
  std::vector<int64_t> counts(tasks.size(), 0);
  StreamingOptions streaming;
  streaming.micro_batch = args.micro_batch;
  try {
    stream_forward(
        model, ids, valid, streaming, &collector,
        [](int64_t, const at::Tensor&, const at::Tensor&) {},
        [&](int64_t layer) {
          const auto pos = std::find(moe_layers.begin(), moe_layers.begin() + layers, layer);
          for (const CollectedStat& s : collector.finish_layer(layer)) {
            if (s.key.kind != "router_selected_mass" || pos == moe_layers.begin() + layers)
              continue;
            const size_t t = task_index.at(s.key.task);
            const at::Tensor v = s.value.to(at::kDouble).contiguous();
            std::vector<double> row(v.data_ptr<double>(), v.data_ptr<double>() + v.numel());
            for (double& x : row) x = s.tokens > 0 ? x / static_cast<double>(s.tokens) : 0.0;
            mass[t][pos - moe_layers.begin()] = std::move(row);
            counts[t] = s.tokens;
          }
          if (layer == moe_layers[layers - 1]) throw EnoughLayers{};
        });
  } catch (const EnoughLayers&) {
  }
  return {mass, counts};
}

/// Materialises the pruned checkpoint of bank task `task` into args.out (the apply stage replays
/// the surgery from plan.experts; only kept experts are read).
void write_pruned(const RouteArgs& args, const PatternBank& bank, const TaskPattern& task) {
  CompressionPlan plan;
  plan.pipeline = fmt::format("route{{bank={},task={}}}", args.bank, task.name);
  plan.model = args.model;
  plan.weights_fingerprint =
      bank.weights_fingerprint;  // check_bank_matches compared it with the model's
  for (size_t l = 0; l < bank.moe_layers.size(); ++l) {
    plan.experts[bank.moe_layers[l]] = task.kept[l];
    plan.expert_scores[bank.moe_layers[l]] = task.ranking_scores()[l];
  }
  plan.decided_by["experts"] = "tcess";
  ApplyRequest req;
  req.model_dir = args.model;
  req.out_dir = args.out;
  req.pipeline = plan.pipeline;
  req.plan = plan;
  req.force = args.force;
  req.weights_fingerprint = bank.weights_fingerprint;
  req.forward = parse_forward_options(args.device, args.dtype, "");
  const OutputLock lock(args.out);
  const ApplyResult r = run_apply(req, [](int64_t layer, int64_t layers) {
    std::cerr << fmt::format("[apply] layer {}/{}\n", layer + 1, layers);
  });
  for (const auto& w : r.warnings) std::cerr << "[apply] warning: " << w << "\n";
  std::cerr << fmt::format("[route] wrote {} (task {}; {:.2f} MB → {:.2f} MB)\n", args.out,
                           task.name, r.bytes_before / 1e6, r.bytes_after / 1e6);
}

void run_route(const RouteArgs& args) {
  if (args.prompts.empty() == args.prompts_file.empty()) {
    throw ConfigError("", "--prompt/--prompts",
                      "give prompts with --prompt TEXT (repeatable) or --prompts FILE, not both");
  }
  if (!args.out.empty() && args.per_prompt)
    throw ConfigError("", "--out", "--out writes one checkpoint: not with --per-prompt");
  if (args.max_tokens < 1) throw ConfigError("", "--max-tokens", "must be at least 1");
  if (args.micro_batch < 1) throw ConfigError("", "--micro-batch", "must be at least 1");
  if (!args.out.empty() && std::filesystem::exists(args.out) && !args.force) {
    throw ConfigError(args.out, "--out", "the output directory exists; use --force to replace it");
  }
  const PatternBank bank = PatternBank::read(args.bank);
  const std::vector<std::string> prompts =
      args.prompts.empty() ? read_prompts(args.prompts_file) : args.prompts;
  const CausalLM model(args.model, parse_forward_options(args.device, args.dtype, ""));
  check_bank_matches(bank, model, args.bank);

  const Tokenizer tokenizer = Tokenizer::from_model_dir(args.model);
  std::vector<std::vector<int32_t>> tokens;
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<int32_t> t = tokenizer.encode(prompts[i], /*add_special_tokens=*/true);
    if (static_cast<int64_t>(t.size()) > args.max_tokens) t.resize(args.max_tokens);
    if (t.empty()) throw ConfigError("", fmt::format("prompt {}", i), "the prompt has no tokens");
    for (int32_t id : t) {
      if (id < 0 || id >= model.spec().vocab_size)
        throw DataError(args.model, "tokenizer",
                        fmt::format("token id {} outside the vocabulary", id));
    }
    tokens.push_back(std::move(t));
  }
  const size_t layers = args.layer0_only ? 1 : bank.moe_layers.size();
  const auto [mass, counts] =
      query_mass(model, tokens, bank.moe_layers, layers, args.per_prompt, args);

  nlohmann::json queries = nlohmann::json::array();
  for (size_t q = 0; q < mass.size(); ++q) {
    const std::vector<RouteScore> ranking = rank_patterns(bank, mass[q], layers);
    nlohmann::json r = nlohmann::json::array();
    for (const RouteScore& s : ranking)
      r.push_back({{"task", bank.tasks[s.task].name}, {"cosine", s.cosine}});
    queries.push_back(
        {{"prompts", prompt_indices(args.per_prompt ? q : 0, args.per_prompt ? 1 : prompts.size())},
         {"tokens", counts[q]},
         {"selected", bank.tasks[ranking.front().task].name},
         {"ranking", r}});
    if (args.per_prompt) {
      std::cout << fmt::format("prompt {} ({} tokens): {} {:.6f}", q, counts[q],
                               bank.tasks[ranking[0].task].name, ranking[0].cosine);
      if (ranking.size() > 1)
        std::cout << fmt::format(" (next: {} {:.6f})", bank.tasks[ranking[1].task].name,
                                 ranking[1].cosine);
      std::cout << "\n";
    } else {
      std::cout << fmt::format("{} prompt(s), {} tokens, {} MoE layer(s)\n", prompts.size(),
                               counts[q], layers);
      std::cout << "rank  task                  cosine\n";
      for (size_t i = 0; i < ranking.size(); ++i) {
        std::cout << fmt::format("{:>4}  {:<20} {:.6f}\n", i + 1, bank.tasks[ranking[i].task].name,
                                 ranking[i].cosine);
      }
      std::cout << "selected: " << bank.tasks[ranking.front().task].name << "\n";
    }
  }
  if (!args.json_out.empty()) {
    const nlohmann::json doc = {{"format", "lathe-route"}, {"version", 1},
                                {"model", args.model},     {"bank", args.bank},
                                {"layers", layers},        {"queries", queries}};
    write_file_atomically(args.json_out, doc.dump(2) + "\n");
  }
  if (!args.out.empty()) {
    write_pruned(args, bank, bank.tasks[bank.find_task(queries[0]["selected"].get<std::string>())]);
  }
}

}  // namespace

void add_route_command(CLI::App& app) {
  auto args = std::make_shared<RouteArgs>();
  auto* cmd = app.add_subcommand("route",
                                 "Pick the pattern-bank task nearest a prompt set (PreMoe TAER) "
                                 "and optionally write its pruned model");
  cmd->add_option("model", args->model, "HF model directory the bank was made from")->required();
  cmd->add_option("--bank", args->bank,
                  "pattern bank written by the tcess pass (pattern_bank.json)")
      ->required();
  cmd->add_option("--prompt", args->prompts, "a prompt (repeatable; all together form one query)");
  cmd->add_option("--prompts", args->prompts_file,
                  "prompt file: one prompt per line, or .jsonl with {\"text\": ...} per line");
  cmd->add_flag("--per-prompt", args->per_prompt,
                "route every prompt on its own instead of the set as one query");
  cmd->add_flag("--layer0-only", args->layer0_only,
                "compare the first MoE layer only (runs the model up to it)");
  cmd->add_option("--out", args->out,
                  "write the selected task's pruned checkpoint here (docs/output.md layout)");
  cmd->add_flag("--force", args->force, "replace an existing --out directory");
  cmd->add_option("--json", args->json_out, "also write the ranking as JSON to this file");
  cmd->add_option("--max-tokens", args->max_tokens, "tokens kept per prompt")
      ->capture_default_str();
  cmd->add_option("--device", args->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "working precision: f32 or bf16")->capture_default_str();
  cmd->add_option("--micro-batch", args->micro_batch, "sequences per layer call")
      ->capture_default_str();
  cmd->callback([args] {
    args->model = model_directory(args->model);
    run_route(*args);
  });
}

}  // namespace lathe::cli
