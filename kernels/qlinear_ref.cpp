// cpu-ref: the definition every other backend is compared against. Each weight element is decoded
// from its packed words exactly as FORMATS.md §3/§4 state it, then a plain triple loop accumulates
// in double. Deliberately unoptimised (no blocking, no SIMD).
#include <cmath>
#include <vector>

#include "kernels/qlinear.h"
#include "kernels/qlinear_internal.h"

namespace lathe::kernels {
namespace {

// GPTQ v1: qweight [in·b/32, out] packs column o's codes along the input; qzeros [G, out·b/32]
// packs row g's z − 1 along the output; scales [G, out].
float gptq_element(const QuantWeightView& w, int64_t o, int64_t i) {
  const int64_t g = detail::group_of(w, i);
  const int64_t zero_words = w.out * w.bits / 32;
  const int64_t code = detail::stream_value(w.packed + o, w.out, i, w.bits);
  const int64_t zero =
      static_cast<int64_t>(detail::stream_value(w.zeros + g * zero_words, 1, o, w.bits)) + 1;
  return detail::scale_at(w, g * w.out + o) * static_cast<float>(code - zero);
}

// compressed-tensors pack-quantized: weight_packed [out, ⌈in/pf⌉] (lathe's unsigned code = CT code
// + 2^(b−1)), weight_scale [out, G], weight_zero_point [⌈out/pf⌉, G] packed along dim 0 (absent:
// symmetric, zero 2^(b−1)).
float ct_packed_element(const QuantWeightView& w, int64_t o, int64_t i) {
  const int64_t g = detail::group_of(w, i);
  const int64_t groups = w.groups();
  const int64_t row_words = (w.in * w.bits + 31) / 32;
  const int64_t code = detail::stream_value(w.packed + o * row_words, 1, i, w.bits);
  const int64_t zero =
      w.zeros ? detail::stream_value(w.zeros + g, groups, o, w.bits) : int64_t{1} << (w.bits - 1);
  return detail::scale_at(w, o * groups + g) * static_cast<float>(code - zero);
}

}  // namespace

void dequantize_ref(const QuantWeightView& w, float* weight_out) {
  check_view(w);
  if (!weight_out) throw KernelError("dequantize_ref: output is null");
  for (int64_t o = 0; o < w.out; ++o) {
    for (int64_t i = 0; i < w.in; ++i) {
      float v = 0.f;
      switch (w.format) {
        case WeightFormat::kDense: v = w.dense[o * w.in + i]; break;
        case WeightFormat::kGptq: v = gptq_element(w, o, i); break;
        case WeightFormat::kCtPacked: v = ct_packed_element(w, o, i); break;
        case WeightFormat::kCtInt8:  // int8 weight = code − 128; scale [out, 1]
          v = detail::scale_at(w, o) * static_cast<float>(w.int8_weight[o * w.in + i]);
          break;
      }
      weight_out[o * w.in + i] = v;
    }
  }
}

namespace detail {

void qlinear_cpu_ref(const QuantWeightView& w, const float* x, int64_t m, float* y) {
  std::vector<float> weight(static_cast<size_t>(w.out * w.in));
  dequantize_ref(w, weight.data());
  std::vector<float> act(x, x + m * w.in);
  if (w.act_bits == 8)
    for (int64_t t = 0; t < m; ++t)
      quantize_activation_row(x + t * w.in, w.in, nullptr, &act[t * w.in]);
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t o = 0; o < w.out; ++o) {
      double acc = 0;
      const float* a = &act[t * w.in];
      const float* wr = &weight[o * w.in];
      for (int64_t i = 0; i < w.in; ++i) acc += static_cast<double>(a[i]) * wr[i];
      if (w.bias) acc += w.bias[o];
      y[t * w.out + o] = static_cast<float>(acc);
    }
  }
}

}  // namespace detail
}  // namespace lathe::kernels
