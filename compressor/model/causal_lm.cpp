#include "compressor/model/causal_lm.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "compressor/common/errors.h"
#include "compressor/model/layer_weights.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_source.h"
#include "compressor/model/weight_store.h"

namespace lathe {

ForwardOptions parse_forward_options(const std::string& device, const std::string& dtype,
                                     const std::string& where, const std::string& device_field,
                                     const std::string& dtype_field) {
  ForwardOptions f;
  if (dtype == "bf16") {
    f.dtype = at::kBFloat16;
  } else if (dtype != "f32") {
    throw ConfigError(where, dtype_field, "expected f32 or bf16, found \"" + dtype + "\"");
  }
  if (device == "cuda") {
    if (!at::hasCUDA())
      throw UnsupportedError(where, device_field, "no CUDA device visible to this lathe build");
    f.device = at::kCUDA;
  } else if (device != "cpu") {
    throw ConfigError(where, device_field, "expected cpu or cuda, found \"" + device + "\"");
  }
  return f;
}

at::Tensor embed_rows(const ModelSpec& spec, const at::Tensor& table, const at::Tensor& ids,
                      const at::TensorOptions& options) {
  // Rows are gathered from the (mapped) table first, so the table is never converted whole.
  at::Tensor rows = table.index_select(0, ids.reshape({-1}).to(at::kLong))
                        .to(options)
                        .view({ids.size(0), ids.size(1), table.size(1)});
  if (spec.embedding_scale == 1.0) return rows;
  return rows * at::scalar_tensor(spec.embedding_scale, at::kFloat).to(options);
}

CausalLM::CausalLM(const std::filesystem::path& model_dir, ForwardOptions options,
                   std::shared_ptr<const DequantizedWeights> quantized)
    : spec_(load_model_spec(model_dir)),
      store_(std::make_unique<WeightStore>(model_dir.string())),
      options_(options),
      quantized_(std::move(quantized)) {
  layout_ = detect_expert_layout(spec_, [this](const std::string& n) {
    return store_->contains(n) || (quantized_ && quantized_->has(n));
  });
}

CausalLM::~CausalLM() = default;
CausalLM::CausalLM(CausalLM&&) noexcept = default;

at::Tensor CausalLM::embed(const at::Tensor& ids) const {
  if (ids.numel() > 0) {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= spec_.vocab_size) {
      throw ConfigError("", "input_ids",
                        "token id " + std::to_string(lo < 0 ? lo : hi) +
                            " outside the vocabulary [0, " + std::to_string(spec_.vocab_size) +
                            ")");
    }
  }
  const at::Tensor table = load_tensor(*store_, "model.embed_tokens.weight");
  return embed_rows(spec_, table, ids,
                    at::TensorOptions().dtype(options_.dtype).device(options_.device));
}

DecoderLayer CausalLM::load_layer(int64_t i) const {
  const auto opts = at::TensorOptions().dtype(options_.dtype).device(options_.device);
  return DecoderLayer(spec_,
                      load_layer_weights(spec_, *store_, layout_, i, opts, quantized_.get()));
}

namespace {

// Release that skips absent names: it must never be what reports an incomplete checkpoint.
void release_if_present(const WeightStore& store, const std::string& name) {
  if (store.contains(name)) store.release(name);
}

}  // namespace

void CausalLM::release_layer(int64_t i) const {
  std::vector<std::string> names;
  for (const auto& t : expected_layer_tensors(spec_, layout_, i)) {
    release_if_present(*store_, t.name);
    names.push_back(t.name);
  }
  if (quantized_) quantized_->release(names);
}

void CausalLM::release_embedding() const {
  release_if_present(*store_, "model.embed_tokens.weight");
}

void CausalLM::release_head() const {
  release_if_present(*store_, "model.norm.weight");
  release_if_present(*store_,
                     spec_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
}

LmHead CausalLM::lm_head() const {
  const auto opts = at::TensorOptions().dtype(options_.dtype).device(options_.device);
  const std::string head_name =
      spec_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  return {load_tensor(*store_, "model.norm.weight").to(opts),
          load_tensor(*store_, head_name).to(opts)};
}

at::Tensor CausalLM::head(const at::Tensor& hidden, const LmHead& weights) const {
  return at::linear(model_rms_norm(spec_, hidden, weights.norm), weights.weight).to(at::kFloat);
}

at::Tensor CausalLM::head(const at::Tensor& hidden) const {
  return head(hidden, lm_head());
}

at::Tensor CausalLM::logits(const at::Tensor& ids, const at::Tensor& valid,
                            TapObserver* observer) const {
  at::NoGradGuard no_grad;
  const auto opts = at::TensorOptions().dtype(options_.dtype).device(options_.device);
  const ForwardContext ctx = make_forward_context(spec_, valid, opts, observer);
  at::Tensor hidden = embed(ids);
  release_embedding();
  for (int64_t i = 0; i < spec_.num_layers; ++i) {
    hidden = load_layer(i).forward(hidden, ctx);
    release_layer(i);
  }
  at::Tensor out = head(hidden);
  release_head();
  return out;
}

}  // namespace lathe
