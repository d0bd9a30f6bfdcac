// `rtn`: round-to-nearest weight quantization (ALGORITHMS.md §1.4's quantizer without GPTQ's error
// feedback). Decide: every quantizable linear gets a TensorPlan (per-tensor overrides by regex,
// first match wins). Apply: the weight is replaced by its dequantized values in the stored dtype,
// so the HF checkpoint in out/model computes what the packed export will.
#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <regex>

#include "compressor/common/errors.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/context.h"
#include "compressor/quant/quantizer.h"

namespace lathe {

std::string quant_format(const TensorPlan& p) {
  return fmt::format("{}-int{}-g{}-{}", p.method, p.bits, p.group_size, p.sym ? "sym" : "asym");
}

TensorOverrides::TensorOverrides(const PassInstance& instance)
    : pass_(instance.name), base_(instance.options) {
  for (size_t i = 0; i < instance.overrides.size(); ++i) {
    const PassOverride& o = instance.overrides[i];
    try {
      compiled_.push_back({std::regex(o.match, std::regex::ECMAScript), o.match, o.options});
    } catch (const std::regex_error& e) {
      throw ConfigError("", fmt::format("{}.overrides[{}].match", pass_, i),
                        "\"" + o.match + "\" is not a valid regex: " + e.what());
    }
  }
}

std::vector<std::pair<ExpectedTensor, OptionValues>> TensorOverrides::match(
    const std::vector<ExpectedTensor>& tensors, const CompressionPlan* plan,
    std::vector<std::string>* log, std::vector<CheckProblem>& problems) const {
  std::vector<std::pair<ExpectedTensor, OptionValues>> out;
  std::vector<int64_t> hits(compiled_.size(), 0);
  // Group-size problems by option set (-1: the pass's own): the first tensor and how many more.
  std::map<int64_t, std::pair<std::string, int64_t>> bad_groups;
  for (const ExpectedTensor& t : tensors) {
    if (!is_quantizable(t.role)) continue;
    if (plan && t.expert >= 0) {
      auto kept = plan->experts.find(t.layer);
      if (kept != plan->experts.end() &&
          !std::binary_search(kept->second.begin(), kept->second.end(), t.expert))
        continue;
    }
    std::string module = t.name;
    if (module.size() > 7 && module.compare(module.size() - 7, 7, ".weight") == 0)
      module.resize(module.size() - 7);
    OptionValues opts = base_;
    int64_t source = -1;
    for (size_t i = 0; i < compiled_.size(); ++i) {
      if (!std::regex_match(module, compiled_[i].re)) continue;
      for (const auto& [k, v] : compiled_[i].options.values()) opts.set(k, v);
      if (log)
        log->push_back(
            fmt::format("{}: {} matches override \"{}\"", pass_, t.name, compiled_[i].text));
      hits[i] += 1;
      if (compiled_[i].options.has("group-size")) source = static_cast<int64_t>(i);
      break;
    }
    if (opts.get_bool("skip")) continue;
    // bits 0: sparsegpt pruning without quantization, so no groups either
    const bool grouped = opts.has("group-size") && !(opts.has("bits") && opts.get_int("bits") == 0);
    const int64_t g = grouped ? opts.get_int("group-size") : -1, in = t.shape.back();
    if (g == 0 || g < -1 || (g > 0 && in % g != 0)) {
      auto [it, first] = bad_groups.try_emplace(
          source, fmt::format("{} does not divide the input width {} of {}", g, in, t.name), 0);
      if (!first) it->second.second += 1;
      continue;
    }
    out.push_back({t, opts});
  }
  for (const auto& [source, problem] : bad_groups) {
    const std::string more =
        problem.second > 0
            ? fmt::format(" (and {} more tensor{})", problem.second, problem.second == 1 ? "" : "s")
            : "";
    problems.push_back({source < 0 ? pass_ + ".group-size"
                                   : fmt::format("{}.overrides[{}].group-size", pass_, source),
                        problem.first + more + "; use a divisor or -1"});
  }
  for (size_t i = 0; i < compiled_.size(); ++i) {
    if (hits[i] == 0) {
      problems.push_back(
          {fmt::format("{}.overrides[{}].match", pass_, i),
           fmt::format(
               "\"{}\" matches no quantizable tensor (it must match a whole module name without "
               "\".weight\", e.g. model\\.layers\\.0\\.mlp\\.down_proj); `lathe tensors MODEL` "
               "lists them",
               compiled_[i].text)});
    }
  }
  return out;
}

std::vector<std::pair<ExpectedTensor, OptionValues>> TensorOverrides::resolve(
    const DecideContext& ctx, const CompressionPlan& plan) const {
  std::vector<CheckProblem> problems;
  auto out = match(ctx.tensors, &plan, &ctx.log, problems);
  if (!problems.empty()) throw ConfigError("", problems[0].field, problems[0].message);
  return out;
}

void TensorOverrides::check(const std::vector<ExpectedTensor>& tensors,
                            std::vector<CheckProblem>& problems) const {
  (void)match(tensors, nullptr, nullptr, problems);
}

std::vector<std::pair<std::string, const OptionValues*>> TensorOverrides::option_sets() const {
  std::vector<std::pair<std::string, const OptionValues*>> sets = {{pass_, &base_}};
  for (size_t i = 0; i < compiled_.size(); ++i)
    sets.push_back({fmt::format("{}.overrides[{}]", pass_, i), &compiled_[i].options});
  return sets;
}

namespace {

class RtnPass : public Pass {
 public:
  explicit RtnPass(const PassInstance& instance) : overrides_(instance) {}

  void decide(const DecideContext& ctx, CompressionPlan& plan) const override {
    for (const auto& [t, opts] : overrides_.resolve(ctx, plan)) {
      TensorPlan p;
      p.method = "rtn";
      p.bits = opts.get_int("bits");
      p.group_size = opts.get_int("group-size");
      p.sym = opts.get_bool("sym");
      plan.tensors[t.name] = p;
      // A sparsegpt that quantized in its own sweep leaves it to this pass, which keeps the zeros.
      if (auto sp = plan.sparsity.find(t.name); sp != plan.sparsity.end())
        sp->second.quantize = false;
    }
  }

  void check(const CheckContext& ctx, std::vector<CheckProblem>& problems) const override {
    overrides_.check(ctx.tensors, problems);
  }

  void apply(LayerApplyContext& ctx) const override { apply_rtn(ctx); }

 private:
  TensorOverrides overrides_;
};

}  // namespace

at::ScalarType scale_storage_dtype(at::ScalarType stored) {
  return stored == at::kBFloat16 ? at::kBFloat16 : at::kHalf;
}

void replace_record(LayerApplyContext& ctx, TensorRecord record) {
  ctx.records.erase(std::remove_if(ctx.records.begin(), ctx.records.end(),
                                   [&](const TensorRecord& o) { return o.name == record.name; }),
                    ctx.records.end());
  ctx.records.push_back(std::move(record));
}

void record_quantized(LayerApplyContext& ctx, LayerTensor& t, const TensorPlan& p,
                      QuantRecord quant, nlohmann::json details) {
  const at::Tensor w = t.value.to(at::kFloat);
  const at::Tensor deq = quant.dequantize();
  // fp64 sums: tens of thousands of squares, and the figure must not depend on BLAS or thread
  // count.
  const double denom = w.to(at::kDouble).square().sum().item<double>();
  TensorRecord r;
  r.name = t.name;
  r.source = t.source;
  r.format = quant_format(p);
  r.bits = p.bits;
  r.group_size = p.group_size;
  r.sym = p.sym;
  r.rel_err = denom > 0 ? (w - deq).to(at::kDouble).square().sum().item<double>() / denom : 0.0;
  r.details = std::move(details);
  for (const TensorRecord& o : ctx.records)
    if (o.name == t.name && !o.sparsity.is_null()) r.sparsity = o.sparsity;
  replace_record(ctx, std::move(r));
  ctx.quant.erase(std::remove_if(ctx.quant.begin(), ctx.quant.end(),
                                 [&](const QuantRecord& o) { return o.name == t.name; }),
                  ctx.quant.end());
  quant.name = t.name;
  ctx.quant.push_back(std::move(quant));
  t.value = deq;  // exact fp32; the shard gets it in the stored dtype
}

void apply_rtn(LayerApplyContext& ctx) {
  for (LayerTensor& t : ctx.tensors) {
    auto it = ctx.plan.tensors.find(t.source);
    if (it == ctx.plan.tensors.end() || it->second.method != "rtn") continue;
    const TensorPlan& p = it->second;
    const QuantSpec spec{p.bits, p.group_size, p.sym, scale_storage_dtype(t.stored)};
    const at::Tensor w = t.value.to(at::kFloat);
    QuantRecord quant;
    if (w.dim() == 3) {  // fused experts [E, out, in]: one linear per expert
      std::vector<QuantRecord> parts;
      for (int64_t e = 0; e < w.size(0); ++e)
        parts.push_back(make_quant_record(t.name, quantize_rtn(w[e], spec), {}));
      quant = stack_quant_records(t.name, parts);
    } else {
      quant = make_quant_record(t.name, quantize_rtn(w, spec), {});
    }
    record_quantized(ctx, t, p, std::move(quant), nullptr);
  }
}

std::unique_ptr<Pass> make_rtn_pass(const PassInstance& instance) {
  return std::make_unique<RtnPass>(instance);
}

std::vector<OptionSpec> weight_grid_options(const std::string& bits_help,
                                            std::vector<OptionSpec> extra) {
  std::vector<OptionSpec> o = {
      make_option("bits", OptionType::kInt, "4", bits_help, 2, 8),
      make_option("group-size", OptionType::kInt, "128",
                  "columns sharing one scale; -1 = a whole row (must divide the input width)", -1,
                  1 << 20),
      make_option("sym", OptionType::kBool, "true",
                  "symmetric (zero point 2^(bits-1)) or asymmetric"),
  };
  o.insert(o.end(), extra.begin(), extra.end());
  o.push_back(make_option("skip", OptionType::kBool, "false",
                          "leave the tensor unquantized (for overrides)"));
  return o;
}

PassInfo rtn_pass_info() {
  return {"rtn",
          "round-to-nearest weight quantization of every decoder linear (no calibration data)",
          weight_grid_options("bits per weight"),
          {},
          true,
          make_rtn_pass};
}

}  // namespace lathe
