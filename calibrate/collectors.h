// Statistics collectors (DESIGN.md stage 1 "observe"; ALGORITHMS.md §0; issue 4 item 2): one
// TapObserver that, during one layer-streaming forward over a CalibrationSet, accumulates per layer
// every statistic the passes read, and hands each finished layer's statistics to the caller.
//
// What is collected (docs/calibrate.md lists the store keys; every sum is over non-padding tokens):
//   router (MoE layers; per task, tap "router"):
//     expert_tokens        [E]    i64  tokens whose selection TopK(t) contains e: the coverage n_e
//     router_rank_count    [k,E]  i64  tokens that selected e at rank r (r = 0: best selection
//     score) router_prob_mass     [E]    f64  Σ_t p_{t,e}, p the router's own softmax / sigmoid (no
//     bias) router_selected_mass [E]    f64  Σ_t p_{t,e}·1[e ∈ TopK(t)] router_top1_count    [E]
//     i64  tokens whose largest raw router logit is e (PreMoe's marker) router_top1_logit    [E]
//     f64  mean raw logit of e over those tokens (0 where the count is 0)
//   channels (task "all"; at every linear-input tap: "attn.in", "attn.o.in", "mlp.in", "mlp.act",
//   "shared.act", "expert[e].in", "expert[e].act"; expert taps see routed tokens only):
//     channel_norm         [in]   f64  ‖X_{:,j}‖₂ = sqrt(Σ_t x_{t,j}²)   (Wanda, OWL)
//     channel_abs_max      [in]   f64  max_t |x_{t,j}|                   (SmoothQuant)
//   neurons (task "all"; tap "mlp" for a dense MLP, "expert[e]" for a routed expert, routed
//   tokens):
//     neuron_atopk_rate    [I]    f64  CMoE activation rate μ_j (ALGORITHMS.md §5.1): per token the
//                                      K_a largest |a_j| of a = SiLU(ĥĜᵀ)⊙(ĥÛᵀ) are marked
//   hessians (task "all"; only at the taps asked for):
//     hessian              [in,in] f32 Σ_t x_t x_tᵀ (unnormalised; the `tokens` attribute is N)
//                                      taps: attn.in, attn.o.in, mlp.in, mlp.act, shared.act,
//                                      expert[e].in (H_r), expert[e].act (H_r), and
//                                      expert[e].act.all (H_a: expert e run on every token)
// Every statistic's `tokens` is the number of tokens that contributed (N_tok, or n_e for experts).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "calibrate/stats_store.h"
#include "compressor/model/model_spec.h"
#include "compressor/model/taps.h"

namespace lathe {

/// Which statistics to collect.
struct CollectorOptions {
  bool router = true;    ///< router statistics (MoE layers only)
  bool channels = true;  ///< channel norms and abs-max
  bool neurons = true;   ///< CMoE ATopK activation rates
  int64_t atopk = 10;    ///< K_a (ALGORITHMS.md §5.1); clamped to I
  /// Hessian taps, spelled as in the header comment but with "expert" standing for every expert:
  /// "attn.in", "attn.o.in", "mlp.in", "mlp.act", "shared.act", "expert.in", "expert.act",
  /// "expert.act.all". ConfigError for anything else.
  std::vector<std::string> hessians;
  /// Working dtype of the forward ("f32", "bf16"): part of the options fingerprint, since it
  /// changes the statistics.
  std::string forward_dtype = "f32";
};

/// Parses a comma-separated hessian tap list ("attn.in,expert.act"); ConfigError(field) naming the
/// bad entry and listing the valid ones.
std::vector<std::string> parse_hessian_taps(const std::string& list, const std::string& field);

/// One finished statistic.
struct CollectedStat {
  StatsKey key;
  at::Tensor value;
  std::string options_fingerprint;
  int64_t tokens = 0;
};

/// The options fingerprint of each statistic group: "router", "channels", "neurons", "hessian".
/// Includes the collector version, so a change in a statistic's meaning invalidates stored ones.
std::string collector_options_fingerprint(const CollectorOptions& options,
                                          const std::string& group);

/// The group of a statistic kind, for collector_options_fingerprint: "hessian", "channels"
/// (channel_*), "neurons" (neuron_*), else "router".
std::string statistic_group(const std::string& kind);

/// Accumulates statistics for one streaming forward. `task_of[s]` is the task index of sequence s
/// (CalibrationSet::task_of), `tasks` their names. Feed it to stream_forward as the observer; after
/// layer i has seen every micro-batch, finish_layer(i) returns its statistics (and frees them).
class StatsCollector : public TapObserver {
 public:
  StatsCollector(const ModelSpec& spec, CollectorOptions options, std::vector<int32_t> task_of,
                 std::vector<std::string> tasks);
  ~StatsCollector() override;

  bool wants(Tap tap, int64_t layer) const override;
  void observe(const TapEvent& event) override;

  /// The statistics of `layer`, sorted by key. Layers without observations give an empty list.
  std::vector<CollectedStat> finish_layer(int64_t layer);

  /// Every key finish_layer would produce for `layer` with these options (for the reuse check:
  /// a store holding all of them, current, needs no forward pass).
  std::vector<StatsKey> expected_keys(int64_t layer) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lathe
