// `rtn`: round-to-nearest weight quantization (ALGORITHMS.md §1.4's quantizer without GPTQ's error
// feedback). Decide: every quantizable linear gets a TensorPlan (per-tensor overrides by regex, first
// match wins). Apply: the weight is replaced by its dequantized values in the stored dtype, so the HF
// checkpoint in out/model computes what the packed export will.
#include <torch/torch.h>

#include <fmt/format.h>

#include <regex>

#include "compressor/common/errors.h"
#include "compressor/passes/builtin.h"
#include "compressor/passes/context.h"
#include "compressor/quant/quantizer.h"

namespace lathe {

bool is_quantizable(TensorRole role) {
  switch (role) {
    case TensorRole::kQ: case TensorRole::kK: case TensorRole::kV: case TensorRole::kO:
    case TensorRole::kQA: case TensorRole::kQB: case TensorRole::kKVA: case TensorRole::kKVB:
    case TensorRole::kDenseGate: case TensorRole::kDenseUp: case TensorRole::kDenseDown:
    case TensorRole::kExpertGate: case TensorRole::kExpertUp: case TensorRole::kExpertDown:
    case TensorRole::kExpertsGateUp: case TensorRole::kExpertsDown:
    case TensorRole::kSharedGate: case TensorRole::kSharedUp: case TensorRole::kSharedDown:
      return true;
    default:
      return false;  // norms, routers, biases, embeddings and the LM head stay as they are (§1.6)
  }
}

std::string quant_format(const TensorPlan& p) {
  return fmt::format("{}-int{}-g{}-{}", p.method, p.bits, p.group_size, p.sym ? "sym" : "asym");
}

namespace {

struct CompiledOverride {
  std::regex re;
  std::string text;
  OptionValues options;
};

class RtnPass : public Pass {
 public:
  explicit RtnPass(const PassInstance& instance) : options_(instance.options) {
    for (const auto& o : instance.overrides) {
      try {
        overrides_.push_back({std::regex(o.match, std::regex::ECMAScript), o.match, o.options});
      } catch (const std::regex_error& e) {
        throw ConfigError("", "rtn.overrides.match", "\"" + o.match + "\" is not a valid regex: " + e.what());
      }
    }
  }

  void decide(const DecideContext& ctx, CompressionPlan& plan) const override {
    for (const ExpectedTensor& t : ctx.tensors) {
      if (!is_quantizable(t.role)) continue;
      if (t.expert >= 0) {
        auto kept = plan.experts.find(t.layer);
        if (kept != plan.experts.end() && !std::binary_search(kept->second.begin(), kept->second.end(), t.expert)) continue;
      }
      std::string module = t.name;
      if (module.size() > 7 && module.compare(module.size() - 7, 7, ".weight") == 0) module.resize(module.size() - 7);
      OptionValues opts = options_;
      for (const auto& o : overrides_) {
        if (!std::regex_match(module, o.re)) continue;
        for (const auto& [k, v] : o.options.values()) opts.set(k, v);
        ctx.log.push_back(fmt::format("rtn: {} matches override \"{}\"", t.name, o.text));
        break;
      }
      if (opts.get_bool("skip")) {
        plan.tensors.erase(t.name);
        continue;
      }
      TensorPlan p;
      p.method = "rtn";
      p.bits = opts.get_int("bits");
      p.group_size = opts.get_int("group-size");
      p.sym = opts.get_bool("sym");
      const int64_t in = t.shape.back();
      if (p.group_size == 0 || p.group_size < -1 || (p.group_size > 0 && in % p.group_size != 0)) {
        throw ConfigError("", "rtn.group-size",
                          fmt::format("{} does not divide the input width {} of {}; use a divisor or -1", p.group_size,
                                      in, t.name));
      }
      plan.tensors[t.name] = p;
    }
  }

  void apply(LayerApplyContext& ctx) const override { apply_rtn(ctx); }

 private:
  OptionValues options_;
  std::vector<CompiledOverride> overrides_;
};

}  // namespace

void apply_rtn(LayerApplyContext& ctx) {
  for (LayerTensor& t : ctx.tensors) {
    auto it = ctx.plan.tensors.find(t.source);
    if (it == ctx.plan.tensors.end() || it->second.method != "rtn") continue;
    const TensorPlan& p = it->second;
    const QuantSpec spec{p.bits, p.group_size, p.sym};
    const at::Tensor w = t.value.to(at::kFloat);
    at::Tensor deq;
    if (w.dim() == 3) {  // fused experts [E, out, in]: one linear per expert
      std::vector<at::Tensor> parts;
      for (int64_t e = 0; e < w.size(0); ++e) parts.push_back(quantize_rtn(w[e], spec).dequantize());
      deq = at::stack(parts);
    } else {
      deq = quantize_rtn(w, spec).dequantize();
    }
    const double denom = w.square().sum().item<double>();
    TensorRecord r;
    r.name = t.name;
    r.source = t.source;
    r.format = quant_format(p);
    r.bits = p.bits;
    r.group_size = p.group_size;
    r.sym = p.sym;
    r.rel_err = denom > 0 ? (w - deq).square().sum().item<double>() / denom : 0.0;
    ctx.records.push_back(r);
    t.value = deq.to(t.value.scalar_type());
  }
}

std::unique_ptr<Pass> make_rtn_pass(const PassInstance& instance) { return std::make_unique<RtnPass>(instance); }

}  // namespace lathe
