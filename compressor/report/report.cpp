#include "compressor/report/report.h"

#include <filesystem>
#include <set>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/json_reader.h"
#include "compressor/common/strict_json.h"

namespace lathe {
namespace {

std::vector<LayerReport> parse_layers(const JsonReader& top) {
  std::vector<LayerReport> layers;
  std::set<int64_t> seen;
  const JsonReader items = top.at("layers");
  for (size_t i = 0; i < items.array_size(); ++i) {
    const JsonReader r = items.element(i);
    LayerReport layer;
    layer.layer = r.int_at({"layer"}, 0);
    if (!seen.insert(layer.layer).second)
      r.fail("layer", "layer " + std::to_string(layer.layer) + " appears twice");
    layer.experts_before = r.optional_int({"experts_before"}, 0);
    layer.experts_kept = r.optional_int({"experts_kept"}, 0);
    if (layer.experts_kept && layer.experts_before && *layer.experts_kept > *layer.experts_before) {
      r.fail("experts_kept", "keeps " + std::to_string(*layer.experts_kept) + " experts of " +
                                 std::to_string(*layer.experts_before));
    }
    layer.rel_err = r.optional_number({"rel_err"}, 0.0);
    layer.seconds = r.optional_number({"seconds"}, 0.0).value_or(0.0);
    layer.sparsity = r.optional_number({"sparsity"}, 0.0);
    layer.sparsity_target = r.optional_number({"sparsity_target"}, 0.0);
    layer.carve = r.string_or({"carve"}, "");
    layers.push_back(layer);
  }
  return layers;
}

std::vector<TensorReport> parse_tensors(const JsonReader& top) {
  std::vector<TensorReport> tensors;
  const JsonReader items = top.at("tensors");
  for (size_t i = 0; i < items.array_size(); ++i) {
    const JsonReader r = items.element(i);
    TensorReport t;
    t.name = r.string_at({"name"});
    t.layer = r.optional_int({"layer"}, 0);
    t.format = r.string_at({"format"});
    t.bits = r.int_at({"bits"}, 0);
    if (t.bits > 64)
      r.fail("bits", "expected at most 64 bits per weight, found " + std::to_string(t.bits));
    t.rel_err = r.optional_number({"rel_err"}, 0.0);
    t.tokens = r.optional_int({"tokens"}, 0);
    if (const auto h = r.find("h_source")) t.h_source = h->as_string();
    t.zeros = r.optional_number({"zeros"}, 0.0);
    tensors.push_back(std::move(t));
  }
  return tensors;
}

std::vector<PassReport> parse_passes(const JsonReader& top) {
  std::vector<PassReport> passes;
  const JsonReader items = top.at("passes");
  for (size_t i = 0; i < items.array_size(); ++i) {
    const JsonReader r = items.element(i);
    PassReport p;
    p.name = r.string_at({"name"});
    p.options = r.string_or({"options"}, "");
    p.seconds = r.number_at({"seconds"}, 0.0);
    p.peak_rss_bytes = r.optional_int({"peak_rss_bytes"}, 0);
    passes.push_back(std::move(p));
  }
  return passes;
}

/// The value of a field that must be present but may be null (no gate, no evaluation).
std::optional<JsonReader> nullable_at(const JsonReader& top, const char* key) {
  if (!top.value().contains(key)) top.fail(key, "required field is missing");
  return top.find(key);
}

std::optional<GateReport> parse_gate(const JsonReader& top) {
  const auto r = nullable_at(top, "gate");
  if (!r) return std::nullopt;
  GateReport gate;
  gate.max_ppl_increase = r->optional_number({"max_ppl_increase"}, 0.0);
  gate.max_acc_drop = r->optional_number({"max_acc_drop"}, 0.0);
  gate.max_kl = r->optional_number({"max_kl"}, 0.0);
  gate.passed = r->bool_at({"passed"});
  gate.failures = r->at("failures").as_string_list();
  return gate;
}

std::optional<EvalSummary> parse_eval_side(const JsonReader& eval, const char* key) {
  const auto value = eval.find(key);
  if (!value) return std::nullopt;
  return parse_eval_summary(value->value(), eval.file(), value->path());
}

template <typename T>
nlohmann::json nullable(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

}  // namespace

Report parse_report(const nlohmann::json& doc, const std::string& where) {
  const JsonReader top(doc, where);
  if (top.string_at({"format"}) != kReportFormat) {
    top.fail("format", std::string("expected \"") + kReportFormat + "\", found " +
                           describe_json(doc["format"]));
  }
  const int64_t version = top.int_at({"version"}, 0);
  if (version > kReportVersion) {
    throw UnsupportedError(where, "version",
                           "report version " + std::to_string(version) +
                               " is newer than this lathe reads (" +
                               std::to_string(kReportVersion) + ")");
  }
  if (version != kReportVersion)
    top.fail("version", "expected 1, found " + std::to_string(version));
  Report report;
  report.pipeline = top.string_at({"pipeline"});
  report.model = top.string_at({"model"});
  report.output = top.string_at({"output"});
  report.lathe_version = top.string_at({"lathe_version"});
  report.created = top.string_at({"created"});
  const JsonReader size = top.at("size");
  report.size_before_bytes = size.optional_int({"before_bytes"}, 0);
  report.size_after_bytes = size.optional_int({"after_bytes"}, 0);
  report.layers = parse_layers(top);
  report.tensors = parse_tensors(top);
  report.passes = parse_passes(top);
  const JsonReader eval = top.at("eval");
  report.eval_before = parse_eval_side(eval, "before");
  report.eval_after = parse_eval_side(eval, "after");
  report.gate = parse_gate(top);
  return report;
}

Report read_report_file(const std::string& path) {
  return parse_report(parse_json_strict(read_file(path), path, ""), path);
}

nlohmann::json report_to_json(const Report& r) {
  nlohmann::json layers = nlohmann::json::array(), tensors = nlohmann::json::array(),
                 passes = nlohmann::json::array();
  for (const auto& l : r.layers) {
    layers.push_back({{"layer", l.layer},
                      {"experts_before", nullable(l.experts_before)},
                      {"experts_kept", nullable(l.experts_kept)},
                      {"rel_err", nullable(l.rel_err)},
                      {"seconds", l.seconds}});
    if (l.sparsity) {
      layers.back()["sparsity"] = *l.sparsity;
      layers.back()["sparsity_target"] = nullable(l.sparsity_target);
    }
    if (!l.carve.empty()) layers.back()["carve"] = l.carve;
  }
  for (const auto& t : r.tensors) {
    tensors.push_back({{"name", t.name},
                       {"layer", nullable(t.layer)},
                       {"format", t.format},
                       {"bits", t.bits},
                       {"rel_err", nullable(t.rel_err)}});
    if (!t.h_source.empty()) {
      tensors.back()["tokens"] = nullable(t.tokens);
      tensors.back()["h_source"] = t.h_source;
    }
    if (t.zeros) tensors.back()["zeros"] = *t.zeros;
  }
  for (const auto& p : r.passes) {
    passes.push_back({{"name", p.name},
                      {"options", p.options},
                      {"seconds", p.seconds},
                      {"peak_rss_bytes", nullable(p.peak_rss_bytes)}});
  }
  auto eval = [](const std::optional<EvalSummary>& e) {
    return e ? e->raw : nlohmann::json(nullptr);
  };
  nlohmann::json gate = nullptr;
  if (r.gate) {
    gate = {{"max_ppl_increase", nullable(r.gate->max_ppl_increase)},
            {"max_acc_drop", nullable(r.gate->max_acc_drop)},
            {"max_kl", nullable(r.gate->max_kl)},
            {"passed", r.gate->passed},
            {"failures", r.gate->failures}};
  }
  // nlohmann::ordered_json would keep this order; the plain json sorts keys, which is fine to read.
  return {{"format", kReportFormat},
          {"version", kReportVersion},
          {"pipeline", r.pipeline},
          {"model", r.model},
          {"output", r.output},
          {"lathe_version", r.lathe_version},
          {"created", r.created},
          {"size",
           {{"before_bytes", nullable(r.size_before_bytes)},
            {"after_bytes", nullable(r.size_after_bytes)}}},
          {"layers", layers},
          {"tensors", tensors},
          {"passes", passes},
          {"eval", {{"before", eval(r.eval_before)}, {"after", eval(r.eval_after)}}},
          {"gate", gate}};
}

void render_report_files(const Report& report, const std::string& report_json) {
  const std::filesystem::path dir = std::filesystem::path(report_json).parent_path();
  write_file_atomically((dir / "report.md").string(), render_markdown(report));
  write_file_atomically((dir / "report.html").string(), render_html(report));
}

void write_report_files(const Report& report, const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw ResourceError(dir, "", "cannot create the report directory: " + ec.message());
  const std::string json_path = (std::filesystem::path(dir) / "report.json").string();
  write_file_atomically(json_path, report_to_json(report).dump(2) + "\n");
  render_report_files(report, json_path);
}

}  // namespace lathe
