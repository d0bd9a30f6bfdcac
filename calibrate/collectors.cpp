#include "calibrate/collectors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "compressor/common/errors.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/model/fingerprint.h"
#include "compressor/model/layer_weights.h"
#include "compressor/quant/gptq.h"

namespace lathe {
namespace {

const std::vector<std::string>& hessian_tap_names() {
  static const std::vector<std::string> names = {"attn.in",    "attn.o.in",     "mlp.in",
                                                 "mlp.act",    "shared.act",    "expert.in",
                                                 "expert.act", "expert.act.all"};
  return names;
}

std::string expert_tap(int64_t e, const char* suffix) {
  return "expert[" + std::to_string(e) + "]" + suffix;
}

/// Per-row task index of a flattened [B·T] batch.
at::Tensor row_tasks(const TapEvent& ev, const at::Tensor& task_of) {
  const int64_t rows = ev.valid->size(0);
  const at::Tensor seq = at::arange(rows, at::kLong).div(ev.seq_len, "floor") + ev.sequence_begin;
  return task_of.index_select(0, seq);
}

/// [R, n_tasks] f64: 1 where row r is a valid token of task τ.
at::Tensor task_onehot(const TapEvent& ev, const at::Tensor& task_of, int64_t n_tasks) {
  const at::Tensor valid = ev.valid->to(at::kCPU);
  const at::Tensor tasks = row_tasks(ev, task_of);
  return at::zeros({valid.size(0), n_tasks}, at::kDouble)
      .scatter_(1, tasks.unsqueeze(1), valid.to(at::kDouble).unsqueeze(1));
}

/// The valid rows of an event's value (expert taps: of the routed rows), on CPU in fp32.
at::Tensor valid_rows(const TapEvent& ev) {
  at::Tensor mask = ev.valid->to(at::kCPU);
  if (ev.token_index) mask = mask.index_select(0, ev.token_index->to(at::kCPU));
  const at::Tensor x = ev.value->to(at::kCPU, at::kFloat);
  if (mask.all().item<bool>()) return x;
  return x.index_select(0, mask.nonzero().select(1, 0));
}

at::Tensor row_normalised(const at::Tensor& w) {
  const at::Tensor wf = w.to(at::kFloat);
  return wf / wf.norm(2, {1}, true).clamp_min(1e-30);
}

struct RouterAcc {
  at::Tensor tokens;                                                // [n_tasks] f64
  at::Tensor expert_tokens;                                         // [n_tasks, E]
  at::Tensor rank_count;                                            // [n_tasks, k, E]
  at::Tensor prob_mass, selected_mass, top1_count, top1_logit_sum;  // [n_tasks, E]
  at::Tensor pending_probs, pending_onehot;  // of the last logits event, for its top-k event
};

struct ChannelAcc {
  at::Tensor sq_sum, abs_max;  // [in] f64
  int64_t tokens = 0;
};

struct NeuronAcc {
  at::Tensor marks;  // [I] f64
  int64_t tokens = 0;
};

struct HessianAcc {
  at::Tensor h;  // [in, in] f32
  int64_t tokens = 0;
};

}  // namespace

std::vector<std::string> parse_hessian_taps(const std::string& list, const std::string& field) {
  std::vector<std::string> taps;
  std::stringstream in(list);
  std::string item;
  const auto& valid = hessian_tap_names();
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    if (std::find(valid.begin(), valid.end(), item) == valid.end()) {
      std::string names;
      for (const auto& n : valid) names += (names.empty() ? "" : ", ") + n;
      throw ConfigError("", field, "unknown Hessian tap '" + item + "'; expected one of " + names);
    }
    if (std::find(taps.begin(), taps.end(), item) == taps.end()) taps.push_back(item);
  }
  return taps;
}

std::string collector_options_fingerprint(const CollectorOptions& options,
                                          const std::string& group) {
  Fingerprinter fp("lathe.collector." + group + "/1");
  fp.add("forward_dtype", options.forward_dtype);
  if (group == "neurons") fp.add("atopk", options.atopk);
  return fp.finish();
}

std::string statistic_group(const std::string& kind) {
  if (kind == "hessian") return "hessian";
  if (kind.rfind("channel_", 0) == 0) return "channels";
  if (kind.rfind("neuron_", 0) == 0) return "neurons";
  return "router";
}

struct StatsCollector::Impl {
  const ModelSpec& spec;
  CollectorOptions options;
  at::Tensor task_of;  // [N] i64
  std::vector<std::string> tasks;
  std::set<std::string> hessians;
  std::map<int64_t, RouterAcc> router;
  std::map<std::pair<int64_t, std::string>, ChannelAcc> channels;
  std::map<std::pair<int64_t, std::string>, NeuronAcc> neurons;
  std::map<std::pair<int64_t, std::string>, HessianAcc> hess;

  Impl(const ModelSpec& s, CollectorOptions o, std::vector<int32_t> task_of_in,
       std::vector<std::string> t)
      : spec(s), options(std::move(o)), tasks(std::move(t)) {
    std::vector<int64_t> ids(task_of_in.begin(), task_of_in.end());
    task_of = at::tensor(ids, at::kLong);
    hessians = std::set<std::string>(options.hessians.begin(), options.hessians.end());
    if (options.atopk <= 0) throw ConfigError("", "atopk", "must be positive");
  }

  bool hessian(const std::string& tap) const { return hessians.count(tap) > 0; }

  void add_channels(int64_t layer, const std::string& tap, const at::Tensor& x) {
    ChannelAcc& acc = channels[{layer, tap}];
    if (!acc.sq_sum.defined()) {
      acc.sq_sum = at::zeros({x.size(1)}, at::kDouble);
      acc.abs_max = at::zeros({x.size(1)}, at::kDouble);
    }
    if (x.size(0) > 0) {
      acc.sq_sum += x.square().sum(0, false, at::kDouble);
      acc.abs_max = at::maximum(acc.abs_max, std::get<0>(x.abs().max(0)).to(at::kDouble));
    }
    acc.tokens += x.size(0);
  }

  void add_hessian(int64_t layer, const std::string& tap, const at::Tensor& x) {
    HessianAcc& acc = hess[{layer, tap}];
    if (!acc.h.defined()) acc.h = at::zeros({x.size(1), x.size(1)}, at::kFloat);
    accumulate_hessian(acc.h, x);
    acc.tokens += x.size(0);
  }

  void add_neurons(int64_t layer, const std::string& tap, const at::Tensor& x,
                   const at::Tensor& gate, const at::Tensor& up) {
    NeuronAcc& acc = neurons[{layer, tap}];
    const int64_t width = gate.size(0);
    if (!acc.marks.defined()) acc.marks = at::zeros({width}, at::kDouble);
    if (x.size(0) > 0) {
      const at::Tensor h = x / x.norm(2, {1}, true).clamp_min(1e-30);
      const at::Tensor a = gate_activation(spec, at::linear(h, row_normalised(gate))) *
                           at::linear(h, row_normalised(up));
      const int64_t k = std::min(options.atopk, width);
      const at::Tensor idx = std::get<1>(a.abs().topk(k, 1)).reshape({-1});
      acc.marks.index_add_(0, idx, at::ones({idx.size(0)}, at::kDouble));
    }
    acc.tokens += x.size(0);
  }

  void observe_logits(const TapEvent& ev) {
    const LayerSpec& l = spec.layers[ev.layer];
    const int64_t n = static_cast<int64_t>(tasks.size()), e = l.num_experts, k = l.top_k;
    RouterAcc& acc = router[ev.layer];
    if (!acc.tokens.defined()) {
      acc.tokens = at::zeros({n}, at::kDouble);
      acc.expert_tokens = at::zeros({n, e}, at::kDouble);
      acc.rank_count = at::zeros({n, k, e}, at::kDouble);
      acc.prob_mass = at::zeros({n, e}, at::kDouble);
      acc.selected_mass = at::zeros({n, e}, at::kDouble);
      acc.top1_count = at::zeros({n, e}, at::kDouble);
      acc.top1_logit_sum = at::zeros({n, e}, at::kDouble);
    }
    const at::Tensor logits = ev.value->to(at::kCPU, at::kFloat);
    const at::Tensor probs =
        (spec.routing.scoring == ScoringFunc::kSigmoid ? logits.sigmoid() : logits.softmax(-1));
    // (a cmoe carve's "logits" are its scores s; its probabilities are softmax(s), §5.3)
    const at::Tensor onehot_t = task_onehot(ev, task_of, n).t().contiguous();  // [n, R]
    const at::Tensor p = probs.to(at::kDouble);
    acc.tokens += onehot_t.sum(1);
    acc.prob_mass += onehot_t.mm(p);
    const at::Tensor top1 = at::zeros_like(p).scatter_(1, logits.argmax(-1, true), 1.0);
    acc.top1_count += onehot_t.mm(top1);
    acc.top1_logit_sum += onehot_t.mm(top1 * logits.to(at::kDouble));
    acc.pending_probs = p;
    acc.pending_onehot = onehot_t;
  }

  void observe_topk(const TapEvent& ev) {
    RouterAcc& acc = router.at(ev.layer);
    if (!acc.pending_probs.defined())
      throw InternalError("", "router.topk", "top-k tap without its logits");
    const at::Tensor experts = ev.value->to(at::kCPU, at::kLong);
    at::Tensor selected = at::zeros_like(acc.pending_probs);
    for (int64_t r = 0; r < experts.size(1); ++r) {
      const at::Tensor rank =
          at::zeros_like(acc.pending_probs).scatter_(1, experts.slice(1, r, r + 1), 1.0);
      acc.rank_count.select(1, r) += acc.pending_onehot.mm(rank);
      selected += rank;
    }
    acc.expert_tokens += acc.pending_onehot.mm(selected);
    acc.selected_mass += acc.pending_onehot.mm(selected * acc.pending_probs);
    acc.pending_probs = at::Tensor();
    acc.pending_onehot = at::Tensor();
  }

  void observe_mlp_in(const TapEvent& ev) {
    const LayerSpec& l = spec.layers[ev.layer];
    const at::Tensor x = valid_rows(ev);
    if (options.channels) add_channels(ev.layer, "mlp.in", x);
    if (hessian("mlp.in")) add_hessian(ev.layer, "mlp.in", x);
    if (!l.is_moe && options.neurons)
      add_neurons(ev.layer, "mlp", x, ev.weights->dense_gate.weight, ev.weights->dense_up.weight);
    if (l.is_moe && hessian("expert.act.all")) {
      for (int64_t e = 0; e < l.num_experts; ++e) {
        const ExpertWeights& w = ev.weights->experts[e];
        const at::Tensor act = gate_activation(spec, at::linear(x, w.gate.to(at::kFloat))) *
                               at::linear(x, w.up.to(at::kFloat));
        add_hessian(ev.layer, expert_tap(e, ".act.all"), act);
      }
    }
  }

  void observe(const TapEvent& ev) {
    switch (ev.tap) {
      case Tap::kRouterLogits: return observe_logits(ev);
      case Tap::kRouterTopK: return observe_topk(ev);
      case Tap::kMlpIn: return observe_mlp_in(ev);
      case Tap::kExpertIn: {
        const at::Tensor x = valid_rows(ev);
        const std::string tap = expert_tap(ev.expert, ".in");
        if (options.channels) add_channels(ev.layer, tap, x);
        if (hessian("expert.in")) add_hessian(ev.layer, tap, x);
        if (options.neurons) {
          const ExpertWeights& w = ev.weights->experts[ev.expert];
          add_neurons(ev.layer, expert_tap(ev.expert, ""), x, w.gate, w.up);
        }
        return;
      }
      case Tap::kExpertAct: {
        const at::Tensor x = valid_rows(ev);
        const std::string tap = expert_tap(ev.expert, ".act");
        if (options.channels) add_channels(ev.layer, tap, x);
        if (hessian("expert.act")) add_hessian(ev.layer, tap, x);
        return;
      }
      case Tap::kAttnIn:
      case Tap::kAttnOutIn:
      case Tap::kMlpAct:
      case Tap::kSharedAct: {
        const std::string tap = tap_name(ev.tap);
        const at::Tensor x = valid_rows(ev);
        if (options.channels) add_channels(ev.layer, tap, x);
        if (hessian(tap)) add_hessian(ev.layer, tap, x);
        return;
      }
      case Tap::kLayerOut: return;
    }
  }
};

StatsCollector::StatsCollector(const ModelSpec& spec, CollectorOptions options,
                               std::vector<int32_t> task_of, std::vector<std::string> tasks)
    : impl_(
          std::make_unique<Impl>(spec, std::move(options), std::move(task_of), std::move(tasks))) {}

StatsCollector::~StatsCollector() = default;

bool StatsCollector::wants(Tap tap, int64_t layer) const {
  const Impl& m = *impl_;
  const LayerSpec& l = m.spec.layers.at(layer);
  const bool ch = m.options.channels;
  switch (tap) {
    case Tap::kRouterLogits:
    case Tap::kRouterTopK: return l.is_moe && m.options.router;
    case Tap::kAttnIn: return ch || m.hessian("attn.in");
    case Tap::kAttnOutIn: return ch || m.hessian("attn.o.in");
    case Tap::kMlpIn:
      return ch || m.hessian("mlp.in") || (!l.is_moe && m.options.neurons) ||
             (l.is_moe && m.hessian("expert.act.all"));
    case Tap::kMlpAct: return ch || m.hessian("mlp.act");
    case Tap::kSharedAct: return ch || m.hessian("shared.act");
    case Tap::kExpertIn: return ch || m.options.neurons || m.hessian("expert.in");
    case Tap::kExpertAct: return ch || m.hessian("expert.act");
    case Tap::kLayerOut: return false;
  }
  return false;
}

void StatsCollector::observe(const TapEvent& event) {
  impl_->observe(event);
}

std::vector<StatsKey> StatsCollector::expected_keys(int64_t layer) const {
  const Impl& m = *impl_;
  const LayerSpec& l = m.spec.layers.at(layer);
  std::vector<StatsKey> keys;
  auto channel_and_hessian = [&](const std::string& tap, const std::string& hessian_name) {
    if (m.options.channels) {
      keys.push_back({"channel_norm", layer, tap, "all"});
      keys.push_back({"channel_abs_max", layer, tap, "all"});
    }
    if (m.hessian(hessian_name)) keys.push_back({"hessian", layer, tap, "all"});
  };
  channel_and_hessian("attn.in", "attn.in");
  channel_and_hessian("attn.o.in", "attn.o.in");
  channel_and_hessian("mlp.in", "mlp.in");
  if (!l.is_moe) {
    channel_and_hessian("mlp.act", "mlp.act");
    if (m.options.neurons) keys.push_back({"neuron_atopk_rate", layer, "mlp", "all"});
  } else {
    if (m.options.router) {
      for (const auto& task : m.tasks) {
        for (const char* kind :
             {"expert_tokens", "router_rank_count", "router_prob_mass", "router_selected_mass",
              "router_top1_count", "router_top1_logit"}) {
          keys.push_back({kind, layer, "router", task});
        }
      }
    }
    for (int64_t e = 0; e < l.num_experts; ++e) {
      channel_and_hessian(expert_tap(e, ".in"), "expert.in");
      channel_and_hessian(expert_tap(e, ".act"), "expert.act");
      if (m.hessian("expert.act.all"))
        keys.push_back({"hessian", layer, expert_tap(e, ".act.all"), "all"});
      if (m.options.neurons) keys.push_back({"neuron_atopk_rate", layer, expert_tap(e, ""), "all"});
    }
    if (l.shared_intermediate > 0) channel_and_hessian("shared.act", "shared.act");
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}

std::vector<CollectedStat> StatsCollector::finish_layer(int64_t layer) {
  Impl& m = *impl_;
  const LayerSpec& l = m.spec.layers.at(layer);
  std::vector<CollectedStat> out;
  const std::string fp_router = collector_options_fingerprint(m.options, "router");
  const std::string fp_channels = collector_options_fingerprint(m.options, "channels");
  const std::string fp_neurons = collector_options_fingerprint(m.options, "neurons");
  const std::string fp_hessian = collector_options_fingerprint(m.options, "hessian");

  if (auto it = m.router.find(layer); it != m.router.end()) {
    const RouterAcc& a = it->second;
    for (size_t t = 0; t < m.tasks.size(); ++t) {
      const std::string& task = m.tasks[t];
      const int64_t tokens = static_cast<int64_t>(std::llround(a.tokens[t].item<double>()));
      const at::Tensor count = a.top1_count[t];
      const at::Tensor mean_logit =
          at::where(count > 0, a.top1_logit_sum[t] / count.clamp_min(1.0), 0.0);
      out.push_back({{"expert_tokens", layer, "router", task},
                     a.expert_tokens[t].round().to(at::kLong),
                     fp_router,
                     tokens});
      out.push_back({{"router_rank_count", layer, "router", task},
                     a.rank_count[t].round().to(at::kLong),
                     fp_router,
                     tokens});
      out.push_back(
          {{"router_prob_mass", layer, "router", task}, a.prob_mass[t].clone(), fp_router, tokens});
      out.push_back({{"router_selected_mass", layer, "router", task},
                     a.selected_mass[t].clone(),
                     fp_router,
                     tokens});
      out.push_back({{"router_top1_count", layer, "router", task},
                     count.round().to(at::kLong),
                     fp_router,
                     tokens});
      out.push_back({{"router_top1_logit", layer, "router", task}, mean_logit, fp_router, tokens});
    }
    m.router.erase(it);
  }
  for (auto it = m.channels.begin(); it != m.channels.end();) {
    if (it->first.first != layer) {
      ++it;
      continue;
    }
    const ChannelAcc& a = it->second;
    out.push_back(
        {{"channel_norm", layer, it->first.second, "all"}, a.sq_sum.sqrt(), fp_channels, a.tokens});
    out.push_back(
        {{"channel_abs_max", layer, it->first.second, "all"}, a.abs_max, fp_channels, a.tokens});
    it = m.channels.erase(it);
  }
  for (auto it = m.neurons.begin(); it != m.neurons.end();) {
    if (it->first.first != layer) {
      ++it;
      continue;
    }
    const NeuronAcc& a = it->second;
    const at::Tensor rate = a.tokens > 0 ? a.marks / static_cast<double>(a.tokens) : a.marks;
    out.push_back(
        {{"neuron_atopk_rate", layer, it->first.second, "all"}, rate, fp_neurons, a.tokens});
    it = m.neurons.erase(it);
  }
  for (auto it = m.hess.begin(); it != m.hess.end();) {
    if (it->first.first != layer) {
      ++it;
      continue;
    }
    out.push_back(
        {{"hessian", layer, it->first.second, "all"}, it->second.h, fp_hessian, it->second.tokens});
    it = m.hess.erase(it);
  }
  // Experts that received no token still get their (zero) statistics, so every run stores the same
  // keys.
  if (l.is_moe) {
    std::set<StatsKey> have;
    for (const auto& s : out) have.insert(s.key);
    for (const auto& key : expected_keys(layer)) {
      if (have.count(key) || key.task != "all") continue;
      const bool input_side =
          key.tap.size() >= 3 && key.tap.compare(key.tap.size() - 3, 3, ".in") == 0;
      const int64_t width = input_side ? m.spec.hidden_size : l.expert_intermediate;
      if (key.kind == "channel_norm" || key.kind == "channel_abs_max") {
        out.push_back({key, at::zeros({width}, at::kDouble), fp_channels, 0});
      } else if (key.kind == "neuron_atopk_rate") {
        out.push_back({key, at::zeros({l.expert_intermediate}, at::kDouble), fp_neurons, 0});
      } else if (key.kind == "hessian") {
        out.push_back({key, at::zeros({width, width}, at::kFloat), fp_hessian, 0});
      }
    }
  }
  std::sort(out.begin(), out.end(),
            [](const CollectedStat& a, const CollectedStat& b) { return a.key < b.key; });
  return out;
}

}  // namespace lathe
