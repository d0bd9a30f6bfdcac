#include "compressor/model/rotary.h"

#include <ATen/ATen.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/common/json_reader.h"

namespace lathe {
namespace {

/// Llama 3's frequency-dependent rescaling (transformers' _compute_llama3_parameters).
at::Tensor llama3_inv_freq(const at::Tensor& inv_freq, const RopeSpec& rope) {
  const auto params = nlohmann::json::parse(rope.parameters_json);
  JsonReader f(params, "config.json", "rope_parameters", ErrorKind::kConfig);
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

double yarn_mscale(double scale, double mscale) {
  return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

/// YaRN (transformers' _compute_yarn_parameters): blends interpolated and extrapolated
/// frequencies over a ramp between the correction dims; returns the cos/sin attention factor.
double yarn_inv_freq(at::Tensor* inv_freq, const RopeSpec& rope, int64_t dim,
                     int64_t max_positions) {
  const auto params = nlohmann::json::parse(rope.parameters_json);
  JsonReader f(params, "config.json", "rope_parameters", ErrorKind::kConfig);
  const double original = static_cast<double>(f.int_at({"original_max_position_embeddings"}));
  const double factor = f.number_or({"factor"}, static_cast<double>(max_positions) / original);
  const double mscale = f.number_or({"mscale"}, 0.0),
               mscale_all = f.number_or({"mscale_all_dim"}, 0.0);
  double attention = f.number_or({"attention_factor"}, 0.0);
  if (attention == 0.0) {
    attention = mscale != 0 && mscale_all != 0
                    ? yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all)
                    : yarn_mscale(factor, 1.0);
  }
  const double beta_fast = f.number_or({"beta_fast"}, 32.0),
               beta_slow = f.number_or({"beta_slow"}, 1.0);
  const bool truncate = f.bool_or({"truncate"}, true);
  auto correction_dim = [&](double rotations) {
    return dim * std::log(original / (rotations * 2 * M_PI)) / (2 * std::log(rope.theta));
  };
  double low = correction_dim(beta_fast), high = correction_dim(beta_slow);
  if (truncate) low = std::floor(low), high = std::ceil(high);
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const at::Tensor ramp = ((at::arange(dim / 2, at::kFloat) - low) / (high - low)).clamp(0, 1);
  const at::Tensor extrapolation = 1 - ramp;
  *inv_freq = (*inv_freq / factor) * (1 - extrapolation) + *inv_freq * extrapolation;
  return attention;
}

}  // namespace

double softmax_scale_factor(const RopeSpec& rope) {
  if (rope.scaling_type == "default") return 1.0;
  const auto params = nlohmann::json::parse(rope.parameters_json);
  JsonReader f(params, "config.json", "rope_parameters", ErrorKind::kConfig);
  const double mscale_all = f.number_or({"mscale_all_dim"}, 0.0);
  if (mscale_all == 0.0) return 1.0;
  const double m = yarn_mscale(f.number_or({"factor"}, 1.0), mscale_all);
  return m * m;
}

RotaryTables rotary_tables(const RopeSpec& rope, int64_t rot_dim, int64_t seq_len,
                           int64_t max_positions, const at::TensorOptions& options) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  double attention = 1.0;
  // transformers: 1 / (base ** (arange(0, dim, 2).float() / dim)), in float32.
  at::Tensor inv_freq =
      1.0 / at::pow(rope.theta, at::arange(0, rot_dim, 2, at::kLong).to(at::kFloat) / rot_dim);
  if (rope.scaling_type == "linear") {
    inv_freq = inv_freq / rope.factor;
  } else if (rope.scaling_type == "llama3") {
    inv_freq = llama3_inv_freq(inv_freq, rope);
  } else if (rope.scaling_type == "yarn") {
    attention = yarn_inv_freq(&inv_freq, rope, rot_dim, max_positions);
  } else if (rope.scaling_type != "default") {
    throw UnsupportedError(
        "config.json", "rope_parameters.rope_type",
        "\"" + rope.scaling_type + "\" is not supported yet (default, linear, llama3, yarn are)");
  }
  const at::Tensor positions = at::arange(seq_len, f32);
  const at::Tensor freqs = at::outer(positions, inv_freq);
  const at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {(emb.cos() * attention).to(options), (emb.sin() * attention).to(options)};
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
