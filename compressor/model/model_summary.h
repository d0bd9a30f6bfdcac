// What `lathe inspect` reports about a model directory: layout, parameters by category, bytes by
// dtype and the memory a streaming run needs. Checks the weights against config.json on the way.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"

namespace lathe {

/// Options of summarize_model.
struct SummaryOptions {
  int64_t samples = 128;      ///< calibration sequences assumed by the memory estimate
  int64_t seq_len = 2048;     ///< tokens per sequence assumed by the memory estimate
  bool check_finite = false;  ///< scan every tensor for NaN/Inf (reads all weight pages)
};

/// Parameters and bytes of one decoder layer.
struct LayerSummary {
  int64_t params = 0;
  uint64_t bytes = 0;
  int64_t routed_params = 0;  ///< of which routed experts
  uint64_t routed_bytes = 0;
};

/// Memory a layer-streaming run needs (DESIGN.md "Memory model"), in bytes.
struct StreamingEstimate {
  int64_t largest_layer = 0;         ///< index of the layer with the most parameters
  uint64_t largest_layer_bytes = 0;  ///< that layer as stored
  uint64_t layer_working_bytes =
      0;  ///< that layer while it runs: non-expert tensors in fp32, routed
          ///< experts as stored (mapped pages), one expert in fp32
  uint64_t activation_buffer_bytes = 0;  ///< samples × seq_len × hidden in bf16
  uint64_t forward_scratch_bytes =
      0;  ///< one sequence through the widest FFN and attention scores, fp32
  uint64_t embedding_working_bytes = 0;  ///< embedding (or LM head) materialised in fp32
  uint64_t peak_bytes = 0;               ///< buffer + max(layer + scratch, embedding/head)
};

/// The full report. `params`/`bytes_by_category` are keyed by category_key(); a tied LM head
/// counts 0 under "lm_head"; tensors the registry does not know are counted under "other".
struct ModelSummary {
  std::string path;
  ModelSpec spec;
  ExpertLayout layout = ExpertLayout::kPerExpert;
  bool has_weights = false;  ///< false: a config-only directory, figures derived from config.json
  int64_t total_params = 0;
  std::map<std::string, int64_t> params;
  uint64_t total_bytes = 0;
  std::map<std::string, uint64_t> bytes_by_category;
  std::map<std::string, uint64_t> bytes_by_dtype;
  std::vector<LayerSummary> layers;
  std::vector<std::string> unrecognised;  ///< checkpoint tensors outside the architecture table
  uint64_t non_finite = 0;                ///< NaN/Inf elements found (with check_finite)
  StreamingEstimate memory;
  size_t num_shards = 0;
};

/// Reads config.json and, when present, the safetensors weights of `model_dir`, and checks that
/// every tensor the config implies exists with the implied shape.
/// Throws ResourceError (missing directory or config), ConfigError/UnsupportedError (config.json),
/// DataError naming the tensor when a weight is missing or has the wrong shape, or NaN/Inf is
/// found.
ModelSummary summarize_model(const std::filesystem::path& model_dir, const SummaryOptions& options);

/// The stable JSON form (documented in docs/inspect.md).
nlohmann::json summary_to_json(const ModelSummary& summary);

/// The human-readable form printed by `lathe inspect`.
std::string summary_to_text(const ModelSummary& summary);

}  // namespace lathe
