#include "compressor/pipeline/observe.h"

#include <ATen/ATen.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>

#include <fmt/format.h>

#include "calibrate/stats_store.h"
#include "calibrate/tokenizer.h"
#include "compressor/common/errors.h"
#include "compressor/common/fault_injection.h"
#include "compressor/model/fingerprint.h"
#include "compressor/model/weight_store.h"

namespace lathe {
namespace {

/// Removes `<out>.tmp-<pid>` files left by lathe processes that no longer run (a killed run).
void remove_stale_temporaries(const std::string& out, std::vector<std::string>* removed) {
  const std::filesystem::path target(out);
  const std::filesystem::path dir = target.parent_path().empty() ? "." : target.parent_path();
  const std::string prefix = target.filename().string() + ".tmp-";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string pid_text = name.substr(prefix.size());
    if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stoll(pid_text));
    if (pid == ::getpid() || (::kill(pid, 0) == 0 || errno == EPERM)) continue;  // still running
    if (std::filesystem::remove(entry.path(), ec)) removed->push_back(entry.path().string());
  }
}

std::string no_weights_fingerprint() {
  return Fingerprinter("lathe.no-weights/1").finish();
}
std::string data_options_fingerprint() {
  return Fingerprinter("lathe.calibration-data/1").finish();
}

/// Every statistic this run must produce, with the fingerprints it must carry.
struct Expectation {
  std::vector<std::pair<StatsKey, StatsFingerprints>> entries;
};

/// Why the existing store does not fit this run: one line per changed input.
std::vector<std::string> explain_mismatch(const StatsStore& store, const Expectation& want,
                                          const std::string& description) {
  std::vector<std::string> lines;
  bool weights = false, calibration = false, options = false, missing = false;
  int64_t first_layer = -1;
  for (const auto& [key, fps] : want.entries) {
    if (!store.contains(key)) {
      missing = true;
      continue;
    }
    const StatsInfo info = store.info(key);
    if (info.fingerprints.weights != fps.weights) {
      weights = true;
      if (key.layer >= 0 && (first_layer < 0 || key.layer < first_layer)) first_layer = key.layer;
    }
    calibration |= info.fingerprints.calibration != fps.calibration;
    options |= info.fingerprints.options != fps.options;
  }
  if (weights) {
    lines.push_back(
        first_layer >= 0
            ? fmt::format("model weights changed (first in decoder layer {}, or the embedding "
                          "when 0)",
                          first_layer)
            : "model weights changed");
  }
  if (calibration) {
    std::vector<std::string> what;
    if (const std::optional<std::string> stored = stored_calibration_description(store)) {
      what = describe_calibration_change(*stored, description);
    }
    if (what.empty()) lines.push_back("calibration data changed");
    for (const auto& w : what) lines.push_back("calibration data changed: " + w);
  }
  if (options)
    lines.push_back("collector options changed (statistics, --atopk, --hessians or --dtype)");
  if (missing && lines.empty()) lines.push_back("the store lacks statistics this run collects");
  return lines;
}

}  // namespace

CalibrateResult run_calibration(const CalibrateRequest& request,
                                const CalibrateProgress& progress) {
  CalibrateResult result;
  const int64_t forwards_before = decoder_layer_forward_count();
  const CollectorOptions& col = request.collectors;
  const CausalLM model(request.model_dir, request.forward);
  const ModelSpec& spec = model.spec();
  const std::string tokenizer_path =
      (std::filesystem::path(request.model_dir) / "tokenizer.json").string();
  const Tokenizer tokenizer = Tokenizer::from_model_dir(request.model_dir);
  if (tokenizer.id_limit() > spec.vocab_size) {
    throw DataError(tokenizer_path, "vocab",
                    fmt::format("the tokenizer has ids up to {} but the model's vocab_size is {}",
                                tokenizer.id_limit() - 1, spec.vocab_size));
  }
  const CalibrationSet set =
      build_calibration_set(request.calibration, tokenizer, file_fingerprint(tokenizer_path));
  result.samples = set.num_samples();
  result.tokens = set.tokens();

  const std::vector<std::string> upstream =
      upstream_weight_fingerprints(model.store(), spec, model.layout());
  StatsCollector collector(spec, col, set.task_of, set.tasks);
  const StatsFingerprints data_fps{no_weights_fingerprint(), set.fingerprint,
                                   data_options_fingerprint()};

  Expectation want;
  want.entries.push_back({calibration_description_key(), data_fps});
  for (const auto& task : set.tasks) {
    want.entries.push_back({{"calibration_ids", StatsKey::kAllLayers, "input", task}, data_fps});
    want.entries.push_back(
        {{"calibration_lengths", StatsKey::kAllLayers, "input", task}, data_fps});
  }
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    for (const auto& key : collector.expected_keys(i)) {
      want.entries.push_back({key,
                              {upstream[i], set.fingerprint,
                               collector_options_fingerprint(col, statistic_group(key.kind))}});
    }
  }
  result.statistics = static_cast<int64_t>(want.entries.size());

  const std::string& out = request.out;
  if (!request.check_only) remove_stale_temporaries(out, &result.removed_temporaries);
  if (std::filesystem::exists(out)) {
    const StatsStore existing = StatsStore::open(out);
    bool current = true;
    for (const auto& [key, fps] : want.entries) current = current && existing.is_current(key, fps);
    if (current) {
      result.reused = true;
      return result;
    }
    std::string message = "was computed from other inputs:";
    for (const auto& w : explain_mismatch(existing, want, set.description_json))
      message += "\n  - " + w;
    if (request.check_only || !request.force) {
      if (!request.check_only) message += "\nre-run with --force to recompute and replace it";
      throw DataError(out, "", message);
    }
  } else if (request.check_only) {
    throw ResourceError(out, "", "no statistics store here");
  }

  StatsStore store = StatsStore::create(out);
  {
    const std::string& d = set.description_json;
    const at::Tensor bytes =
        at::from_blob(const_cast<char*>(d.data()), {static_cast<int64_t>(d.size())}, at::kByte)
            .clone();
    store.put(calibration_description_key(), bytes, data_fps, set.tokens());
  }
  const int64_t n = set.num_samples(), t = set.seq_len;
  const at::Tensor ids =
      at::from_blob(const_cast<int32_t*>(set.ids.data()), {n, t}, at::kInt).to(at::kLong);
  const at::Tensor lengths =
      at::from_blob(const_cast<int64_t*>(set.lengths.data()), {n}, at::kLong).clone();
  const at::Tensor valid = at::arange(t, at::kLong).unsqueeze(0) < lengths.unsqueeze(1);
  const at::Tensor task_of =
      at::from_blob(const_cast<int32_t*>(set.task_of.data()), {n}, at::kInt).to(at::kLong);
  for (size_t k = 0; k < set.tasks.size(); ++k) {
    const at::Tensor rows = (task_of == static_cast<int64_t>(k)).nonzero().select(1, 0);
    const int64_t tokens = set.tokens(static_cast<int32_t>(k));
    store.put({"calibration_ids", StatsKey::kAllLayers, "input", set.tasks[k]},
              ids.index_select(0, rows).to(at::kInt), data_fps, tokens);
    store.put({"calibration_lengths", StatsKey::kAllLayers, "input", set.tasks[k]},
              lengths.index_select(0, rows), data_fps, tokens);
  }

  auto layer_start = std::chrono::steady_clock::now();
  const std::function<void(int64_t)> fault = fault_injection_from_env();
  stream_forward(
      model, ids, valid, request.streaming, &collector,
      [](int64_t, const at::Tensor&, const at::Tensor&) {},
      [&](int64_t layer) {
        const std::vector<CollectedStat> stats = collector.finish_layer(layer);
        for (const auto& s : stats)
          store.put(s.key, s.value, {upstream[layer], set.fingerprint, s.options_fingerprint},
                    s.tokens);
        const auto now = std::chrono::steady_clock::now();
        if (progress) {
          progress(layer, spec.num_layers, static_cast<int64_t>(stats.size()),
                   std::chrono::duration<double>(now - layer_start).count());
        }
        layer_start = now;
        if (fault) fault(layer);
      });
  store.commit();
  result.layer_forwards = decoder_layer_forward_count() - forwards_before;
  return result;
}

}  // namespace lathe
