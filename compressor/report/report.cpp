#include "compressor/report/report.h"

#include <filesystem>
#include <set>

#include "compressor/common/atomic_file.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"
#include "compressor/report/field_reader.h"

namespace lathe {
namespace {

using report_detail::describe;
using report_detail::FieldReader;

std::string item_path(const std::string& array, size_t i) {
  return array + "[" + std::to_string(i) + "]";
}

std::vector<LayerReport> parse_layers(const FieldReader& top) {
  std::vector<LayerReport> layers;
  std::set<int64_t> seen;
  const nlohmann::json& items = top.array("layers");
  for (size_t i = 0; i < items.size(); ++i) {
    const FieldReader r(items[i], top.where(), item_path("layers", i));
    LayerReport layer;
    layer.layer = r.integer("layer");
    if (!seen.insert(layer.layer).second)
      r.fail("layer", "layer " + std::to_string(layer.layer) + " appears twice");
    layer.experts_before = r.nullable_integer("experts_before");
    layer.experts_kept = r.nullable_integer("experts_kept");
    if (layer.experts_kept && layer.experts_before && *layer.experts_kept > *layer.experts_before) {
      r.fail("experts_kept", "keeps " + std::to_string(*layer.experts_kept) + " experts of " +
                                 std::to_string(*layer.experts_before));
    }
    layer.rel_err = r.nullable_number("rel_err", 0.0);
    layer.seconds = r.find("seconds") ? r.number("seconds", 0.0) : 0.0;
    layers.push_back(layer);
  }
  return layers;
}

std::vector<TensorReport> parse_tensors(const FieldReader& top) {
  std::vector<TensorReport> tensors;
  const nlohmann::json& items = top.array("tensors");
  for (size_t i = 0; i < items.size(); ++i) {
    const FieldReader r(items[i], top.where(), item_path("tensors", i));
    TensorReport t;
    t.name = r.string("name");
    t.layer = r.nullable_integer("layer");
    t.format = r.string("format");
    t.bits = r.integer("bits");
    if (t.bits > 64)
      r.fail("bits", "expected at most 64 bits per weight, found " + std::to_string(t.bits));
    t.rel_err = r.nullable_number("rel_err", 0.0);
    if (r.find("tokens")) t.tokens = r.nullable_integer("tokens");
    if (r.find("h_source")) t.h_source = r.string("h_source");
    tensors.push_back(std::move(t));
  }
  return tensors;
}

std::vector<PassReport> parse_passes(const FieldReader& top) {
  std::vector<PassReport> passes;
  const nlohmann::json& items = top.array("passes");
  for (size_t i = 0; i < items.size(); ++i) {
    const FieldReader r(items[i], top.where(), item_path("passes", i));
    PassReport p;
    p.name = r.string("name");
    p.options = r.find("options") ? r.string("options") : "";
    p.seconds = r.number("seconds", 0.0);
    p.peak_rss_bytes = r.nullable_integer("peak_rss_bytes");
    passes.push_back(std::move(p));
  }
  return passes;
}

std::optional<GateReport> parse_gate(const FieldReader& top) {
  const nlohmann::json& value = top.required("gate");
  if (value.is_null()) return std::nullopt;
  const FieldReader r(value, top.where(), "gate");
  GateReport gate;
  gate.max_ppl_increase = r.nullable_number("max_ppl_increase", 0.0);
  gate.max_acc_drop = r.nullable_number("max_acc_drop", 0.0);
  gate.max_kl = r.nullable_number("max_kl", 0.0);
  gate.passed = r.boolean("passed");
  const nlohmann::json& failures = r.array("failures");
  for (size_t i = 0; i < failures.size(); ++i) {
    if (!failures[i].is_string()) {
      throw DataError(top.where(), item_path("gate.failures", i),
                      "expected a string, found " + describe(failures[i]));
    }
    gate.failures.push_back(failures[i].get<std::string>());
  }
  return gate;
}

std::optional<EvalSummary> parse_eval_side(const FieldReader& eval, const std::string& key) {
  const nlohmann::json* value = eval.find(key);
  if (!value || value->is_null()) return std::nullopt;
  return parse_eval_summary(*value, eval.where(), eval.field(key));
}

template <typename T>
nlohmann::json nullable(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

}  // namespace

Report parse_report(const nlohmann::json& doc, const std::string& where) {
  const FieldReader top(doc, where, "");
  if (top.string("format") != kReportFormat) {
    top.fail("format",
             std::string("expected \"") + kReportFormat + "\", found " + describe(doc["format"]));
  }
  const int64_t version = top.integer("version");
  if (version > kReportVersion) {
    throw UnsupportedError(where, "version",
                           "report version " + std::to_string(version) +
                               " is newer than this lathe reads (" +
                               std::to_string(kReportVersion) + ")");
  }
  if (version != kReportVersion)
    top.fail("version", "expected 1, found " + std::to_string(version));
  Report report;
  report.pipeline = top.string("pipeline");
  report.model = top.string("model");
  report.output = top.string("output");
  report.lathe_version = top.string("lathe_version");
  report.created = top.string("created");
  const FieldReader size(top.required("size"), where, "size");
  report.size_before_bytes = size.nullable_integer("before_bytes");
  report.size_after_bytes = size.nullable_integer("after_bytes");
  report.layers = parse_layers(top);
  report.tensors = parse_tensors(top);
  report.passes = parse_passes(top);
  const FieldReader eval(top.required("eval"), where, "eval");
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
