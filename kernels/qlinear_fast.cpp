// cpu-fast: picks a kernel by format, m and CPU features, prepares the per-call data and splits
// the outputs over OpenMP threads. The AVX2 workers are in qlinear_fast_avx2.cpp; without AVX2 a
// portable path decodes one row at a time and accumulates in fp32. Never materialises the whole
// fp32 weight.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/qlinear_fast.h"
#include "kernels/qlinear_internal.h"

namespace lathe::kernels {
namespace fast {

void decode_row_scalar(const QuantWeightView& w, int64_t o, float* row) {
  const int64_t in = w.in, groups = w.groups(), b = w.bits;
  if (w.format == WeightFormat::kDense) {
    std::copy(w.dense + o * in, w.dense + (o + 1) * in, row);
    return;
  }
  if (w.format == WeightFormat::kCtInt8) {
    const float s = detail::scale_at(w, o);
    for (int64_t i = 0; i < in; ++i) row[i] = s * static_cast<float>(w.int8_weight[o * in + i]);
    return;
  }
  std::vector<float> scale(groups);
  std::vector<int64_t> zero(groups);
  const bool gptq = w.format == WeightFormat::kGptq;
  for (int64_t g = 0; g < groups; ++g) {
    if (gptq) {
      scale[g] = detail::scale_at(w, g * w.out + o);
      zero[g] = detail::stream_value(w.zeros + g * (w.out * b / 32), 1, o, b) + 1;
    } else {
      scale[g] = detail::scale_at(w, o * groups + g);
      zero[g] = w.zeros ? detail::stream_value(w.zeros + g, groups, o, b) : int64_t{1} << (b - 1);
    }
  }
  const int32_t* words = gptq ? w.packed + o : w.packed + o * ((in * b + 31) / 32);
  const int64_t stride = gptq ? w.out : 1;
  for (int64_t i = 0; i < in; ++i) {
    const int64_t g = detail::group_of(w, i);
    row[i] =
        scale[g] * static_cast<float>(
                       static_cast<int64_t>(detail::stream_value(words, stride, i, b)) - zero[g]);
  }
}

}  // namespace fast

namespace detail {
namespace {

// Portable path: one decoded row at a time, fp32 accumulation.
void qlinear_portable(const QuantWeightView& w, const float* x, int64_t m, float* y) {
#pragma omp parallel
  {
    std::vector<float> row(w.in);
#pragma omp for schedule(dynamic, 16)
    for (int64_t o = 0; o < w.out; ++o) {
      fast::decode_row_scalar(w, o, row.data());
      for (int64_t t = 0; t < m; ++t) {
        const float* xt = x + t * w.in;
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < w.in; ++i) acc += xt[i] * row[i];
        y[t * w.out + o] = acc + (w.bias ? w.bias[o] : 0.f);
      }
    }
  }
}

// GPTQ GEMV bands: each group cut into runs of one 32-input block.
bool gemv_bands(const QuantWeightView& w, const float* x, std::vector<fast::Band>* bands) {
  if (w.in % 32 != 0 || !trivial_g_idx(w)) return false;
  const int64_t gs = w.group_size <= 0 || w.group_size >= w.in ? w.in : w.group_size;
  if (gs % 32 != 0) return false;
  // One 32-block per band: B concurrent row streams (measured: 128-input bands, i.e. 4B streams,
  // ran 1.4-2x slower on the 8192-wide case; the hardware prefetcher loses track).
  constexpr int64_t band = 32;
  for (int64_t g = 0, k0 = 0; k0 < w.in; ++g, k0 += gs) {
    const int64_t k1 = std::min(w.in, k0 + gs);
    double xsum = 0;
    for (int64_t i = k0; i < k1; ++i) xsum += x[i];
    for (int64_t b0 = k0; b0 < k1; b0 += band) {
      const int64_t b1 = std::min(k1, b0 + band);
      bands->push_back({b0, b1, g, b0 == k0, b1 == k1, static_cast<float>(xsum)});
    }
  }
  return true;
}

// Scaled activations of the GPTQ GEMV: a code extracted with a mask in place (value · 2^s) meets
// x · 2^−s; codes shifted down (the top value of a word, values straddling two words) meet x.
std::vector<float> gemv_scaled_x(const float* x, int64_t in, int64_t bits) {
  std::vector<float> xs(in);
  for (int64_t i = 0; i < in; ++i) {
    const int64_t bit = (i % 32) * bits, s = bit & 31;
    xs[i] = s + bits >= 32 ? x[i] : std::ldexp(x[i], -static_cast<int>(s));
  }
  return xs;
}

void gptq_gemv(const QuantWeightView& w, const float* x, const std::vector<fast::Band>& bands,
               float* y) {
  const std::vector<float> xs = gemv_scaled_x(x, w.in, w.bits);
  const int64_t out8 = w.out / 8 * 8;
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = (out8 / 8 + nt - 1) / nt * 8;
    const int64_t o0 = std::min(out8, t * chunk), o1 = std::min(out8, o0 + chunk);
    if (o1 > o0) {
      std::vector<float> scratch(2 * (o1 - o0));
      fast::gptq_gemv_avx2(w, xs.data(), bands, o0, o1, scratch.data(), y);
    }
  }
  std::vector<float> row(w.in);
  for (int64_t o = out8; o < w.out; ++o) {  // 8-bit widths that are multiples of 4 only
    fast::decode_row_scalar(w, o, row.data());
    float acc = 0.f;
    for (int64_t i = 0; i < w.in; ++i) acc += x[i] * row[i];
    y[o] = acc + (w.bias ? w.bias[o] : 0.f);
  }
}

// compressed-tensors GEMV when whole 8-word chunks share a group; false otherwise.
bool ct_gemv(const QuantWeightView& w, const float* x, float* y) {
  const int64_t pf = 32 / w.bits, chunk = 8 * pf;
  const int64_t gs = w.group_size <= 0 || w.group_size >= w.in ? w.in : w.group_size;
  if (w.in % chunk != 0 || gs % chunk != 0 || !trivial_g_idx(w)) return false;
  std::vector<float> xd(w.in), xsum(w.groups(), 0.f);
  for (int64_t c = 0; c < w.in; c += chunk)
    for (int64_t j = 0; j < pf; ++j)
      for (int64_t l = 0; l < 8; ++l) {
        const float v = x[c + l * pf + j];
        xd[c + j * 8 + l] = j == pf - 1 ? v : std::ldexp(v, -static_cast<int>(w.bits * j));
      }
  for (int64_t g = 0; g < w.groups(); ++g) {
    double s = 0;
    for (int64_t i = g * gs; i < std::min(w.in, (g + 1) * gs); ++i) s += x[i];
    xsum[g] = static_cast<float>(s);
  }
  const int64_t blocks = (w.out + 15) / 16;
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t b = 0; b < blocks; ++b)
    fast::ct_gemv_avx2(w, xd.data(), xsum.data(), b * 16, std::min(w.out, b * 16 + 16), y);
  return true;
}

void gptq_tiles(const QuantWeightView& w, const float* x, int64_t m, float* y) {
  const int64_t groups = w.groups(), out = w.out, zw = out * w.bits / 32;
  std::vector<float> sf(groups * out), zf(groups * out);
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t o = 0; o < out; ++o) {
      sf[g * out + o] = scale_at(w, g * out + o);
      zf[g * out + o] = static_cast<float>(stream_value(w.zeros + g * zw, 1, o, w.bits) + 1);
    }
  const int64_t tiles = (out + 63) / 64;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < tiles; ++t)
    fast::gptq_tiles_avx2(w, sf.data(), zf.data(), x, m, t * 64, std::min(out, t * 64 + 64), y);
}

void rows(const QuantWeightView& w, const float* x, int64_t m, float* y) {
  // Whole 32-column blocks share a group: the vectorised row decoder applies.
  const bool vector_decode =
      trivial_g_idx(w) && (w.group_size <= 0 || w.group_size >= w.in || w.group_size % 32 == 0);
  const int64_t blocks = (w.out + 15) / 16;
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t b = 0; b < blocks; ++b)
    fast::rows_avx2(w, vector_decode, x, m, b * 16, std::min(w.out, b * 16 + 16), y);
}

void w8a8(const QuantWeightView& w, const float* x, int64_t m, float* y) {
  const int64_t ldx = (w.in + 15) / 16 * 16;
  std::vector<int16_t> xq(m * ldx, 0);
  std::vector<float> xscale(m);
#pragma omp parallel
  {
    std::vector<int8_t> q(w.in);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < m; ++t) {
      xscale[t] = quantize_activation_row(x + t * w.in, w.in, q.data(), nullptr);
      std::copy(q.begin(), q.end(), xq.begin() + t * ldx);
    }
  }
  const int64_t blocks = (w.out + 15) / 16;
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t b = 0; b < blocks; ++b)
    fast::w8a8_avx2(w, xq.data(), ldx, xscale.data(), m, b * 16, std::min(w.out, b * 16 + 16), y);
}

}  // namespace

void qlinear_cpu_fast(const QuantWeightView& w, const float* x, int64_t m, float* y) {
  const bool avx2 = fast::avx2_supported();
  std::vector<float> x_hat;
  // Float kernels see the fake-quantized activations; only the AVX2 W8A8 kernel takes int8 codes.
  if (w.act_bits == 8 && (w.format != WeightFormat::kCtInt8 || !avx2)) {
    x_hat.resize(m * w.in);
    for (int64_t t = 0; t < m; ++t)
      quantize_activation_row(x + t * w.in, w.in, nullptr, &x_hat[t * w.in]);
    x = x_hat.data();
  }
  if (!avx2) return qlinear_portable(w, x, m, y);
  switch (w.format) {
    case WeightFormat::kGptq: {
      std::vector<fast::Band> bands;
      if (m == 1 && gemv_bands(w, x, &bands)) return gptq_gemv(w, x, bands, y);
      return gptq_tiles(w, x, m, y);
    }
    case WeightFormat::kCtInt8:
      if (w.act_bits == 8) return w8a8(w, x, m, y);
      return rows(w, x, m, y);
    case WeightFormat::kCtPacked:
      if (m == 1 && ct_gemv(w, x, y)) return;
      return rows(w, x, m, y);
    case WeightFormat::kDense: return rows(w, x, m, y);
  }
}

}  // namespace detail
}  // namespace lathe::kernels
