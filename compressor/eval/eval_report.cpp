#include "compressor/eval/eval_report.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

#include <fmt/format.h>

#include "calibrate/tokenizer.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/eval/task_file.h"
#include "compressor/model/streaming.h"
#include "export/open_model.h"

namespace lathe {
namespace {

/// Progress on stderr: a rewritten line on a terminal, one line per file otherwise.
Progress progress_for(const std::string& stage, const std::string& label) {
  const bool tty = ::isatty(STDERR_FILENO);
  return [stage, label, tty](int64_t done, int64_t total) {
    if (tty) {
      const int width = 30, filled = static_cast<int>(width * done / total);
      std::cerr << fmt::format("\r[{}] {:<32} [{}{}] layer {}/{}", stage, label,
                               std::string(filled, '#'), std::string(width - filled, '.'), done,
                               total)
                << (done == total ? "\n" : "") << std::flush;
    } else if (done == total) {
      std::cerr << fmt::format("[{}] {}: {} layers done\n", stage, label, total);
    }
  };
}

/// Context and continuation tokens as lm-eval forms them: the continuation is what encoding
/// context + choice adds after the context's own tokens (falling back to the choice alone when the
/// tokenizer merges across the boundary).
ChoiceItem tokenize_item(const Tokenizer& tok, const TaskItemText& item, int32_t prefix) {
  ChoiceItem out;
  out.context = tok.encode(item.context, false);
  if (prefix >= 0) out.context.insert(out.context.begin(), prefix);
  out.answer = item.answer;
  for (const auto& choice : item.choices) {
    const std::vector<int32_t> whole = tok.encode(item.context + choice, false);
    const size_t lead = prefix >= 0 ? 1 : 0, context = out.context.size() - lead;
    const bool extends = whole.size() > context &&
                         std::equal(out.context.begin() + lead, out.context.end(), whole.begin());
    out.choices.push_back(extends ? std::vector<int32_t>(whole.begin() + context, whole.end())
                                  : tok.encode(choice, false));
  }
  return out;
}

/// Report keys: each file's name, or parent/name where two given files share a name.
std::vector<std::string> report_names(const std::vector<std::string>& paths) {
  std::map<std::string, int> count;
  for (const auto& p : paths) count[std::filesystem::path(p).filename().string()] += 1;
  std::vector<std::string> names;
  for (const auto& p : paths) {
    const std::filesystem::path path(p);
    const std::string name = path.filename().string();
    names.push_back(count[name] > 1 ? (path.parent_path().filename() / path.filename()).string()
                                    : name);
  }
  return names;
}

/// The token put before each perplexity window and task context (EvalRequest::bos), -1 for none.
int32_t window_prefix(const std::string& mode, const std::filesystem::path& model_dir,
                      const Tokenizer& tokenizer) {
  if (mode != "auto" && mode != "on" && mode != "off") {
    throw ConfigError("", "--bos", "expected auto, on or off, found \"" + mode + "\"");
  }
  if (mode == "off" || (mode == "auto" && !tokenizer.adds_bos())) return -1;
  const std::optional<int32_t> bos = tokenizer.bos_id();
  if (!bos) {
    throw ConfigError((model_dir / "tokenizer_config.json").string(), "bos_token",
                      "a BOS token before each window (--bos " + mode +
                          ") needs tokenizer_config.json's bos_token");
  }
  return *bos;
}

}  // namespace

nlohmann::json evaluate_model(const EvalRequest& args) {
  // A lathe output directory or a packed export is measured with its quantized weights.
  const ModelSource source = resolve_model_source(args.model);
  const CausalLM model = open_model(source, args.forward);
  const Tokenizer tokenizer = Tokenizer::from_model_dir(source.model_dir.string());
  WindowOptions windows = args.windows;
  windows.prefix_token = window_prefix(args.bos, source.model_dir, tokenizer);
  StreamingOptions streaming;
  streaming.micro_batch = args.micro_batch;
  streaming.buffer_dtype =
      args.forward.dtype;  // eval keeps the working precision at layer boundaries
  nlohmann::json report = {
      {"model", args.model},
      {"seq_len", args.windows.seq_len},
      {"stride",
       windows.stride ? windows.stride : windows.seq_len - (windows.prefix_token >= 0 ? 1 : 0)},
      {"bos",
       windows.prefix_token >= 0 ? nlohmann::json(windows.prefix_token) : nlohmann::json(nullptr)},
      {"perplexity", nlohmann::json::object()},
      {"tokens", nlohmann::json::object()},
      {"predicted", nlohmann::json::object()},
      {"tasks", nlohmann::json::object()},
      {"lathe_version", LATHE_VERSION}};
  std::optional<CausalLM> reference;
  std::optional<Tokenizer> reference_tokenizer;
  if (!args.reference.empty()) {
    const ModelSource ref_source = resolve_model_source(args.reference);
    reference.emplace(open_model(ref_source, args.forward));
    reference_tokenizer.emplace(Tokenizer::from_model_dir(ref_source.model_dir.string()));
    report["reference"] = args.reference;
    report["divergence"] = nlohmann::json::object();
  }
  const std::vector<std::string> text_names = report_names(args.texts);
  for (size_t f = 0; f < args.texts.size(); ++f) {
    const std::string& path = args.texts[f];
    const std::string& name = text_names[f];
    const auto start = std::chrono::steady_clock::now();
    const std::string text = read_file(path, "cannot open the text file");
    const std::vector<int32_t> tokens = tokenizer.encode(text, false);
    PerplexityResult r;
    std::string kl_line;
    if (reference) {
      if (reference_tokenizer->encode(text, false) != tokens) {
        throw ConfigError(
            path, "--reference",
            "the reference's tokenizer encodes this file differently from the model's");
      }
      const DivergenceResult d = evaluate_divergence(model, *reference, tokens, windows, streaming,
                                                     progress_for(args.label, name));
      r.nll = d.nll;
      r.predicted = d.predicted;
      r.tokens = d.tokens;
      const double ref_ppl =
          d.predicted ? std::exp(d.reference_nll / static_cast<double>(d.predicted)) : std::nan("");
      report["divergence"][name] = {{"kl", d.mean_kl()},
                                    {"max_kl", d.max_kl},
                                    {"top1", d.top1()},
                                    {"reference_perplexity", ref_ppl}};
      if (args.print) {
        kl_line = fmt::format(
            "{:<32} KL {:.6f} nats/token (max {:.4f}), top-1 agreement {:.2f}%, reference "
            "perplexity {:.4f}\n",
            name, d.mean_kl(), d.max_kl, 100 * d.top1(), ref_ppl);
      }
    } else {
      r = evaluate_perplexity(model, tokens, windows, streaming, progress_for(args.label, name));
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report["perplexity"][name] = r.perplexity();
    report["tokens"][name] = r.tokens;
    report["predicted"][name] = r.predicted;
    if (args.print) {
      std::cout << fmt::format("{:<32} perplexity {:10.4f}  ({} tokens, {} predicted, {:.1f} s)\n",
                               name, r.perplexity(), r.tokens, r.predicted, seconds)
                << kl_line;
    }
  }
  const std::vector<std::string> task_names = report_names(args.tasks);
  for (size_t f = 0; f < args.tasks.size(); ++f) {
    const std::string& path = args.tasks[f];
    const std::string& name = task_names[f];
    std::vector<ChoiceItem> items;
    for (const auto& item : read_task_file(path))
      items.push_back(tokenize_item(tokenizer, item, windows.prefix_token));
    const TaskResult r = evaluate_choices(model, items, streaming, progress_for(args.label, name));
    report["tasks"][name] = {{"accuracy", r.accuracy()}, {"n", r.n}, {"correct", r.correct}};
    if (args.print)
      std::cout << fmt::format("{:<32} accuracy   {:10.4f}  ({}/{})\n", name, r.accuracy(),
                               r.correct, r.n);
  }
  return report;
}

}  // namespace lathe
