// CompressionPlan: the decisions of the decide stage, applied by the apply stage (DESIGN.md "Core
// types"; docs/plan.md). Written as plan.json, plain and hand-editable: a user may change which
// experts stay or which tensor gets 8 bits and run `lathe apply` on it. Torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace lathe {

struct ModelSpec;
struct LayerSpec;

/// How one tensor is stored after apply. Tensors without an entry keep their dtype and values.
struct TensorPlan {
  std::string method = "rtn";  ///< "rtn" or "gptq"
  int64_t bits = 4;
  int64_t group_size = 128;  ///< -1 = whole row
  bool sym = true;
  // gptq only (plan.json omits them for rtn):
  std::string act_order = "static";  ///< "none" | "static" | "dynamic" (ALGORITHMS.md §1.5)
  bool mse = false;                  ///< MSE clipping grid for the group parameters
  double damp = 0.01;                ///< λ relative to mean(diag H)
  int64_t act_bits = 0;              ///< 8: inputs int8 per token, dynamic (W8A8); 0: weights only
  bool operator==(const TensorPlan& o) const {
    return method == o.method && bits == o.bits && group_size == o.group_size && sym == o.sym &&
           act_order == o.act_order && mse == o.mse && damp == o.damp && act_bits == o.act_bits;
  }
};

/// W8A8 smoothing of every layer before its quantization (the `smoothquant` pass, ALGORITHMS.md §2;
/// docs/smoothquant.md): enough for `lathe apply --plan` alone to redo it from calibration data.
struct SmoothingPlan {
  double alpha = 0.5;     ///< migration strength in [0, 1]; unused when adaptive
  bool adaptive = false;  ///< HAQ-style α per smoothing group from {0.3, …, 0.9} (§2.3)
  std::string statistic = "absmax";  ///< "absmax" | "range"
  bool v_to_o = false;               ///< also fold v_proj rows into o_proj columns (GQA)
  bool operator==(const SmoothingPlan& o) const {
    return alpha == o.alpha && adaptive == o.adaptive && statistic == o.statistic &&
           v_to_o == o.v_to_o;
  }
};

/// Weight sparsity of one tensor (the `magnitude`, `wanda` and `sparsegpt` passes, ALGORITHMS.md
/// §8.4 and §9; docs/sparsity.md). Pruned weights are stored as zeros in the dense tensor.
struct SparsityPlan {
  std::string method = "wanda";  ///< "magnitude" | "wanda" | "sparsegpt"
  /// Unstructured: the fraction of each output row pruned (sparsegpt: of each 128-column block).
  /// N:M: n / m, informational.
  double ratio = 0.5;
  int64_t n = 0,
          m = 0;  ///< N:M: n zeros in every m consecutive inputs of a row; 0, 0: unstructured
  /// sparsegpt only: quantize in the same sweep with the tensor's `tensors` entry (method "gptq").
  bool quantize = false;
  double damp = 0.01;  ///< sparsegpt only: λ relative to mean(diag H)
  bool operator==(const SparsityPlan& o) const {
    return method == o.method && ratio == o.ratio && n == o.n && m == o.m &&
           quantize == o.quantize && damp == o.damp;
  }
  /// "unstructured" or "2:4".
  std::string pattern() const;
};

/// Carving one dense FFN into an MoE (the `cmoe` pass, ALGORITHMS.md §5; docs/cmoe.md): N experts
/// of I/N neurons, S of them shared (merged into one MLP), A of the N − S routed ones active.
struct CarvePlan {
  int64_t experts = 16;           ///< N
  int64_t shared = 2;             ///< S
  int64_t active = 2;             ///< A
  int64_t carve_samples = 8;      ///< calibration sequences the carve's statistics read
  int64_t atopk = 10;             ///< K_a: neurons marked active per token
  std::string finetune = "none";  ///< "none" | "router"
  double balance_gamma = 1e-3;    ///< γ of the bias update while fine-tuning the router
  int64_t finetune_steps = 0;     ///< router fine-tuning: optimiser steps (0: one epoch)
  double finetune_lr = 1e-3;      ///< router fine-tuning: Adam's learning rate
  bool operator==(const CarvePlan& o) const {
    return experts == o.experts && shared == o.shared && active == o.active &&
           carve_samples == o.carve_samples && atopk == o.atopk && finetune == o.finetune &&
           balance_gamma == o.balance_gamma && finetune_steps == o.finetune_steps &&
           finetune_lr == o.finetune_lr;
  }
};

/// "2:4" → {2, 4}: N:M with 0 < N < M (digits only); nullopt for anything else.
std::optional<std::pair<int64_t, int64_t>> parse_nm_pattern(const std::string& text);
/// A sparsity pattern as passes and plan.json spell it: "unstructured" → {0, 0}, else
/// parse_nm_pattern.
std::optional<std::pair<int64_t, int64_t>> parse_sparsity_pattern(const std::string& text);

class CompressionPlan {
 public:
  std::string pipeline;             ///< canonical pipeline string that produced it
  std::string model;                ///< input model directory, as given
  std::string weights_fingerprint;  ///< of the input model
  /// MoE layer → kept ORIGINAL expert ids, ascending (new id i is experts[i]). Absent: all kept.
  std::map<int64_t, std::vector<int64_t>> experts;
  /// ORIGINAL tensor name (input checkpoint) → format. Absent: unchanged.
  std::map<std::string, TensorPlan> tensors;
  /// ORIGINAL tensor name → its sparsity, applied before any quantization of it (a later
  /// quantization keeps the zeros). Absent: dense.
  std::map<std::string, SparsityPlan> sparsity;
  /// Dense decoder layer → its carve into an MoE (docs/cmoe.md). Absent: the layer stays as it is.
  std::map<int64_t, CarvePlan> carve;
  /// Smoothing applied to every layer before quantization. Absent: none.
  std::optional<SmoothingPlan> smoothing;
  /// The scores an expert-pruning pass ranked by (docs/expert_pruning.md): MoE layer → one score
  /// per ORIGINAL expert id, unnormalised (counts, masses, norms or random draws). Informational:
  /// apply ignores it. Absent: no scoring pass ran.
  std::map<int64_t, std::vector<double>> expert_scores;
  /// Per MoE layer, a factor the apply stage multiplies the KEPT routed experts' down_proj by
  /// (DiEP's β folded in, ALGORITHMS.md §3; exact, since the routed sum is linear in down_proj).
  /// Absent: 1.
  std::map<int64_t, double> expert_scale;
  /// What a trained or searched decision recorded for the report (DiEP: loss curve, mean gate,
  /// gates and β per layer; NAEE: loss per kept set). Pass name → free-form JSON; apply ignores it.
  std::map<std::string, nlohmann::json> diagnostics;
  /// Which pass decided what, for the report ("experts" → "drop-experts").
  std::map<std::string, std::string> decided_by;

  /// plan.json (docs/plan.md).
  nlohmann::json to_json() const;
  /// Reads plan.json; DataError(where = path, field = JSON path) for anything malformed.
  static CompressionPlan from_json(const nlohmann::json& doc, const std::string& where);
  static CompressionPlan read(const std::string& path);
  /// Checks the plan against the input model: expert ids unique, ascending, in range, at least
  /// top_k per layer, only MoE layers; tensor names exist (per expected_tensors) and are 2-d
  /// linears that may be quantized; group sizes divide the input width. DataError naming the field.
  void validate(const ModelSpec& spec, const std::vector<std::string>& tensor_names,
                const std::map<std::string, std::vector<int64_t>>& shapes,
                const std::string& where) const;
};

/// The decoder layers of `spec` once `plan`'s carves are applied (docs/cmoe.md): a carved layer is
/// MoE with N − S routed experts of I/N neurons, top_k A and one shared MLP of S·I/N neurons.
std::vector<LayerSpec> carved_layers(const ModelSpec& spec, const CompressionPlan& plan);

}  // namespace lathe
