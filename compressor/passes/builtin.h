// Factories of the built-in passes, for registry.cpp only.
#pragma once

#include <functional>
#include <memory>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "compressor/model/architecture.h"
#include "compressor/passes/context.h"
#include "compressor/passes/pass.h"
#include "compressor/passes/plan.h"

namespace lathe {

/// Each pass's description (name, summary, option schema, statistics, factory), one per line of
/// passes.def, defined beside the pass.
#define LATHE_PASS(id) PassInfo id##_pass_info();
#include "compressor/passes/passes.def"
#undef LATHE_PASS

/// The weight-grid options of rtn and gptq: bits (with `bits_help`), group-size, sym, then
/// `extra`, then skip (for overrides). rtn.cpp.
std::vector<OptionSpec> weight_grid_options(const std::string& bits_help,
                                            std::vector<OptionSpec> extra = {});
std::unique_ptr<Pass> make_rtn_pass(const PassInstance& instance);           // rtn.cpp
std::unique_ptr<Pass> make_drop_experts_pass(const PassInstance& instance);  // drop_experts.cpp
std::unique_ptr<Pass> make_gptq_pass(const PassInstance& instance);          // gptq_pass.cpp
std::unique_ptr<Pass> make_smoothquant_pass(const PassInstance& instance);   // smoothquant.cpp
// expert_pruning.cpp (ALGORITHMS.md §7):
std::unique_ptr<Pass> make_experts_frequency_pass(const PassInstance& instance);
std::unique_ptr<Pass> make_experts_mass_pass(const PassInstance& instance);
std::unique_ptr<Pass> make_experts_router_norm_pass(const PassInstance& instance);
std::unique_ptr<Pass> make_experts_random_pass(const PassInstance& instance);
std::unique_ptr<Pass> make_experts_naee_pass(const PassInstance& instance);  // naee.cpp
std::unique_ptr<Pass> make_diep_pass(const PassInstance& instance);  // diep.cpp (ALGORITHMS.md §3)
std::unique_ptr<Pass> make_tcess_pass(
    const PassInstance& instance);  // tcess.cpp (ALGORITHMS.md §4)

/// Calibration statistics of one linear input in the layer being applied: Σ x xᵀ ([in, in] f32) or,
/// diagonal only, Σ x_j² ([in] f64), over `tokens` real tokens.
struct LinearInput {
  at::Tensor sum;
  int64_t tokens = 0;
  void add(const at::Tensor& x, bool diagonal_only);  ///< x [n, in], real tokens only
};

/// What one 2-d linear (a fused expert tensor: one per expert) gets: its input statistics (null:
/// no calibration data reached it) and the facts behind them for the manifest (h_source "all" /
/// "routed" / "none", routed_tokens, rule).
struct SliceInput {
  const LinearInput* input = nullptr;
  nlohmann::json details;
};
using LinearInputVisitor = std::function<void(LayerTensor&, std::vector<SliceInput>&)>;

/// The engine of gptq, sparsegpt and wanda (gptq_pass.cpp): the tensors `select` picks, in the
/// true-sequential sub-groups of ALGORITHMS.md §1.6; before each sub-group the layer as it is now
/// is replayed over ctx.activations and its inputs' statistics gathered (routed experts by the
/// coverage rule of §1.7); then `visit` gets each tensor with one SliceInput per 2-d linear, and
/// may change it (the next sub-group's replay sees the change). Without ctx.activations every
/// input is null. `pass` names the pass in warnings.
void for_each_linear_input(LayerApplyContext& ctx,
                           const std::function<bool(const LayerTensor&)>& select,
                           bool diagonal_only, const std::string& pass,
                           const LinearInputVisitor& visit);

/// GPTQ of every tensor of the layer whose plan entry has method "gptq" (gptq_pass.cpp), with the
/// entry's bits / group / sym / act_order / mse / damp / act_bits: true-sequential sub-groups
/// (ALGORITHMS.md §1.6), Hessians of the CURRENT inputs from ctx.activations (replayed between
/// sub-groups), the MoE coverage rule of §1.7 per expert, data-free RTN with MSE clipping when
/// ctx.activations is null. Each tensor's value becomes its exact fp32 dequantization, with a
/// QuantRecord in ctx.quant and a TensorRecord (details: tokens, H source, rule, λ, retries, …).
void apply_gptq(LayerApplyContext& ctx);

/// W8A8 of one layer (smoothquant.cpp): when plan.smoothing is set, one replay of the layer over
/// ctx.activations gathers per-channel activation statistics, the SmoothQuant scales are folded
/// exactly into norms and weights (ALGORITHMS.md §2.1; MoE: attention and per-expert up → down
/// only, §2.4), tensors smoothed but not quantized go back to their stored dtype; then apply_gptq,
/// and every smoothed tensor's record gets details.smoothing (group, α, tokens). Without
/// plan.smoothing: apply_gptq alone. ConfigError when smoothing is asked for without activations.
/// `lathe apply --plan` on a plan with "smoothing" runs this instead of apply_gptq.
void apply_smoothquant(LayerApplyContext& ctx);

/// Expert surgery of one layer per plan.experts (drop_experts.cpp): router rows and selection bias
/// sliced, removed experts' tensors dropped (recorded as "removed"), kept ones renumbered.
void apply_expert_surgery(LayerApplyContext& ctx);

/// Pruning of every tensor of the layer whose plan.sparsity entry has method `method`
/// ("magnitude", "wanda", "sparsegpt"; sparsity.cpp): the value becomes the pruned weight in its
/// stored dtype (sparsegpt with `quantize`: its exact dequantization, with a QuantRecord), with a
/// TensorRecord whose `sparsity` says what was done. wanda and sparsegpt read ctx.activations
/// (magnitude pruning without them, with a warning).
void apply_sparsity(LayerApplyContext& ctx, const std::string& method);

/// The carve of one dense layer per plan.carve (cmoe.cpp; ALGORITHMS.md §5, docs/cmoe.md): one
/// replay gathers the MLP inputs of the first carve_samples calibration sequences, the FFN is
/// carved (carve_ffn), its dense gate/up/down are replaced by the router (Wg, Wc, extra_scale, b),
/// the routed experts and the shared MLP named as ctx.out_spec says, and with finetune "router" the
/// router is trained. The router's TensorRecord holds the carve (neuron lists, representatives).
/// ConfigError without ctx.activations.
void apply_carve(LayerApplyContext& ctx);

/// Round-to-nearest of every tensor of the layer whose plan entry has method "rtn" (rtn.cpp): the
/// value becomes its exact fp32 dequantization (record_quantized).
void apply_rtn(LayerApplyContext& ctx);

/// A weight-quantization pass's per-tensor options (rtn, gptq): the instance's options overlaid by
/// its first matching override (ECMAScript regex, full match on the module name without
/// ".weight"), for every quantizable tensor of a kept expert or of no expert, in model order.
class TensorOverrides {
 public:
  /// ConfigError (field "<pass>.overrides[i].match") for an invalid regex.
  explicit TensorOverrides(const PassInstance& instance);
  /// Options per tensor (skip = true leaves it out). Each match is logged. ConfigError for the
  /// first of check's problems.
  std::vector<std::pair<ExpectedTensor, OptionValues>> resolve(const DecideContext& ctx,
                                                               const CompressionPlan& plan) const;
  /// Every problem with the options on the model's tensors, once per option set (the pass's own
  /// options, each override): a group size that does not divide a tensor's input width
  /// ("<pass>.group-size" or "<pass>.overrides[i].group-size"), an override that matches no
  /// quantizable tensor ("<pass>.overrides[i].match").
  void check(const std::vector<ExpectedTensor>& tensors, std::vector<CheckProblem>& problems) const;
  /// The option sets a tensor can get, with the field prefix that names each in messages: the
  /// pass's own ("gptq") and each override's ("gptq.overrides[0]", holding only what it sets).
  std::vector<std::pair<std::string, const OptionValues*>> option_sets() const;

 private:
  struct Compiled {
    std::regex re;
    std::string text;
    OptionValues options;
  };
  /// resolve's work on `tensors` (experts not kept in `plan` left out when it is given), matches
  /// logged into `log` when it is given, problems appended to `problems`.
  std::vector<std::pair<ExpectedTensor, OptionValues>> match(
      const std::vector<ExpectedTensor>& tensors, const CompressionPlan* plan,
      std::vector<std::string>* log, std::vector<CheckProblem>& problems) const;
  std::string pass_;
  OptionValues base_;
  std::vector<Compiled> compiled_;
};

/// The scale storage type for a tensor stored as `stored` (QuantSpec::scale_dtype): bf16 for bf16
/// models (compressed-tensors stores model-dtype scales, and these are exact in fp16 too), fp16
/// otherwise (GPTQ stores fp16).
at::ScalarType scale_storage_dtype(at::ScalarType stored);

/// Appends `record` to ctx.records, replacing an earlier record of the same output name.
void replace_record(LayerApplyContext& ctx, TensorRecord record);

/// Records tensor `t` as quantized by `p`: the TensorRecord (weight-space rel_err, `details`),
/// `quant` into ctx.quant (replacing one of the same name) and t.value = its exact dequantization.
void record_quantized(LayerApplyContext& ctx, LayerTensor& t, const TensorPlan& p,
                      QuantRecord quant, nlohmann::json details);

/// "rtn-int4-g128-sym": the manifest's format of a quantized tensor.
std::string quant_format(const TensorPlan& plan);

}  // namespace lathe
