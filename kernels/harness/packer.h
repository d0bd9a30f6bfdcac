// Random quantized weights in the stored layouts of FORMATS.md §3/§4, packed by the harness's own
// packer (written from the FORMATS text, independent of export/gptq_pack.cpp), owning the buffers a
// QuantWeightView points into.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/qlinear.h"

namespace lathe::kernels::harness {

/// What to build: format, bits, group size (−1 = per channel), symmetric zero points, an act-order
/// (non-contiguous) g_idx, scale dtype, activation bits, bias.
struct WeightParams {
  WeightFormat format = WeightFormat::kGptq;
  int64_t bits = 4;
  int64_t group_size = 128;
  bool sym = true;
  bool act_order = false;
  ScaleType scale_type = ScaleType::kF16;
  int64_t act_bits = 0;
  bool bias = false;
  int64_t out = 0, in = 0;
};

/// A packed weight and its buffers; view() points into them (do not copy a PackedWeight after
/// taking a view: the buffers move with it, the view does not).
class PackedWeight {
 public:
  /// Random codes in [0, 2^b − 1], zeros (symmetric 2^(b−1); asymmetric GPTQ in [1, 2^b], CT in
  /// [0, 2^b − 1]), scales ~ U(0.5, 1.5)/2^(b−1)/8 rounded to the scale type, g_idx = a random
  /// permutation's group when act_order; bias ~ U(−0.5, 0.5).
  PackedWeight(const WeightParams& p, std::mt19937_64& rng);
  const QuantWeightView& view() const { return view_; }
  /// Bytes a kernel reads for the weight: packed codes + scales + zeros + g_idx + bias.
  double weight_bytes() const;

 private:
  void pack_gptq(const std::vector<uint32_t>& codes, const std::vector<uint32_t>& zeros);
  void pack_ct(const std::vector<uint32_t>& codes, const std::vector<uint32_t>& zeros);
  void store_scales(const std::vector<float>& s);

  WeightParams p_;
  QuantWeightView view_;
  std::vector<float> dense_, bias_;
  std::vector<int32_t> packed_, zeros_, g_idx_;
  std::vector<int8_t> int8_;
  std::vector<uint16_t> scales16_;
  std::vector<float> scales32_;
};

/// Writes value v (< 2^bits) at stream bits [bits·j, bits·j + bits) of a little-endian stream of
/// 32-bit words, word k at words[k·stride] (FORMATS.md §3 packing, the 3-bit scheme included).
void put_stream_value(int32_t* words, int64_t stride, int64_t j, int64_t bits, uint32_t v);

}  // namespace lathe::kernels::harness
