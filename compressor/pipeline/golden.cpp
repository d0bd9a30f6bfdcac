#include "compressor/pipeline/golden.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <map>
#include <set>

#include <fmt/format.h>

#include "compressor/common/errors.h"
#include "compressor/model/causal_lm.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/model/layer_weights.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_store.h"
#include "compressor/pipeline/layer_replay.h"

namespace lathe {
namespace {

/// Keeps the taps the golden vectors need, as [R, n] fp32.
class GoldenTaps : public TapObserver {
 public:
  bool wants(Tap tap, int64_t) const override {
    return tap == Tap::kAttnIn || tap == Tap::kAttnOutIn || tap == Tap::kMlpIn ||
           tap == Tap::kMlpAct || tap == Tap::kSharedAct || tap == Tap::kRouterTopK;
  }
  void observe(const TapEvent& e) override {
    const at::Tensor v = e.value->reshape({-1, e.value->size(-1)});
    values[e.tap] = e.tap == Tap::kRouterTopK ? v.clone() : v.to(at::kFloat).clone();
  }
  std::map<Tap, at::Tensor> values;
};

at::Tensor act_input(const at::Tensor& x, int64_t act_bits) {
  return act_bits ? quantize_activations_per_token(x, act_bits) : x;
}

/// The LayerWeights linear of a per-expert-layout role.
const Linear* linear_of(const LayerWeights& w, TensorRole role, int64_t expert, Linear* scratch) {
  switch (role) {
    case TensorRole::kQ: return &w.q;
    case TensorRole::kK: return &w.k;
    case TensorRole::kV: return &w.v;
    case TensorRole::kO: return &w.o;
    case TensorRole::kQA: return &w.q_a;
    case TensorRole::kQB: return &w.q_b;
    case TensorRole::kKVA: return &w.kv_a;
    case TensorRole::kKVB: return &w.kv_b;
    case TensorRole::kDenseGate: return &w.dense_gate;
    case TensorRole::kDenseUp: return &w.dense_up;
    case TensorRole::kDenseDown: return &w.dense_down;
    case TensorRole::kSharedGate: return &w.shared_gate;
    case TensorRole::kSharedUp: return &w.shared_up;
    case TensorRole::kSharedDown: return &w.shared_down;
    case TensorRole::kExpertGate: scratch->weight = w.experts.at(expert).gate; return scratch;
    case TensorRole::kExpertUp: scratch->weight = w.experts.at(expert).up; return scratch;
    case TensorRole::kExpertDown: scratch->weight = w.experts.at(expert).down; return scratch;
    default: return nullptr;
  }
}

/// Name of the golden input a linear of `role` reads.
std::string input_of(TensorRole role, int64_t expert) {
  switch (role) {
    case TensorRole::kQ:
    case TensorRole::kK:
    case TensorRole::kV:
    case TensorRole::kQA:
    case TensorRole::kKVA: return "attn_in";
    case TensorRole::kO: return "attn_out_in";
    case TensorRole::kQB: return "q_latent";
    case TensorRole::kKVB: return "kv_latent";
    case TensorRole::kDenseGate:
    case TensorRole::kDenseUp:
    case TensorRole::kSharedGate:
    case TensorRole::kSharedUp:
    case TensorRole::kExpertGate:
    case TensorRole::kExpertUp: return "mlp_in";
    case TensorRole::kDenseDown: return "mlp_act";
    case TensorRole::kSharedDown: return "shared_act";
    case TensorRole::kExpertDown: return fmt::format("expert_act.{}", expert);
    default: return "";
  }
}

/// The fused-layout tensor role that holds a per-expert role.
TensorRole fused_role(TensorRole role) {
  return role == TensorRole::kExpertDown ? TensorRole::kExpertsDown : TensorRole::kExpertsGateUp;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// The `limit` routed experts (all when negative) the golden rows select most often (ties: lower
/// id).
std::set<int64_t> most_routed_experts(GoldenTaps& taps, const LayerSpec& ls, int64_t limit) {
  std::vector<std::pair<int64_t, int64_t>> counts;  // (−count, expert)
  const at::Tensor topk =
      taps.values.count(Tap::kRouterTopK) ? taps.values[Tap::kRouterTopK] : at::Tensor();
  for (int64_t e = 0; e < ls.num_experts; ++e) {
    const int64_t c = topk.defined() ? (topk == e).sum().item<int64_t>() : 0;
    counts.emplace_back(-c, e);
  }
  std::sort(counts.begin(), counts.end());
  const int64_t keep = limit < 0 ? ls.num_experts : std::min(limit, ls.num_experts);
  std::set<int64_t> chosen;
  for (int64_t k = 0; k < keep; ++k) chosen.insert(counts[k].second);
  return chosen;
}

}  // namespace

GoldenRecorder::GoldenRecorder(const ModelSpec& out_spec, ExpertLayout layout,
                               GoldenOptions options, at::Tensor hidden, std::string source)
    : spec_(out_spec),
      layout_(layout),
      options_(options),
      hidden_(std::move(hidden)),
      source_(std::move(source)) {}

namespace {

/// What a golden linear is recorded for: its quant record (null when lathe did not quantize it),
/// its sparsity pattern ("" when dense) and its stored dtype's width.
struct GoldenSubject {
  const QuantRecord* quant = nullptr;
  std::string sparsity;
  int64_t stored_bits = 16;
};

/// The golden vectors of linear `t` (per-expert layout) of layer weights `w`; computes a routed
/// expert's down-projection input into `inputs` when first needed.
GoldenLinear golden_linear(const ModelSpec& spec, const ExpectedTensor& t, const GoldenSubject& s,
                           const LayerWeights& w, int64_t layer_act_bits,
                           std::map<std::string, at::Tensor>* inputs) {
  const std::string input = input_of(t.role, t.expert);
  Linear scratch;
  const Linear* lin = linear_of(w, t.role, t.expert, &scratch);
  if (input.empty() || !lin || !lin->weight.defined()) {
    throw InternalError(t.name, "",
                        "golden vectors: no input or weight for this compressed linear");
  }
  if (t.role == TensorRole::kExpertDown && !inputs->count(input)) {
    const ExpertWeights& e = w.experts.at(t.expert);
    const at::Tensor x = act_input(inputs->at("mlp_in"), layer_act_bits);
    (*inputs)[input] = gate_activation(spec, at::linear(x, e.gate.to(at::kFloat))) *
                       at::linear(x, e.up.to(at::kFloat));
  }
  const at::Tensor x = inputs->at(input);
  if (!x.defined())
    throw InternalError(t.name, "", "golden vectors: input " + input + " was not observed");
  GoldenLinear l;
  l.module = t.name.substr(0, t.name.size() - std::string(".weight").size());
  l.input = input;
  l.sparsity = s.sparsity;
  if (s.quant) {
    l.bits = s.quant->bits;
    l.group_size = s.quant->group_size;
    l.sym = s.quant->sym;
    l.act_bits = s.quant->act_bits;
  } else {  // pruned only: the stored weight itself
    l.bits = s.stored_bits;
  }
  const at::Tensor bias = lin->bias.defined() ? lin->bias.to(at::kFloat) : at::Tensor();
  l.y = at::linear(act_input(x, l.act_bits), lin->weight.to(at::kFloat), bias).contiguous();
  return l;
}

}  // namespace

GoldenLayer GoldenRecorder::record(int64_t layer, const std::vector<LayerTensor>& tensors,
                                   const std::vector<QuantRecord>& quant,
                                   const std::vector<TensorRecord>& records) {
  at::NoGradGuard no_grad;
  GoldenLayer g;
  g.layer = layer;
  g.source = source_;
  std::map<std::string, GoldenSubject> subjects;  // by output tensor name (fused: the 3-D one)
  int64_t act_bits = 0;
  for (const auto& q : quant) {
    subjects[q.name].quant = &q;
    act_bits = std::max(act_bits, q.act_bits);
  }
  for (const auto& r : records) {
    if (r.sparsity.is_object() && r.sparsity.contains("pattern"))
      subjects[r.name].sparsity = r.sparsity["pattern"].get<std::string>();
  }
  std::map<TensorRole, std::string> fused_names;  // fused layout: role → the layer's 3-D tensor
  for (const auto& t : tensors) {
    fused_names[t.role] = t.name;
    if (subjects.count(t.name)) subjects[t.name].stored_bits = c10::elementSize(t.stored) * 8;
  }
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const LayerWeights w = layer_weights_of(spec_, layout_, layer, tensors, f32, act_bits);
  const DecoderLayer block(spec_, w);
  GoldenTaps taps;
  const int64_t rows = hidden_.size(1);
  const at::Tensor valid = at::ones({1, rows}, at::TensorOptions().dtype(at::kBool));
  const ForwardContext ctx = make_forward_context(spec_, valid, f32, &taps);
  const at::Tensor next = block.forward(hidden_, ctx);
  if (subjects.empty()) {
    hidden_ = next;
    return g;
  }

  // Which routed experts get golden vectors: the most routed among the rows.
  const LayerSpec& ls = spec_.layers[layer];
  const std::set<int64_t> chosen =
      ls.is_moe ? most_routed_experts(taps, ls, options_.experts) : std::set<int64_t>{};

  auto tap = [&](Tap t) { return taps.values.count(t) ? taps.values[t] : at::Tensor(); };
  std::map<std::string, at::Tensor> inputs = {{"attn_in", tap(Tap::kAttnIn)},
                                              {"attn_out_in", tap(Tap::kAttnOutIn)},
                                              {"mlp_in", tap(Tap::kMlpIn)},
                                              {"mlp_act", tap(Tap::kMlpAct)},
                                              {"shared_act", tap(Tap::kSharedAct)}};
  const AttentionSpec& a = spec_.attention;
  if (a.kind == AttentionKind::kMla && inputs["attn_in"].defined()) {
    const at::Tensor x = act_input(inputs["attn_in"], act_bits);
    if (a.q_lora_rank > 0)
      inputs["q_latent"] =
          rms_norm(at::linear(x, w.q_a.weight, w.q_a.bias), w.q_a_norm, spec_.rms_norm_eps);
    const at::Tensor kv = at::linear(x, w.kv_a.weight, w.kv_a.bias).slice(-1, 0, a.kv_lora_rank);
    inputs["kv_latent"] = rms_norm(kv, w.kv_a_norm, spec_.rms_norm_eps);
  }

  bool expert_recorded = false;  // a routed expert is quantized or pruned
  for (const auto& t : expected_layer_tensors(spec_, ExpertLayout::kPerExpert, layer)) {
    if (!is_quantizable(t.role)) continue;
    // The subject: the tensor itself, or the fused tensor holding this expert.
    const std::string& holder =
        layout_ == ExpertLayout::kFused && t.expert >= 0 ? fused_names[fused_role(t.role)] : t.name;
    auto found = subjects.find(holder);
    if (found == subjects.end()) continue;
    if (t.expert >= 0) {
      expert_recorded = true;
      if (!chosen.count(t.expert)) continue;
    }
    g.linears.push_back(golden_linear(spec_, t, found->second, w, act_bits, &inputs));
  }
  if (ls.is_moe && expert_recorded) {
    const ForwardContext plain = make_forward_context(spec_, valid, f32, nullptr);
    g.moe_y = block.mlp(inputs.at("mlp_in"), plain).contiguous();
  }
  // Only the inputs some linear reads are stored (plus mlp_in for the MoE block).
  std::set<std::string> used;
  for (const auto& l : g.linears) used.insert(l.input);
  if (g.moe_y) used.insert("mlp_in");
  for (const auto& name : used) g.inputs[name] = inputs.at(name).contiguous();
  hidden_ = next;
  return g;
}

at::Tensor golden_rows(const ModelSpec& spec, const WeightStore& store, const at::Tensor& calib_ids,
                       const at::Tensor& calib_valid, int64_t rows, std::string* source) {
  at::Tensor ids;
  if (calib_ids.defined() && calib_ids.size(0) > 0) {
    const at::Tensor real = calib_ids[0].index({calib_valid[0]});
    ids = real.slice(0, 0, std::min<int64_t>(rows, real.size(0))).to(at::kLong);
    *source = fmt::format("calibration sample 0, first {} tokens", ids.size(0));
  } else {
    std::vector<int64_t> v;
    for (int64_t k = 0; k < rows; ++k)
      v.push_back(static_cast<int64_t>(splitmix64(static_cast<uint64_t>(k)) % spec.vocab_size));
    ids = at::tensor(v, at::kLong);
    *source = fmt::format("{} token ids drawn with seed 0 (no calibration data in this run)", rows);
  }
  require_tensor(store, "model.embed_tokens.weight", {spec.vocab_size, spec.hidden_size});
  const at::Tensor table = load_tensor(store, "model.embed_tokens.weight");
  return embed_rows(spec, table, ids.unsqueeze(0), at::TensorOptions().dtype(at::kFloat))
      .contiguous();
}

}  // namespace lathe
