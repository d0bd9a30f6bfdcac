// AVX2/FMA/F16C workers of cpu-fast (qlinear_fast.h). Every function that uses the intrinsics
// carries LATHE_AVX2 (per-function target), so this file builds without -mavx2 and the dispatcher
// calls it only when avx2_supported(). Codes are unpacked on the fly from the stored words;
// accumulation is fp32 (int32 for W8A8).
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "kernels/qlinear_fast.h"
#include "kernels/qlinear_internal.h"

#define LATHE_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LATHE_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline

namespace lathe::kernels::fast {

bool avx2_supported() {
  // LATHE_KERNELS_NO_AVX2 forces the portable path (how the tests cover it on AVX2 machines).
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c") &&
                         std::getenv("LATHE_KERNELS_NO_AVX2") == nullptr;
  return ok;
}

namespace {

LATHE_AVX2_INLINE __m256i load_i(const int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

LATHE_AVX2_INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(_mm_hadd_ps(s, s));
}

LATHE_AVX2_INLINE int32_t hsum_i(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_hadd_epi32(s, s);
  return _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
}

// Eight consecutive scales (index .. index + 7) as float32, converted exactly.
LATHE_AVX2_INLINE __m256 load_scales8(const QuantWeightView& w, int64_t index) {
  const auto* h = static_cast<const uint16_t*>(w.scales) + index;
  switch (w.scale_type) {
    case ScaleType::kF16:
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
    case ScaleType::kBF16:
      return _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h))), 16));
    case ScaleType::kF32: return _mm256_loadu_ps(static_cast<const float*>(w.scales) + index);
  }
  return _mm256_setzero_ps();
}

// GPTQ v1 zero points z = stored + 1 of outputs o .. o + 7 (o a multiple of 8) from qzeros row
// `zrow` (the stream of z − 1 along the output).
template <int B>
LATHE_AVX2_INLINE __m256 gptq_zeros8(const int32_t* zrow, int64_t o) {
  __m256i v;
  if constexpr (B == 4) {
    v = _mm256_srlv_epi32(_mm256_set1_epi32(zrow[o / 8]),
                          _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
  } else if constexpr (B == 8) {
    const int32_t a = zrow[o / 4], b = zrow[o / 4 + 1];
    v = _mm256_srlv_epi32(_mm256_setr_epi32(a, a, a, a, b, b, b, b),
                          _mm256_setr_epi32(0, 8, 16, 24, 0, 8, 16, 24));
  } else if constexpr (B == 2) {
    const int base = static_cast<int>((o % 16) * 2);
    v = _mm256_srlv_epi32(
        _mm256_set1_epi32(zrow[o / 16]),
        _mm256_add_epi32(_mm256_set1_epi32(base), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)));
  } else {
    alignas(32) int32_t z[8];
    for (int l = 0; l < 8; ++l)
      z[l] = static_cast<int32_t>(detail::stream_value(zrow, 1, o + l, B));
    v = _mm256_load_si256(reinterpret_cast<const __m256i*>(z));
  }
  v = _mm256_and_si256(v, _mm256_set1_epi32((1 << B) - 1));
  return _mm256_add_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(1.f));
}

// ---- GPTQ GEMV -------------------------------------------------------------------------------
// qweight is [in·B/32, out]: a block of 32 inputs is B word rows, eight outputs one vector per row.
// Value J of the block sits at stream bit B·J: word row a = bit / 32, shift s = bit % 32. A value
// inside one word is masked in place (code · 2^s, exact in fp32) and meets x · 2^−s (xs, prepared
// by the caller); the top value of a word is shifted down; a value straddling two words (3 bits)
// is assembled from both.
template <int B, int J, int NV>
LATHE_AVX2_INLINE void gemv_value(const int32_t* blk, int64_t ld, const float* xs, __m256* acc) {
  constexpr int bit = B * J, a = bit >> 5, s = bit & 31;
  constexpr uint32_t mask = (1u << B) - 1;
  const __m256 xb = _mm256_broadcast_ss(xs + J);
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const __m256i wv = load_i(blk + a * ld + 8 * v);
    __m256i c;
    if constexpr (s + B > 32) {
      const __m256i w2 = load_i(blk + (a + 1) * ld + 8 * v);
      c = _mm256_and_si256(_mm256_or_si256(_mm256_srli_epi32(wv, s), _mm256_slli_epi32(w2, 32 - s)),
                           _mm256_set1_epi32(static_cast<int>(mask)));
    } else if constexpr (s + B == 32) {
      c = _mm256_srli_epi32(wv, s);
    } else {
      c = _mm256_and_si256(wv, _mm256_set1_epi32(static_cast<int>(mask << s)));
    }
    acc[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), xb, acc[v]);
  }
}

template <int B, int NV, int... J>
LATHE_AVX2_INLINE void gemv_block(const int32_t* blk, int64_t ld, const float* xs, __m256* acc,
                                  std::integer_sequence<int, J...>) {
  (gemv_value<B, J, NV>(blk, ld, xs, acc), ...);
}

// One band (a run of 32-blocks inside one group) for NV vectors of outputs from o. The group's
// partial sums live in gacc between bands; the last band folds scale · (Σ x·q − z · Σ x) into tot.
constexpr int64_t kPrefetchWords = 128;  // two tiles of 64 outputs ahead
#ifndef LATHE_NO_PREFETCH
constexpr bool kPrefetch = true;
#else
constexpr bool kPrefetch = false;
#endif  // two tiles of 64 outputs ahead

template <int B, int NV>
LATHE_AVX2_INLINE void gemv_tile(const QuantWeightView& w, const float* xs, const Band& band,
                                 int64_t o, float* tot, float* gacc) {
  __m256 acc[NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v)
    acc[v] = band.first ? _mm256_setzero_ps() : _mm256_loadu_ps(gacc + 8 * v);
  for (int64_t k = band.k0; k < band.k1; k += 32) {
    const int32_t* blk = w.packed + (k / 32) * B * w.out + o;
    if constexpr (NV == 8 && kPrefetch)  // the rows of the tile after next: 4 lines each
      for (int r = 0; r < B; ++r)
        for (int l = 0; l < 4; ++l)
          _mm_prefetch(reinterpret_cast<const char*>(blk + r * w.out + kPrefetchWords + 16 * l),
                       _MM_HINT_T0);
    gemv_block<B, NV>(blk, w.out, xs + k, acc, std::make_integer_sequence<int, 32>{});
  }
  if (!band.last) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(gacc + 8 * v, acc[v]);
    return;
  }
  const __m256 xsum = _mm256_set1_ps(band.xsum);
  const int32_t* zrow = w.zeros + band.group * (w.out * B / 32);
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const __m256 s = load_scales8(w, band.group * w.out + o + 8 * v);
    const __m256 z = gptq_zeros8<B>(zrow, o + 8 * v);
    const __m256 t = _mm256_loadu_ps(tot + 8 * v);
    _mm256_storeu_ps(tot + 8 * v, _mm256_fmadd_ps(s, _mm256_fnmadd_ps(z, xsum, acc[v]), t));
  }
}

template <int B>
LATHE_AVX2 void gemv_worker(const QuantWeightView& w, const float* xs,
                            const std::vector<Band>& bands, int64_t o0, int64_t o1, float* scratch,
                            float* y) {
  const int64_t n = o1 - o0;
  float* tot = scratch;
  float* gacc = scratch + n;
  std::fill(tot, tot + n, 0.f);
  for (const Band& band : bands) {
    int64_t o = o0;
    for (; o + 64 <= o1; o += 64) gemv_tile<B, 8>(w, xs, band, o, tot + (o - o0), gacc + (o - o0));
    for (; o < o1; o += 8) gemv_tile<B, 1>(w, xs, band, o, tot + (o - o0), gacc + (o - o0));
  }
  for (int64_t o = o0; o < o1; ++o) y[o] = tot[o - o0] + (w.bias ? w.bias[o] : 0.f);
}

// ---- compressed-tensors GEMV
// --------------------------------------------------------------------- weight_packed rows run
// along the input: a vector of 8 words holds 8·pf inputs, lane l the inputs l·pf .. l·pf + pf − 1.
// xd (prepared by the caller) holds x regrouped per (chunk, value j, lane) and scaled by 2^−B·j
// like the GPTQ GEMV, so value j of every lane is masked in place.
template <int B, int NR>
LATHE_AVX2 void ct_gemv_rows(const QuantWeightView& w, const float* xd, const float* xsum,
                             int64_t o, float* y) {
  constexpr int pf = 32 / B;
  const int64_t row_words = w.in / pf, groups = w.groups();
  const int64_t gw =
      (w.group_size <= 0 || w.group_size >= w.in ? w.in : w.group_size) / pf;  // words per group
  __m256 tot[NR];
  float zterm[NR];
#pragma GCC unroll 16
  for (int r = 0; r < NR; ++r) tot[r] = _mm256_setzero_ps(), zterm[r] = 0.f;
  for (int64_t g = 0; g < groups; ++g) {
    __m256 acc[NR];
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t k = g * gw; k < std::min(row_words, (g + 1) * gw); k += 8) {
      __m256i wv[NR];
#pragma GCC unroll 16
      for (int r = 0; r < NR; ++r) wv[r] = load_i(w.packed + (o + r) * row_words + k);
      const float* xk = xd + k * pf;
#pragma GCC unroll 32
      for (int j = 0; j < pf; ++j) {
        const __m256 xv = _mm256_loadu_ps(xk + 8 * j);
#pragma GCC unroll 16
        for (int r = 0; r < NR; ++r) {
          const __m256i c =
              j == pf - 1
                  ? _mm256_srli_epi32(wv[r], 32 - B)
                  : _mm256_and_si256(
                        wv[r], _mm256_set1_epi32(static_cast<int>(((1u << B) - 1) << (B * j))));
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), xv, acc[r]);
        }
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) {
      const float sc = detail::scale_at(w, (o + r) * groups + g);
      const int64_t zero =
          w.zeros ? detail::stream_value(w.zeros + g, groups, o + r, B) : int64_t{1} << (B - 1);
      tot[r] = _mm256_fmadd_ps(_mm256_set1_ps(sc), acc[r], tot[r]);
      zterm[r] += sc * static_cast<float>(zero) * xsum[g];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < NR; ++r) y[o + r] = hsum(tot[r]) - zterm[r] + (w.bias ? w.bias[o + r] : 0.f);
}

template <int B>
LATHE_AVX2 void ct_gemv_worker(const QuantWeightView& w, const float* xd, const float* xsum,
                               int64_t o0, int64_t o1, float* y) {
  int64_t o = o0;
  for (; o + 4 <= o1; o += 4) ct_gemv_rows<B, 4>(w, xd, xsum, o, y);
  for (; o < o1; ++o) ct_gemv_rows<B, 1>(w, xd, xsum, o, y);
}

// ---- GPTQ k-major tiles (GEMM, and GEMV with an arbitrary g_idx) ------------------------------

constexpr int kTileK = 128;  // input columns decoded per step
constexpr int kTileN = 64;   // output columns per tile

// wt[(i − k0)·64 + c] = sf · (code − zf) for inputs [k0, k1) and outputs o0 + c, c < width; columns
// up to the next multiple of 8 are zero.
LATHE_AVX2 void decode_gptq_tile(const QuantWeightView& w, const float* sf, const float* zf,
                                 int64_t k0, int64_t k1, int64_t o0, int64_t width, float* wt) {
  const int64_t b = w.bits, out = w.out, nv = width / 8;
  const __m256i mask = _mm256_set1_epi32(static_cast<int>((1u << b) - 1));
  for (int64_t i = k0; i < k1; ++i) {
    const int64_t g = detail::group_of(w, i), j = i % 32, bit = b * j, a = bit >> 5, s = bit & 31;
    const int32_t* row = w.packed + ((i / 32) * b + a) * out + o0;
    const __m128i sh = _mm_cvtsi32_si128(static_cast<int>(s)),
                  sh2 = _mm_cvtsi32_si128(static_cast<int>(32 - s));
    const float* sg = sf + g * out + o0;
    const float* zg = zf + g * out + o0;
    float* dst = wt + (i - k0) * kTileN;
    for (int64_t v = 0; v < nv; ++v) {
      __m256i c = _mm256_srl_epi32(load_i(row + 8 * v), sh);
      if (s + b > 32) c = _mm256_or_si256(c, _mm256_sll_epi32(load_i(row + out + 8 * v), sh2));
      const __m256 q = _mm256_cvtepi32_ps(_mm256_and_si256(c, mask));
      _mm256_storeu_ps(
          dst + 8 * v,
          _mm256_mul_ps(_mm256_sub_ps(q, _mm256_loadu_ps(zg + 8 * v)),
                        _mm256_loadu_ps(sg + 8 * v)));  // s · (q − z) exactly as cpu-ref
    }
    for (int64_t c = nv * 8; c < width; ++c) {
      const auto q = static_cast<float>(detail::stream_value(w.packed + o0 + c, out, i, b));
      dst[c] = sg[c] * (q - zg[c]);
    }
    for (int64_t c = width; c < (width + 7) / 8 * 8; ++c) dst[c] = 0.f;
  }
}

// yt[r·64 + ·] += x[r, k0..] · wt for MR tokens and NV vectors starting at vector v0.
template <int MR, int NV>
LATHE_AVX2 void kmajor_kernel(const float* x, int64_t ldx, const float* wt, int64_t kc, float* yt,
                              int64_t v0) {
  __m256 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m256 wv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) wv[v] = _mm256_loadu_ps(wt + k * kTileN + 8 * (v0 + v));
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m256 xb = _mm256_broadcast_ss(x + r * ldx + k);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(xb, wv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      float* p = yt + r * kTileN + 8 * (v0 + v);
      _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc[r][v]));
    }
}

template <int MR>
LATHE_AVX2 void kmajor_rows(const float* x, int64_t ldx, const float* wt, int64_t kc, float* yt,
                            int64_t nvec) {
  int64_t v = 0;
  for (; v + 2 <= nvec; v += 2) kmajor_kernel<MR, 2>(x, ldx, wt, kc, yt, v);
  if (v < nvec) kmajor_kernel<MR, 1>(x, ldx, wt, kc, yt, v);
}

LATHE_AVX2 void kmajor_tokens(const float* x, int64_t ldx, int64_t m, const float* wt, int64_t kc,
                              float* yt, int64_t nvec) {
  int64_t t = 0;
  for (; t + 6 <= m; t += 6) kmajor_rows<6>(x + t * ldx, ldx, wt, kc, yt + t * kTileN, nvec);
  const float* xr = x + t * ldx;
  float* yr = yt + t * kTileN;
  switch (m - t) {
    case 5: kmajor_rows<5>(xr, ldx, wt, kc, yr, nvec); break;
    case 4: kmajor_rows<4>(xr, ldx, wt, kc, yr, nvec); break;
    case 3: kmajor_rows<3>(xr, ldx, wt, kc, yr, nvec); break;
    case 2: kmajor_rows<2>(xr, ldx, wt, kc, yr, nvec); break;
    case 1: kmajor_rows<1>(xr, ldx, wt, kc, yr, nvec); break;
    default: break;
  }
}

// ---- row-major formats ------------------------------------------------------------------------

// Lane tables for eight values of a 32-value block of B-bit codes: chunk c holds values 8c .. 8c +
// 7, value v in word (v·B) / 32 of the block at shift (v·B) % 32.
struct LaneTable {
  __m256i word[4], shift[4];
};

LATHE_AVX2_INLINE LaneTable lane_table(int64_t b) {
  LaneTable t;
  for (int c = 0; c < 4; ++c) {
    alignas(32) int32_t wi[8], si[8];
    for (int l = 0; l < 8; ++l) {
      const int64_t bit = (8 * c + l) * b;
      wi[l] = static_cast<int32_t>(bit >> 5);
      si[l] = static_cast<int32_t>(bit & 31);
    }
    t.word[c] = _mm256_load_si256(reinterpret_cast<const __m256i*>(wi));
    t.shift[c] = _mm256_load_si256(reinterpret_cast<const __m256i*>(si));
  }
  return t;
}

// compressed-tensors row o, trivial g_idx with whole 32-column groups: 32 values from B words.
LATHE_AVX2 void decode_ct_row(const QuantWeightView& w, const LaneTable& lanes, int64_t o,
                              float* row) {
  const int64_t b = w.bits, in = w.in, groups = w.groups(), row_words = (in * b + 31) / 32;
  const int32_t* rw = w.packed + o * row_words;
  const __m256i mask = _mm256_set1_epi32(static_cast<int>((1u << b) - 1));
  const int64_t gs = w.group_size <= 0 || w.group_size >= in ? in : w.group_size;
  int64_t i = 0;
  for (; i + 32 <= in; i += 32) {
    const int64_t g = i / gs;
    const __m256 s = _mm256_set1_ps(detail::scale_at(w, o * groups + g));
    const int64_t zero =
        w.zeros ? detail::stream_value(w.zeros + g, groups, o, b) : int64_t{1} << (b - 1);
    const __m256 z = _mm256_set1_ps(static_cast<float>(zero));
    const int64_t wi = i * b / 32;
    __m256i words;
    if (wi + 8 <= row_words) {
      words = load_i(rw + wi);
    } else {  // the last words of the row: do not read past it
      alignas(32) int32_t tmp[8] = {0};
      std::copy(rw + wi, rw + row_words, tmp);
      words = _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
    }
    for (int c = 0; c < 4; ++c) {
      const __m256i v =
          _mm256_srlv_epi32(_mm256_permutevar8x32_epi32(words, lanes.word[c]), lanes.shift[c]);
      const __m256 q = _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
      _mm256_storeu_ps(row + i + 8 * c, _mm256_mul_ps(_mm256_sub_ps(q, z), s));
    }
  }
  for (; i < in; ++i) {
    const int64_t g = i / gs;
    const int64_t zero =
        w.zeros ? detail::stream_value(w.zeros + g, groups, o, b) : int64_t{1} << (b - 1);
    row[i] = detail::scale_at(w, o * groups + g) *
             static_cast<float>(static_cast<int64_t>(detail::stream_value(rw, 1, i, b)) - zero);
  }
}

LATHE_AVX2 void decode_int8_row(const QuantWeightView& w, int64_t o, float* row) {
  const int8_t* src = w.int8_weight + o * w.in;
  const float sv = detail::scale_at(w, o);
  const __m256 s = _mm256_set1_ps(sv);
  int64_t i = 0;
  for (; i + 8 <= w.in; i += 8) {
    const __m256i v =
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i)));
    _mm256_storeu_ps(row + i, _mm256_mul_ps(s, _mm256_cvtepi32_ps(v)));
  }
  for (; i < w.in; ++i) row[i] = sv * static_cast<float>(src[i]);
}

// out[r·NR + c] = Σ_k x[r, k] · rows[c][k] for MR tokens and NR rows.
template <int MR, int NR>
LATHE_AVX2 void dot_block(const float* x, int64_t ldx, const float* const* rows, int64_t k_len,
                          float* out) {
  __m256 acc[MR][NR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < NR; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= k_len; k += 8) {
    __m256 wv[NR];
#pragma GCC unroll 16
    for (int c = 0; c < NR; ++c) wv[c] = _mm256_loadu_ps(rows[c] + k);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + r * ldx + k);
#pragma GCC unroll 16
      for (int c = 0; c < NR; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < NR; ++c) {
      float s = hsum(acc[r][c]);
      for (int64_t kk = k; kk < k_len; ++kk) s += x[r * ldx + kk] * rows[c][kk];
      out[r * NR + c] = s;
    }
}

template <int NR>
LATHE_AVX2 void dot_rows(const float* x, int64_t m, int64_t in, const float* const* rows, int64_t o,
                         int64_t out, const float* bias, float* y) {
  float res[3 * NR];
  for (int64_t t = 0; t < m;) {
    const int64_t mr = std::min<int64_t>(3, m - t);
    if (mr == 3)
      dot_block<3, NR>(x + t * in, in, rows, in, res);
    else if (mr == 2)
      dot_block<2, NR>(x + t * in, in, rows, in, res);
    else
      dot_block<1, NR>(x + t * in, in, rows, in, res);
    for (int64_t r = 0; r < mr; ++r)
#pragma GCC unroll 16
      for (int c = 0; c < NR; ++c)
        y[(t + r) * out + o + c] = res[r * NR + c] + (bias ? bias[o + c] : 0.f);
    t += mr;
  }
}

// ---- W8A8 --------------------------------------------------------------------------------------

template <int MR, int NR>
LATHE_AVX2 void w8a8_block(const QuantWeightView& w, const int16_t* xq, int64_t ldx,
                           const float* xscale, int64_t t, int64_t o, float* y) {
  const int64_t in = w.in, in16 = in / 16 * 16;
  __m256i acc[MR][NR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < NR; ++c) acc[r][c] = _mm256_setzero_si256();
  const int8_t* wr[NR];
#pragma GCC unroll 16
  for (int c = 0; c < NR; ++c) wr[c] = w.int8_weight + (o + c) * in;
  for (int64_t k = 0; k < in16; k += 16) {
    __m256i wv[NR];
#pragma GCC unroll 16
    for (int c = 0; c < NR; ++c)
      wv[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr[c] + k)));
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m256i xv =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + (t + r) * ldx + k));
#pragma GCC unroll 16
      for (int c = 0; c < NR; ++c)
        acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(xv, wv[c]));
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < NR; ++c) {
      int32_t s = hsum_i(acc[r][c]);
      for (int64_t k = in16; k < in; ++k) s += xq[(t + r) * ldx + k] * wr[c][k];
      const float sw = detail::scale_at(w, o + c);
      y[(t + r) * w.out + o + c] =
          static_cast<float>(s) * (xscale[t + r] * sw) + (w.bias ? w.bias[o + c] : 0.f);
    }
}

template <int NR>
LATHE_AVX2 void w8a8_rows(const QuantWeightView& w, const int16_t* xq, int64_t ldx,
                          const float* xscale, int64_t m, int64_t o, float* y) {
  int64_t t = 0;
  for (; t + 2 <= m; t += 2) w8a8_block<2, NR>(w, xq, ldx, xscale, t, o, y);
  if (t < m) w8a8_block<1, NR>(w, xq, ldx, xscale, t, o, y);
}

}  // namespace

void gptq_gemv_avx2(const QuantWeightView& w, const float* xs, const std::vector<Band>& bands,
                    int64_t o0, int64_t o1, float* scratch, float* y) {
  switch (w.bits) {
    case 2: gemv_worker<2>(w, xs, bands, o0, o1, scratch, y); return;
    case 3: gemv_worker<3>(w, xs, bands, o0, o1, scratch, y); return;
    case 4: gemv_worker<4>(w, xs, bands, o0, o1, scratch, y); return;
    case 8: gemv_worker<8>(w, xs, bands, o0, o1, scratch, y); return;
    default: throw KernelError("gptq gemv: bits " + std::to_string(w.bits));
  }
}

void ct_gemv_avx2(const QuantWeightView& w, const float* xd, const float* xsum, int64_t o0,
                  int64_t o1, float* y) {
  switch (w.bits) {
    case 2: ct_gemv_worker<2>(w, xd, xsum, o0, o1, y); return;
    case 4: ct_gemv_worker<4>(w, xd, xsum, o0, o1, y); return;
    case 8: ct_gemv_worker<8>(w, xd, xsum, o0, o1, y); return;
    default: throw KernelError("ct gemv: bits " + std::to_string(w.bits));
  }
}

LATHE_AVX2 void gptq_tiles_avx2(const QuantWeightView& w, const float* sf, const float* zf,
                                const float* x, int64_t m, int64_t o0, int64_t o1, float* y) {
  thread_local std::vector<float> wt, yt;
  wt.assign(static_cast<size_t>(kTileK * kTileN), 0.f);
  yt.assign(static_cast<size_t>(m * kTileN), 0.f);
  const int64_t width = o1 - o0, nvec = (width + 7) / 8;
  for (int64_t k0 = 0; k0 < w.in; k0 += kTileK) {
    const int64_t k1 = std::min(w.in, k0 + kTileK);
    decode_gptq_tile(w, sf, zf, k0, k1, o0, width, wt.data());
    kmajor_tokens(x + k0, w.in, m, wt.data(), k1 - k0, yt.data(), nvec);
  }
  for (int64_t t = 0; t < m; ++t)
    for (int64_t c = 0; c < width; ++c)
      y[t * w.out + o0 + c] = yt[t * kTileN + c] + (w.bias ? w.bias[o0 + c] : 0.f);
}

LATHE_AVX2 void rows_avx2(const QuantWeightView& w, bool vector_decode, const float* x, int64_t m,
                          int64_t o0, int64_t o1, float* y) {
  thread_local std::vector<float> buf;
  const int64_t in = w.in;
  if (w.format != WeightFormat::kDense) buf.resize(static_cast<size_t>(4 * in));
  const LaneTable lanes = lane_table(w.bits);
  for (int64_t o = o0; o < o1;) {
    const int64_t nr = std::min<int64_t>(4, o1 - o);
    const float* rows[4];
    for (int64_t c = 0; c < nr; ++c) {
      if (w.format == WeightFormat::kDense) {
        rows[c] = w.dense + (o + c) * in;
        continue;
      }
      float* dst = buf.data() + c * in;
      if (w.format == WeightFormat::kCtInt8)
        decode_int8_row(w, o + c, dst);
      else if (w.format == WeightFormat::kCtPacked && vector_decode)
        decode_ct_row(w, lanes, o + c, dst);
      else
        decode_row_scalar(w, o + c, dst);
      rows[c] = dst;
    }
    switch (nr) {
      case 4: dot_rows<4>(x, m, in, rows, o, w.out, w.bias, y); break;
      case 3: dot_rows<3>(x, m, in, rows, o, w.out, w.bias, y); break;
      case 2: dot_rows<2>(x, m, in, rows, o, w.out, w.bias, y); break;
      default: dot_rows<1>(x, m, in, rows, o, w.out, w.bias, y); break;
    }
    o += nr;
  }
}

LATHE_AVX2 void w8a8_avx2(const QuantWeightView& w, const int16_t* xq, int64_t ldx,
                          const float* xscale, int64_t m, int64_t o0, int64_t o1, float* y) {
  for (int64_t o = o0; o < o1;) {
    const int64_t nr = std::min<int64_t>(4, o1 - o);
    switch (nr) {
      case 4: w8a8_rows<4>(w, xq, ldx, xscale, m, o, y); break;
      case 3: w8a8_rows<3>(w, xq, ldx, xscale, m, o, y); break;
      case 2: w8a8_rows<2>(w, xq, ldx, xscale, m, o, y); break;
      default: w8a8_rows<1>(w, xq, ldx, xscale, m, o, y); break;
    }
    o += nr;
  }
}

}  // namespace lathe::kernels::fast
