#include "compressor/model/rotary.h"

#include <torch/torch.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/common/json_fields.h"

namespace lathe {
namespace {

/// Llama 3's frequency-dependent rescaling (transformers' _compute_llama3_parameters).
at::Tensor llama3_inv_freq(const at::Tensor& inv_freq, const RopeSpec& rope) {
  const auto params = nlohmann::json::parse(rope.parameters_json);
  JsonFields f(params, "config.json", "rope_parameters.");
  const double factor = f.number_or({"factor"}, 8.0);
  const double low = f.number_or({"low_freq_factor"}, 1.0);
  const double high = f.number_or({"high_freq_factor"}, 4.0);
  const double old_len = f.number_or({"original_max_position_embeddings"}, 8192.0);
  const at::Tensor wavelen = 2 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > old_len / low, inv_freq / factor, inv_freq);
  const at::Tensor smooth = (old_len / wavelen - low) / (high - low);
  const at::Tensor smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
  const at::Tensor medium = (wavelen >= old_len / high) & (wavelen <= old_len / low);
  return at::where(medium, smoothed, scaled);
}

}  // namespace

RotaryTables rotary_tables(const RopeSpec& rope, int64_t rot_dim, int64_t seq_len, const at::TensorOptions& options) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  // transformers: 1 / (base ** (arange(0, dim, 2).float() / dim)), in float32.
  at::Tensor inv_freq = 1.0 / at::pow(rope.theta, at::arange(0, rot_dim, 2, at::kLong).to(at::kFloat) / rot_dim);
  if (rope.scaling_type == "linear") {
    inv_freq = inv_freq / rope.factor;
  } else if (rope.scaling_type == "llama3") {
    inv_freq = llama3_inv_freq(inv_freq, rope);
  } else if (rope.scaling_type != "default") {
    throw UnsupportedError("config.json", "rope_parameters.rope_type",
                           "\"" + rope.scaling_type + "\" is not supported yet (default, linear, llama3 are)");
  }
  const at::Tensor positions = at::arange(seq_len, f32);
  const at::Tensor freqs = at::outer(positions, inv_freq);
  const at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {emb.cos().to(options), emb.sin().to(options)};
}

at::Tensor apply_rotary(const at::Tensor& x, const RotaryTables& tables, bool interleaved) {
  const int64_t t = x.size(2);
  const at::Tensor cos = tables.cos.slice(0, 0, t), sin = tables.sin.slice(0, 0, t);
  const int64_t half = x.size(-1) / 2;
  if (interleaved) {
    const at::Tensor c = cos.slice(-1, 0, half), s = sin.slice(-1, 0, half);
    const at::Tensor x1 = x.slice(-1, 0, c10::nullopt, 2), x2 = x.slice(-1, 1, c10::nullopt, 2);
    return at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, -1);
  }
  const at::Tensor x1 = x.slice(-1, 0, half), x2 = x.slice(-1, half);
  return x * cos + at::cat({-x2, x1}, -1) * sin;
}

}  // namespace lathe
