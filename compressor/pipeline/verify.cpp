#include "compressor/pipeline/verify.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "calibrate/golden_store.h"
#include "compressor/common/errors.h"
#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_store.h"
#include "export/export_manifest.h"
#include "export/quantized_checkpoint.h"
#include "kernels/qlinear.h"

namespace fs = std::filesystem;

namespace lathe {
namespace {

using kernels::Backend;
using kernels::QuantWeightView;
using kernels::WeightFormat;

bool has_quantization_config(const fs::path& dir) {
  return fs::is_regular_file(dir / "config.json") && !quantization_method(dir.string()).empty();
}

kernels::ScaleType scale_type(const at::Tensor& t, const std::string& file,
                              const std::string& name) {
  switch (t.scalar_type()) {
    case at::kHalf: return kernels::ScaleType::kF16;
    case at::kBFloat16: return kernels::ScaleType::kBF16;
    case at::kFloat: return kernels::ScaleType::kF32;
    default: throw DataError(file, name, "scales must be F16, BF16 or F32");
  }
}

std::string format_label(const PackedModule& p) {
  const std::string s24 = p.sparse24 ? "-s24" : "";
  if (p.format == "ct-sparse24") return "ct-sparse24";
  if (p.format == "ct-int8") return (p.act_bits ? "ct-int8-w8a8" : "ct-int8") + s24;
  return fmt::format("{}-int{}-g{}{}", p.format, p.bits, p.group_size, p.sym ? "" : "-asym");
}

/// An export opened for verification: the packed modules, the plain tensors and the spec.
class OpenedExport {
 public:
  explicit OpenedExport(const fs::path& dir)
      : dir_(dir),
        packed_(open_packed_checkpoint(dir.string())),
        store_(dir.string()),
        spec_(load_model_spec(dir)),
        compressed_tensors_(quantization_method(dir.string()) == "compressed-tensors") {
    if (!packed_) throw ConfigError(dir.string(), "quantization_config", "not a packed export");
  }
  const ModelSpec& spec() const { return spec_; }
  /// A compressed-tensors export (which stores 2:4 modules as sparse-24-bitmask).
  bool compressed_tensors() const { return compressed_tensors_; }
  const WeightStore& store() const { return store_; }

  /// A float32 copy of plain tensor `name` (kept alive here), or nullptr when absent.
  const float* floats(const std::string& name) {
    if (!store_.contains(name)) return nullptr;
    at::Tensor t = load_tensor(store_, name).to(at::kFloat).contiguous();
    keep_.push_back(t);
    return t.data_ptr<float>();
  }

  /// The view of `module`: packed when the export packs it, else its plain weight (kDense);
  /// `packed` tells which. Throws lathe errors for malformed tensors or a missing module.
  QuantWeightView view(const std::string& module, std::optional<PackedModule>* packed) {
    *packed = packed_->packed(module);
    QuantWeightView v;
    v.bias = floats(module + ".bias");
    if (!*packed) {
      const std::string name = module + ".weight";
      if (!store_.contains(name))
        throw DataError(
            dir_.string(), name,
            "missing: the export has neither packed tensors nor a weight for this module");
      const at::Tensor w = load_tensor(store_, name);
      if (w.dim() != 2)
        throw DataError(store_.info(name).shard_path, name, "expected a 2-D weight");
      v.format = WeightFormat::kDense;
      v.out = w.size(0);
      v.in = w.size(1);
      v.dense = floats(name);
      return v;
    }
    const PackedModule& p = **packed;
    auto t = [&](const char* suffix) -> const at::Tensor* {
      auto it = p.tensors.find(suffix);
      if (it == p.tensors.end()) return nullptr;
      keep_.push_back(it->second.contiguous());
      return &keep_.back();
    };
    v.out = p.out;
    v.in = p.in;
    v.bits = p.bits;
    v.group_size = p.group_size;
    v.act_bits = p.act_bits;
    if (p.format == "gptq") {
      v.format = WeightFormat::kGptq;
      v.packed = t("qweight")->data_ptr<int32_t>();
      v.zeros = t("qzeros")->data_ptr<int32_t>();
      const at::Tensor* s = t("scales");
      v.scales = s->data_ptr();
      v.scale_type = scale_type(*s, p.file, module + ".scales");
      v.g_idx = t("g_idx")->data_ptr<int32_t>();
    } else if (p.format == "ct-packed") {
      v.format = WeightFormat::kCtPacked;
      v.packed = t("weight_packed")->data_ptr<int32_t>();
      const at::Tensor* s = t("weight_scale");
      v.scales = s->data_ptr();
      v.scale_type = scale_type(*s, p.file, module + ".weight_scale");
      if (const at::Tensor* z = t("weight_zero_point")) v.zeros = z->data_ptr<int32_t>();
      if (const at::Tensor* g = t("weight_g_idx")) v.g_idx = g->data_ptr<int32_t>();
    } else if (p.format == "ct-sparse24") {  // decoded by the reader: the dense weight
      v.format = WeightFormat::kDense;
      keep_.push_back(p.tensors.at("weight").to(at::kFloat).contiguous());
      v.dense = keep_.back().data_ptr<float>();
    } else {
      v.format = WeightFormat::kCtInt8;
      v.int8_weight = t("weight")->data_ptr<int8_t>();
      const at::Tensor* s = t("weight_scale");
      v.scales = s->data_ptr();
      v.scale_type = scale_type(*s, p.file, module + ".weight_scale");
    }
    return v;
  }

  /// Drops the copies made for one case.
  void clear() { keep_.clear(); }

  /// Every module the export stores packed: the owners of a GPTQ `qweight`, a compressed-tensors
  /// `weight_packed`, a `weight_scale` (int8) or a `bitmask` (sparse-24-bitmask).
  std::set<std::string> packed_modules() const {
    std::set<std::string> modules;
    for (const auto& name : store_.names()) {
      for (const char* suffix : {".qweight", ".weight_packed", ".weight_scale", ".bitmask"}) {
        const std::string s(suffix);
        if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
          modules.insert(name.substr(0, name.size() - s.size()));
        }
      }
    }
    return modules;
  }

 private:
  fs::path dir_;
  std::shared_ptr<const PackedCheckpoint> packed_;
  WeightStore store_;
  ModelSpec spec_;
  bool compressed_tensors_ = false;
  std::vector<at::Tensor> keep_;
};

double max_abs_diff(const float* a, const float* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (std::isnan(d)) return d;
    m = std::max(m, d);
  }
  return m;
}

/// Runs `compute(backend, y)` on each backend and compares with `golden`.
template <typename Compute>
void run_checks(VerifyCase* c, const std::vector<Backend>& backends, const at::Tensor& golden,
                Compute&& compute) {
  const int64_t n = golden.numel();
  const float* ref = golden.data_ptr<float>();
  c->status = "ok";
  for (const Backend b : backends) {
    VerifyCheck k;
    k.backend = kernels::backend_name(b);
    k.bound = verify_bound(b, c->format);
    std::vector<float> y(static_cast<size_t>(n), std::nanf(""));
    try {
      compute(b, y.data());
      k.nmse = kernels::nmse(y.data(), ref, n);
      k.max_abs = max_abs_diff(y.data(), ref, n);
      k.passed = std::isfinite(k.nmse) && k.nmse <= k.bound;
    } catch (const kernels::KernelError& e) {
      k.nmse = k.max_abs = std::nan("");
      if (c->note.empty()) c->note = std::string(k.backend) + ": " + e.what();
    }
    if (!k.passed) c->status = "fail";
    c->checks.push_back(k);
  }
}

/// Golden vectors of a linear lathe pruned without quantizing: its stored weight is the reference.
bool pruned_only(const GoldenLinear& l) {
  return !l.sparsity.empty() && l.bits > 8;
}

/// Why the export's storage contradicts the golden record's sparsity ("" when it does not): a
/// compressed-tensors export stores every 2:4 module that is unquantized or int8 as
/// sparse-24-bitmask, and nothing else.
std::string sparsity_mismatch(const OpenedExport& ex, const GoldenLinear& l,
                              const std::optional<PackedModule>& packed) {
  const bool bitmask = packed && packed->sparse24;
  if (bitmask && l.sparsity != "2:4")
    return "the export stores it as sparse-24-bitmask, but lathe did not prune it 2:4";
  const bool expected = ex.compressed_tensors() && l.sparsity == "2:4" &&
                        (packed ? packed->format != "ct-packed" : pruned_only(l));
  if (expected && !bitmask)
    return "lathe pruned it 2:4, but the export does not store it as sparse-24-bitmask";
  return "";
}

void verify_linear(OpenedExport& ex, const GoldenLayer& g, const GoldenLinear& l,
                   const std::vector<Backend>& backends, VerifyCase* c) {
  std::optional<PackedModule> packed;
  QuantWeightView v;
  try {
    v = ex.view(l.module, &packed);
  } catch (const Error& e) {
    c->status = "fail";
    c->note = e.what();
    return;
  }
  c->format = packed ? format_label(*packed) : pruned_only(l) ? "dense" : "unpacked";
  const std::string mismatch = sparsity_mismatch(ex, l, packed);
  if (!mismatch.empty()) {
    c->status = "fail";
    c->note = mismatch;
    return;
  }
  // The dense weight is lathe's own only for a linear lathe did not quantize.
  if (packed ? packed->format == "ct-sparse24" && !pruned_only(l) : !pruned_only(l)) {
    c->status = "skip";
    c->note = "stored unquantized in this export (the format cannot express it)";
    return;
  }
  const at::Tensor& x = g.inputs.at(l.input);
  if (x.size(1) != v.in || l.y.size(1) != v.out) {
    c->status = "fail";
    c->note = fmt::format("the export's module is [{}, {}], the golden vectors are for [{}, {}]",
                          v.out, v.in, l.y.size(1), x.size(1));
    return;
  }
  const int64_t act_bits = packed ? packed->act_bits : 0;
  if (act_bits != l.act_bits) {
    c->status = "fail";
    c->note = fmt::format("the export quantizes inputs to {} bits, lathe measured with {}",
                          act_bits, l.act_bits);
    return;
  }
  try {
    kernels::check_view(v);
  } catch (const kernels::KernelError& e) {
    c->status = "fail";
    c->note = e.what();
    return;
  }
  run_checks(c, backends, l.y, [&](Backend b, float* y) {
    kernels::qlinear(b, v, x.data_ptr<float>(), x.size(0), y);
  });
}

void verify_moe(OpenedExport& ex, const GoldenLayer& g, const std::vector<Backend>& backends,
                VerifyCase* c) {
  const ModelSpec& spec = ex.spec();
  c->format = "moe";
  const LayerSpec& ls = spec.layers.at(g.layer);
  if (!ls.is_moe) {
    c->status = "fail";
    c->note = "the export's config says this layer is dense";
    return;
  }
  kernels::MoeBlockView block;
  block.hidden = spec.hidden_size;
  block.num_experts = ls.num_experts;
  const RoutingRule& r = spec.routing;
  block.routing.scoring =
      r.scoring == ScoringFunc::kSigmoid ? kernels::MoeRouting::Scoring::kSigmoid
      : r.scoring == ScoringFunc::kCmoe  ? kernels::MoeRouting::Scoring::kCmoe
                                         : kernels::MoeRouting::Scoring::kSoftmax;
  if (spec.mlp_activation != MlpActivation::kSilu) {  // a carved Gemma (GeGLU) FFN
    c->status = "skip";
    c->note = "the kernels' MoE block computes SwiGLU experts only";
    return;
  }
  block.routing.top_k = ls.top_k;
  block.routing.renormalize = r.renormalize;
  block.routing.scaling_factor = r.scaling_factor;
  block.routing.num_groups = r.num_groups;
  block.routing.topk_groups = r.topk_groups;
  block.gate.resize(ls.num_experts);
  block.up.resize(ls.num_experts);
  block.down.resize(ls.num_experts);
  std::set<std::string> pruned;  // linears whose dense weight is lathe's own (pruned only)
  for (const auto& l : g.linears) {
    if (pruned_only(l)) pruned.insert(l.module);
  }
  int64_t unpacked = 0;
  try {
    for (const auto& t : expected_layer_tensors(spec, ExpertLayout::kPerExpert, g.layer)) {
      const std::string module = t.name.size() > 7 ? t.name.substr(0, t.name.size() - 7) : t.name;
      std::optional<PackedModule> packed;
      switch (t.role) {
        case TensorRole::kRouter: block.router = ex.floats(t.name); break;
        case TensorRole::kRouterBias: block.routing.selection_bias = ex.floats(t.name); break;
        case TensorRole::kRouterUp: block.routing.router_up = ex.floats(t.name); break;
        case TensorRole::kRouterScale: block.routing.router_scale = ex.floats(t.name); break;
        case TensorRole::kSharedExpertGate: block.shared_expert_gate = ex.floats(t.name); break;
        case TensorRole::kExpertGate: block.gate[t.expert] = ex.view(module, &packed); break;
        case TensorRole::kExpertUp: block.up[t.expert] = ex.view(module, &packed); break;
        case TensorRole::kExpertDown: block.down[t.expert] = ex.view(module, &packed); break;
        case TensorRole::kSharedGate:
          block.has_shared = true, block.shared_gate = ex.view(module, &packed);
          break;
        case TensorRole::kSharedUp: block.shared_up = ex.view(module, &packed); break;
        case TensorRole::kSharedDown: block.shared_down = ex.view(module, &packed); break;
        default: continue;
      }
      const bool linear = is_quantizable(t.role);
      if (linear && !packed && !pruned.count(module)) ++unpacked;
    }
  } catch (const Error& e) {
    c->status = "fail";
    c->note = e.what();
    return;
  }
  if (!block.router) {
    c->status = "fail";
    c->note = "the export has no router weight for this layer";
    return;
  }
  if (unpacked > 0) {
    c->status = "skip";
    c->note = fmt::format("{} expert linears are stored unquantized in this export", unpacked);
    return;
  }
  for (const auto& views : {&block.gate, &block.up, &block.down}) {
    for (const auto& v : *views) {
      if (v.act_bits) c->format = "moe-w8a8";
    }
  }
  const at::Tensor& x = g.inputs.at("mlp_in");
  run_checks(c, backends, *g.moe_y, [&](Backend b, float* y) {
    kernels::moe_block(b, block, x.data_ptr<float>(), x.size(0), y);
  });
}

/// The layer a tensor or module name belongs to ("model.layers.L.…"), or -1.
int64_t layer_of(const std::string& name) {
  const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return -1;
  try {
    return std::stoll(name.substr(prefix.size()));
  } catch (const std::exception&) {
    return -1;
  }
}

/// The file check (export/export_manifest.h): one case when every file matches its
/// lathe_export.json entry (or there is none to check against), else one failed case per changed
/// tensor, named by its module, and per changed or missing file.
std::vector<VerifyCase> integrity_cases(const fs::path& dir) {
  const std::optional<IntegrityReport> report = check_export_manifest(dir);
  VerifyCase c{dir.string(), -1, "files", "sha256", "skip", "", {}};
  if (!report) {
    c.note = std::string("no ") + kExportManifest +
             " (an export of an older lathe or another tool): file hashes not checked";
    return {c};
  }
  if (report->problems.empty()) {
    c.status = "ok";
    c.note = fmt::format("{} files and {} tensors match {}", report->files, report->tensors,
                         kExportManifest);
    if (!report->unlisted.empty())
      c.note += fmt::format("; {} files not listed there, not checked", report->unlisted.size());
    return {c};
  }
  std::vector<VerifyCase> cases;
  for (const auto& p : report->problems) {
    const std::string module = p.tensor.empty() ? p.file : p.tensor.substr(0, p.tensor.rfind('.'));
    const std::string what =
        p.tensor.empty() ? p.what : p.tensor.substr(p.tensor.rfind('.') + 1) + ": " + p.what;
    cases.push_back(
        {dir.string(), layer_of(module), module, "sha256", "fail", what + " (" + p.file + ")", {}});
  }
  return cases;
}

void verify_one_export(const fs::path& dir, const fs::path& golden_dir,
                       const std::vector<Backend>& backends, VerifyResult* result,
                       const std::function<void(const VerifyCase&)>& on_case) {
  const std::vector<std::string> files = list_golden_files(golden_dir.string());
  if (files.empty()) {
    throw ConfigError(
        dir.string(), "verify",
        "no golden vectors (verify/layer_*.h5): they are written by lathe apply / lathe run "
        "(--verify-rows > 0) and copied into every export");
  }
  result->exports.push_back(dir.string());
  auto count = [&](VerifyCase& c) {
    if (c.status == "ok")
      ++result->passed;
    else if (c.status == "fail")
      ++result->failed;
    else
      ++result->skipped;
    if (on_case) on_case(c);
    result->cases.push_back(std::move(c));
  };
  for (VerifyCase& c : integrity_cases(dir)) count(c);
  OpenedExport ex(dir);
  std::set<std::string> covered;  // modules with a golden case
  for (const auto& file : files) {
    const GoldenLayer g = read_golden_layer(file);
    if (g.layer >= ex.spec().num_layers)
      throw DataError(
          file, "layer",
          fmt::format("layer {} but the export has {} layers", g.layer, ex.spec().num_layers));
    auto finish = [&](VerifyCase& c) {
      ex.clear();
      covered.insert(c.name);
      count(c);
    };
    for (const auto& l : g.linears) {
      VerifyCase c{dir.string(), g.layer, l.module, "", "", "", {}};
      verify_linear(ex, g, l, backends, &c);
      finish(c);
    }
    if (g.moe_y) {
      VerifyCase c{dir.string(), g.layer, fmt::format("model.layers.{}.moe", g.layer), "", "",
                   "",           {}};
      verify_moe(ex, g, backends, &c);
      finish(c);
    }
  }
  // Packed modules the golden vectors leave out (a run with --verify-experts K): said, not hidden.
  for (const auto& module : ex.packed_modules()) {
    if (covered.count(module)) continue;
    VerifyCase c{dir.string(),
                 layer_of(module),
                 module,
                 "",
                 "skip",
                 "no golden vectors for this module (recorded with --verify-experts below all): "
                 "kernels not replayed",
                 {}};
    count(c);
  }
}

}  // namespace

double verify_bound(Backend backend, const std::string& format) {
  if (format == "moe-w8a8")
    return 1e-4;  // an ulp in a recomputed activation can move one int8 rounding
  const bool moe = format == "moe";
  if (backend != Backend::kCuda) return moe ? 1e-6 : 1e-8;
  if (moe) return 1e-4;
  const bool a16 = format.rfind("gptq", 0) == 0 || format.rfind("ct-packed", 0) == 0 ||
                   format == "ct-int8" || format == "ct-int8-s24";
  return a16 ? 1e-5 : 1e-8;
}

VerifyResult verify_exports(const std::string& dir_text, const VerifyOptions& options,
                            const std::function<void(const VerifyCase&)>& on_case) {
  const fs::path dir(dir_text);
  if (!fs::is_directory(dir)) throw ConfigError(dir_text, "", "no such directory");
  std::vector<Backend> backends =
      options.backends.empty() ? kernels::available_backends() : options.backends;
  const std::vector<Backend> available = kernels::available_backends();
  for (const Backend b : backends) {
    if (std::find(available.begin(), available.end(), b) == available.end()) {
      throw ConfigError("", "--backend",
                        std::string(kernels::backend_name(b)) +
                            " is not available here (no CUDA build or no GPU visible)");
    }
  }
  VerifyResult result;
  if (has_quantization_config(dir)) {
    const fs::path golden =
        fs::is_directory(dir / "verify") ? dir / "verify" : dir.parent_path() / "verify";
    verify_one_export(dir, golden, backends, &result, on_case);
    return result;
  }
  bool any = false;
  for (const char* sub : {"gptq", "ct"}) {
    const fs::path e = dir / sub;
    if (!has_quantization_config(e)) continue;
    any = true;
    verify_one_export(e, fs::is_directory(e / "verify") ? e / "verify" : dir / "verify", backends,
                      &result, on_case);
  }
  if (!any && fs::exists(dir / "config.json")) {
    throw ConfigError(dir_text, "quantization_config",
                      "an unquantized checkpoint (e.g. the hf export): it has nothing packed to "
                      "verify; verify the "
                      "gptq or ct export, or the output directory");
  }
  if (!any) {
    throw ConfigError(dir_text, "",
                      "neither a packed export (config.json with a quantization_config) nor a "
                      "lathe output directory "
                      "with exports (gptq/, ct/): run lathe export first");
  }
  return result;
}

}  // namespace lathe
