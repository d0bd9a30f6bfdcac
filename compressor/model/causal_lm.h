// A causal language model opened from an HF directory: the layer-streaming forward every stage
// (calibration, apply, eval) runs on. Holds the memory-mapped weights, never the whole model.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>
#include <string>

#include "compressor/model/architecture.h"
#include "compressor/model/decoder_layer.h"
#include "compressor/model/model_spec.h"

namespace lathe {

class WeightStore;
class DequantizedWeights;

/// Working precision and device of a forward.
struct ForwardOptions {
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
};

/// Parses the user's device ("cpu" | "cuda") and working dtype ("f32" | "bf16"). ConfigError(where,
/// field = `device_field` / `dtype_field`) for other values, UnsupportedError for cuda without a
/// visible CUDA device.
ForwardOptions parse_forward_options(const std::string& device, const std::string& dtype,
                                     const std::string& where,
                                     const std::string& device_field = "--device",
                                     const std::string& dtype_field = "--dtype");

/// Rows `ids` [B, T] of the embedding table [V, d] (any dtype, e.g. the mapped checkpoint) in
/// `options`' dtype and device, [B, T, d], times spec.embedding_scale rounded to that dtype as
/// transformers' Gemma3TextScaledWordEmbedding does (fp32 scalar, then the working dtype). Ids are
/// not range-checked here.
at::Tensor embed_rows(const ModelSpec& spec, const at::Tensor& table, const at::Tensor& ids,
                      const at::TensorOptions& options);

/// The final norm and LM head weights in the working dtype and device, prepared once for many head
/// calls (zero-copy views of the mapping when the checkpoint holds them in the working dtype).
struct LmHead {
  at::Tensor norm;
  at::Tensor weight;  ///< [V, d]
};

/// Opened model: config, validated weight files and expert layout. Layers are materialised one at
/// a time on request, so resident memory is one layer plus activations.
class CausalLM {
 public:
  /// Opens `model_dir` (config.json + safetensors). Throws like load_model_spec and WeightStore.
  /// With `quantized`, the tensors it holds come from it, dequantized (weight_source.h), and the
  /// checkpoint need not hold them as `.weight`.
  explicit CausalLM(const std::filesystem::path& model_dir, ForwardOptions options = {},
                    std::shared_ptr<const DequantizedWeights> quantized = nullptr);
  ~CausalLM();
  CausalLM(CausalLM&&) noexcept;

  const ModelSpec& spec() const { return spec_; }
  const WeightStore& store() const { return *store_; }
  ExpertLayout layout() const { return layout_; }
  const ForwardOptions& options() const { return options_; }
  /// The quantized-weight source, or nullptr.
  const DequantizedWeights* quantized() const { return quantized_.get(); }

  /// Token ids [B, T] (int64, any values in [0, vocab)) → hidden [B, T, d]. ConfigError for an id
  /// out of range.
  at::Tensor embed(const at::Tensor& ids) const;
  /// Materialises decoder layer `i`; DataError naming the tensor when it is missing or misshapen.
  /// On the CPU the routed experts stay zero-copy views of the mapping (see LayerWeights).
  DecoderLayer load_layer(int64_t i) const;
  /// Final norm and LM head: hidden [B, T, d] → logits [B, T, V] in fp32.
  at::Tensor head(const at::Tensor& hidden) const;
  /// The head's weights, for head(hidden, lm_head) on many chunks without loading them each time.
  LmHead lm_head() const;
  /// head() with prepared weights.
  at::Tensor head(const at::Tensor& hidden, const LmHead& weights) const;

  /// Release the resident mapped pages (WeightStore::release) of every tensor of layer `i`, of
  /// the embedding table, of the final norm and LM head. Pages of the memory-mapped checkpoint
  /// that a forward has read count in RSS until released, so without these calls a pass over the
  /// model grows to the model's size. Always safe: a DecoderLayer or tensor still viewing the
  /// pages re-reads them from the file (page cache) on its next access, so calling these early
  /// costs only time.
  void release_layer(int64_t i) const;
  void release_embedding() const;
  void release_head() const;
  /// Whole forward, one layer resident at a time: ids [B, T] and valid [B, T] → logits [B, T, V].
  at::Tensor logits(const at::Tensor& ids, const at::Tensor& valid,
                    TapObserver* observer = nullptr) const;

 private:
  ModelSpec spec_;
  std::unique_ptr<WeightStore> store_;
  ExpertLayout layout_ = ExpertLayout::kPerExpert;
  ForwardOptions options_;
  std::shared_ptr<const DequantizedWeights> quantized_;
};

}  // namespace lathe
