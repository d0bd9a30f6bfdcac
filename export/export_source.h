// What the packed exports (GPTQ, compressed-tensors; docs/export.md) read from a lathe output
// directory OUT: OUT/model (the HF checkpoint, quantized weights stored dequantized), OUT/quant
// (codes, scales, zeros, g_idx: quant_sidecar.h) and OUT/lathe_manifest.json, seen one decoder
// layer at a time as the modules the export writes. Fused 3-D expert tensors (transformers v5's
// `experts.gate_up_proj` / `experts.down_proj`) are split into per-expert modules
// (`experts.{e}.gate_proj` / `up_proj` / `down_proj`, the names every GPTQ / compressed-tensors
// loader reads; FORMATS.md §2 DECISION), so the exports always have the per-expert layout.
// Also the pieces both writers share: module-name regexes, shard and index writing, the atomic
// output directory.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"
#include "compressor/quant/quantizer.h"
#include "export/checkpoint_writer.h"
#include "export/partial_directory.h"
#include "export/quant_export.h"

namespace lathe {

class WeightStore;
class QuantSidecar;

/// One linear layer of the exported model (a module: `<module>.weight` in an HF checkpoint).
struct ExportLinear {
  std::string
      module;  ///< e.g. "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.experts.3.up_proj"
  TensorRole role = TensorRole::kQ;
  bool router = false;  ///< a router / shared-expert gate: never quantized, always skipped by name
  bool quantized = false;  ///< OUT/quant holds it: q and g_idx are set
  QuantizedWeight q;       ///< codes [out, in], scales [out, G], zeros [out, G], spec
  at::Tensor g_idx;        ///< int32 [in]
  int64_t act_bits = 0;    ///< 8: W8A8
  at::Tensor weight;  ///< the OUT/model weight (model dtype) [out, in]: written when not packed
  /// lathe_manifest.json says a sparsity pass pruned it with pattern "2:4" (a fused tensor's
  /// record applies to each of its experts; a dummy expert copies its model).
  bool sparse24 = false;
  int64_t out_features() const { return weight.size(0); }
  int64_t in_features() const { return weight.size(1); }
  /// True when g_idx is not the contiguous c / group_size (act-order with dynamic groups).
  bool permuted_groups() const;
};

/// The tensors of one decoder layer as the export sees them.
struct ExportLayer {
  std::vector<ExportLinear> linears;  ///< model order
  std::vector<std::pair<std::string, at::Tensor>>
      others;  ///< norms, biases, router biases: copied as they are
};

struct ExportSourceOptions {
  bool require_quant = true;  ///< refuse an output directory without quant/ (the packed exports)
  /// with require_quant: accept one without quant/ when some tensor is 2:4-sparse
  /// (compressed-tensors stores those as sparse-24-bitmask)
  bool allow_sparse24 = false;
  bool pad_experts = false;           ///< pad non-uniform expert counts (plan_expert_padding)
  std::string target = "the export";  ///< named in the refusal of non-uniform counts
};

/// A lathe output directory opened for export. Holds the memory-mapped model and the sidecar.
/// With padding (FORMATS.md §6), the export's view has the largest expert count in every MoE layer:
/// dummy experts (zero weights; quantized as zero codes with the layer's expert setting when the
/// real experts are quantized) after the real ones, zero router rows, correction bias −1e4.
class ExportSource {
 public:
  /// Opens `out_dir`. ConfigError when it is not a lathe output directory (no lathe_manifest.json
  /// or model/), has no quant/ while `require_quant` (nothing quantized: "run a quantizing pass
  /// first"; with `allow_sparse24`, unless a manifest record says pattern "2:4"), or has expert
  /// counts that differ between layers and cannot be padded (plan_expert_padding); otherwise throws
  /// like WeightStore / QuantSidecar.
  explicit ExportSource(const std::filesystem::path& out_dir,
                        const ExportSourceOptions& options = {});
  ~ExportSource();

  const std::filesystem::path& out_dir() const { return out_dir_; }
  const std::filesystem::path& model_dir() const { return model_dir_; }
  /// The exported model's spec: padded counts, no groups when padded.
  const ModelSpec& spec() const { return spec_; }
  /// The exported model's config.json: out/model/config.json, with padding applied (global count =
  /// the maximum, no num_experts_per_layer, n_group = topk_group = 1).
  const nlohmann::json& config() const { return config_; }
  /// Dummy experts appended per MoE layer (empty without padding).
  const std::map<int64_t, int64_t>& padding() const { return padding_; }
  /// Warnings for the user (e.g. group-limited routing turned off by padding).
  const std::vector<std::string>& warnings() const { return warnings_; }
  /// The manifest's pipeline string ("" when absent).
  const std::string& pipeline() const { return pipeline_; }
  /// Whether any tensor's manifest record says sparsity pattern "2:4".
  bool any_sparse24() const { return !sparse24_.empty(); }
  /// The model dtype (dtype of the embedding table): compressed-tensors scales are stored in it.
  at::ScalarType model_dtype() const { return model_dtype_; }
  ExpertLayout layout() const { return layout_; }

  /// Decoder layer `i`, per-expert layout, padded; the tensors view the mapped files (the dummy
  /// experts and padded router tensors are new tensors).
  ExportLayer layer(int64_t i) const;
  /// Embedding, final norm and LM head (when untied).
  std::vector<std::pair<std::string, at::Tensor>> head_tensors() const;
  /// Drops the resident pages of layer i (call when its shard is written).
  void release_layer(int64_t i) const;
  /// Every quantizable linear's module name of the exported (padded) model, routers included, in
  /// model order (for name regexes).
  std::vector<std::string> all_linear_modules() const;

 private:
  void pad_layer(int64_t i, ExportLayer* layer) const;

  std::filesystem::path out_dir_, model_dir_;
  ModelSpec model_spec_;  ///< OUT/model as stored (names to read)
  ModelSpec spec_;        ///< the export (padded)
  nlohmann::json config_;
  std::map<int64_t, int64_t> padding_;
  std::vector<std::string> warnings_;
  std::string pipeline_;
  std::set<std::string> sparse24_;  ///< OUT/model tensor names whose record says pattern "2:4"
  std::unique_ptr<WeightStore> store_;
  std::shared_ptr<const QuantSidecar> quant_;
  ExpertLayout layout_ = ExpertLayout::kPerExpert;
  at::ScalarType model_dtype_ = at::kBFloat16;
};

/// Regexes (Python `re.match` semantics, anchored with `$`) that match exactly the module names in
/// `selected` among `all`. Each selected name becomes its most general generalisation — numeric
/// path components (layer, expert) replaced by `\d+`, e.g. `model\.layers\.\d+\.mlp\.down_proj$`
/// or `model\.layers\.0\.mlp\.experts\.\d+\.down_proj$` — whose matches in `all` are all
/// selected, or else its own escaped name. So patterns made for disjoint `selected` sets never
/// match a common name. Sorted, deterministic.
std::vector<std::string> module_patterns(const std::vector<std::string>& all,
                                         const std::set<std::string>& selected);

/// `name` with regex metacharacters escaped ("." → "\.").
std::string escape_regex(const std::string& name);

/// Collects the tensors of one shard.
class ShardTensors {
 public:
  /// Adds `value` (any CPU tensor; made contiguous and kept alive here).
  void add(const std::string& name, const at::Tensor& value);
  const std::vector<std::string>& names() const { return names_; }
  /// The tensors' bytes for CheckpointShards::write (views of the tensors kept here).
  const std::vector<TensorBytes>& bytes() const { return bytes_; }

 private:
  std::vector<std::string> names_;
  std::vector<at::Tensor> values_;
  std::vector<TensorBytes> bytes_;
};

/// Writes the per-layer shards (`model-0000i-of-0000N.safetensors`, N = layers + 1, the last for
/// embedding, norm and head) and `model.safetensors.index.json` into `dir`; `write_layer(i,
/// &shard)` fills layer i's shard. Returns the total tensor bytes.
uint64_t write_export_shards(const ExportSource& src, const std::filesystem::path& dir,
                             const std::map<std::string, std::string>& metadata,
                             const std::function<void(int64_t, ShardTensors*)>& write_layer);

/// The writers behind export_checkpoint (hf_export.cpp, gptq_export.cpp, ct_export.cpp): fill `dir`
/// (shards, index, config.json, side files) and add counts and log lines to `result`.
void write_hf_files(const ExportSource& src, const std::filesystem::path& dir,
                    ExportResult* result);
void write_gptq_files(const ExportSource& src, const std::filesystem::path& dir,
                      ExportResult* result);
void write_ct_files(const ExportSource& src, const std::filesystem::path& dir,
                    ExportResult* result);
/// moe_export.cpp: a cmoe carve as a stock Qwen2-MoE checkpoint (docs/cmoe.md "Export").
void write_qwen2_moe_files(const ExportSource& src, const std::filesystem::path& dir,
                           ExportResult* result);

/// Warnings for vLLM, which loads q/k/v, gate/up (w1/w3) and all experts of an MoE layer as one
/// fused layer with one setting: one line per such set whose modules' `setting` strings differ.
std::vector<std::string> fused_setting_warnings(
    const std::map<std::string, std::string>& setting_by_module);

/// A float tensor's values are exactly representable in `dtype` (round trip is the identity).
bool exact_in(const at::Tensor& values, at::ScalarType dtype);

}  // namespace lathe
