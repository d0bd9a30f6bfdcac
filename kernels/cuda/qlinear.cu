// CUDA qlinear kernels (kernels/qlinear_cuda.h), reading the exported weights in their stored
// layouts (FORMATS.md §3 GPTQ v1, §4 compressed-tensors). Torch-free.
//
// Activations (prep_act_kernel, one block per token): A16 formats convert x to fp16 (round to
// nearest even) into a zero-padded [m, round_up(in, 128)] buffer; act_bits 8 quantizes per token
// exactly as kernels/qlinear.h (s = max|x|/127 with __fdiv_rn, q = rintf(__fdiv_rn(x, s)) clamped
// to ±127, s = 1 where max|x|/127 is 0) into int8 for W8A8, or fake-quantizes (q·s) for the other
// formats.
//
// Kernels, picked by format and m:
//   gptq_gemv_kernel<BITS, FAST>   m = 1, GPTQ (qweight [in·b/32, out]). Each thread owns 4 output
//       columns and streams their packed words with one 128-bit load per packed row (three for
//       3-bit, whose 32 values fill 3 words); 8 warps per block split K, and the grid splits K
//       further (partials reduced by reduce_partials_kernel) so a decode-sized weight fills the
//       GPU. FAST (no/trivial g_idx, group size a multiple of the values per load): one scale and
//       zero per load, y += s·(Σq·x − z·Σx). Otherwise every value looks up its group (act order).
//   ct_gemv_kernel<BITS, FAST, VEC4>  m = 1, compressed-tensors pack-quantized ([out, ⌈in/pf⌉]):
//       a warp per output row, 128-bit loads of 4 words per lane when the row length allows.
//   qgemm_wmma_kernel   m > 1 for every quantized A16 format (and ct-int8 with A16): 64×64 output
//       tiles, K step 32; the weight tile is dequantized (scale·(code − zero)) into shared memory
//       as fp16, activations are fp16, and 4 warps multiply with tensor cores (wmma 16×16×16, fp32
//       accumulate). The dequantization reads element by element (cached loads), not yet a
//       word-per-thread decode: correctness first. A dequantized weight must fit fp16 (|W| < 65504;
//       real checkpoints' scales are far below that); also used for m = 1 of ct-int8 A16.
//   dense_gemv_kernel / dense_gemm_kernel   fp32 weights and fp32 activations, fp32 SIMT
//       (float4 loads in the GEMV, 64×64 shared-memory tiles with 4×4 per thread in the GEMM).
//   i8_gemv_kernel / i8_gemm_kernel   W8A8 (ct-int8 with act_bits 8): int8×int8 → int32 with
//       __dp4a, y = s_token·s_channel·acc + bias. Weights are uploaded with rows padded to 16
//       bytes.
// Bias is added in each kernel's epilogue (or the split-K reduction).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/qlinear_device.cuh"
#include "kernels/qlinear_cuda.h"

namespace lathe::kernels {
namespace cuda_detail {

int sm_count() {
  static const int count = [] {
    int device = 0, n = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return 1;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 1;
    return std::max(n, 1);
  }();
  return count;
}

namespace {

constexpr int kFmtDense = 0, kFmtGptq = 1, kFmtCt = 2, kFmtInt8 = 3;

/// The weight as the kernels see it (passed by value).
struct DW {
  int fmt;
  int bits;
  int pf;  ///< values per 32-bit word (32/bits; 3-bit GPTQ uses the bit stream instead)
  int64_t out, in, group_size, groups;
  const uint32_t* packed;
  int64_t ld_packed;
  const uint32_t* zeros;  ///< null: symmetric (ct)
  int64_t ld_zeros;
  const void* scales;
  int scale_type;  ///< 0 f16, 1 bf16, 2 f32
  const int32_t* g_idx;
  const int8_t* int8_weight;
  int64_t ld_int8;
  const float* dense;
  const float* bias;
};

DW describe(const DeviceWeight& w) {
  DW d{};
  d.fmt = w.format == WeightFormat::kDense      ? kFmtDense
          : w.format == WeightFormat::kGptq     ? kFmtGptq
          : w.format == WeightFormat::kCtPacked ? kFmtCt
                                                : kFmtInt8;
  d.bits = static_cast<int>(w.bits);
  d.pf = (w.bits >= 1 && w.bits <= 32) ? static_cast<int>(32 / w.bits) : 1;
  d.out = w.out, d.in = w.in, d.group_size = w.group_size, d.groups = w.groups;
  d.packed = w.packed.get(), d.ld_packed = w.ld_packed;
  d.zeros = w.has_zeros || w.format == WeightFormat::kGptq ? w.zeros.get() : nullptr;
  d.ld_zeros = w.ld_zeros;
  d.scales = w.scales.get();
  d.scale_type = w.scale_type == ScaleType::kF16 ? 0 : w.scale_type == ScaleType::kBF16 ? 1 : 2;
  d.g_idx = w.has_g_idx ? w.g_idx.get() : nullptr;
  d.int8_weight = w.int8_weight.get(), d.ld_int8 = w.ld_int8;
  d.dense = w.dense.get();
  d.bias = w.has_bias ? w.bias.get() : nullptr;
  return d;
}

// ---------------------------------------------------------------------------------------------
// Device helpers.

__device__ __forceinline__ float load_scale(const DW& w, int64_t idx) {
  if (w.scale_type == 2) return __ldg(static_cast<const float*>(w.scales) + idx);
  const unsigned short h = __ldg(static_cast<const unsigned short*>(w.scales) + idx);
  if (w.scale_type == 1) return __uint_as_float(static_cast<uint32_t>(h) << 16);
  return __half2float(__ushort_as_half(h));  // exact (every fp16 value is an fp32 value)
}

/// Value at bit `pos` of a little-endian stream of 32-bit words base[0], base[stride], ...
__device__ __forceinline__ uint32_t stream_bits(const uint32_t* base, int64_t stride, int64_t pos,
                                                int bits) {
  const int64_t word = pos >> 5;
  const int shift = static_cast<int>(pos & 31);
  uint32_t v = __ldg(base + word * stride) >> shift;
  if (shift + bits > 32) v |= __ldg(base + (word + 1) * stride) << (32 - shift);
  return v & ((1u << bits) - 1u);
}

__device__ __forceinline__ int64_t group_of(const DW& w, int64_t i) {
  if (w.g_idx) return __ldg(w.g_idx + i);
  return w.group_size > 0 ? i / w.group_size : 0;
}

/// GPTQ v1 zero of (group g, column o): stored z − 1, packed along the output.
__device__ __forceinline__ int gptq_zero(const DW& w, int64_t g, int64_t o) {
  return static_cast<int>(
             stream_bits(w.zeros + g * w.ld_zeros, 1, static_cast<int64_t>(w.bits) * o, w.bits)) +
         1;
}

/// compressed-tensors zero of (row o, group g): zero + 2^(b−1) packed along dim 0; symmetric
/// 2^(b−1).
__device__ __forceinline__ int ct_zero(const DW& w, int64_t o, int64_t g) {
  if (!w.zeros) return 1 << (w.bits - 1);
  const uint32_t word = __ldg(w.zeros + (o / w.pf) * w.ld_zeros + g);
  return static_cast<int>((word >> (w.bits * (o % w.pf))) & ((1u << w.bits) - 1u));
}

/// W[o, i] in fp32: scale · (code − zero), the formula of dequantize_ref.
__device__ float dequant(const DW& w, int64_t o, int64_t i) {
  switch (w.fmt) {
    case kFmtDense: return __ldg(w.dense + o * w.in + i);
    case kFmtInt8: return load_scale(w, o) * static_cast<float>(w.int8_weight[o * w.ld_int8 + i]);
    case kFmtGptq: {
      const int64_t g = group_of(w, i);
      const int q = static_cast<int>(
          stream_bits(w.packed + o, w.ld_packed, static_cast<int64_t>(w.bits) * i, w.bits));
      return load_scale(w, g * w.out + o) * static_cast<float>(q - gptq_zero(w, g, o));
    }
    default: {  // kFmtCt
      const int64_t g = group_of(w, i);
      const uint32_t word = __ldg(w.packed + o * w.ld_packed + i / w.pf);
      const int q = static_cast<int>((word >> (w.bits * (i % w.pf))) & ((1u << w.bits) - 1u));
      return load_scale(w, o * w.groups + g) * static_cast<float>(q - ct_zero(w, o, g));
    }
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ __forceinline__ int warp_sum(int v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

/// Loads N consecutive fp16 values (N a multiple of 4, 8-byte aligned) as floats.
template <int N>
__device__ __forceinline__ void load_half_row(const __half* p, float* out) {
#pragma unroll
  for (int c = 0; c < N; c += 4) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p + c));
    const __half2 a = *reinterpret_cast<const __half2*>(&raw.x);
    const __half2 b = *reinterpret_cast<const __half2*>(&raw.y);
    const float2 fa = __half22float2(a), fb = __half22float2(b);
    out[c] = fa.x, out[c + 1] = fa.y, out[c + 2] = fb.x, out[c + 3] = fb.y;
  }
}

// ---------------------------------------------------------------------------------------------
// Activations.

constexpr int kPrepThreads = 256;

/// One block per token row. Writes whichever outputs are non-null: x_half (fp16 of x, or of the
/// fake-quantized q·s when act_bits is 8) with row stride ld_half and zero padding; x_int8/x_scale
/// (per-token int8, stride ld_int8, zero padding); x_float (q·s, stride in).
__global__ void __launch_bounds__(kPrepThreads)
    prep_act_kernel(const float* __restrict__ x, int64_t in, int act_bits,
                    __half* __restrict__ x_half, int64_t ld_half, int8_t* __restrict__ x_int8,
                    int64_t ld_int8, float* __restrict__ x_scale, float* __restrict__ x_float) {
  const int64_t row = blockIdx.x;
  const float* xr = x + row * in;
  float scale = 1.0f;
  if (act_bits == 8) {
    __shared__ float red[kPrepThreads / 32];
    float mx = 0.0f;
    for (int64_t i = threadIdx.x; i < in; i += blockDim.x) mx = fmaxf(mx, fabsf(xr[i]));
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = mx;
    __syncthreads();
    mx = 0.0f;
    for (int k = 0; k < static_cast<int>(blockDim.x / 32); ++k) mx = fmaxf(mx, red[k]);
    scale = __fdiv_rn(mx, 127.0f);
    if (!(scale > 0.0f)) scale = 1.0f;  // zero row (or an amax that underflows): s = 1, q = 0
    if (threadIdx.x == 0 && x_scale) x_scale[row] = scale;
  }
  int64_t width = in;
  if (x_half && ld_half > width) width = ld_half;
  if (x_int8 && ld_int8 > width) width = ld_int8;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const bool inside = i < in;
    if (act_bits == 8) {
      float q = 0.0f;
      if (inside) q = fminf(fmaxf(rintf(__fdiv_rn(xr[i], scale)), -127.0f), 127.0f);
      if (x_int8 && i < ld_int8) x_int8[row * ld_int8 + i] = static_cast<int8_t>(q);
      const float fq = q * scale;
      if (x_half && i < ld_half) x_half[row * ld_half + i] = __float2half_rn(fq);
      if (x_float && inside) x_float[row * in + i] = fq;
    } else if (x_half && i < ld_half) {
      x_half[row * ld_half + i] = __float2half_rn(inside ? xr[i] : 0.0f);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// GPTQ GEMV (m = 1).

constexpr int kGemvColThreads = 32;  // threadIdx.x: column quads
constexpr int kGemvKWarps = 8;       // threadIdx.y: K slices within a block

template <int BITS>
__device__ __forceinline__ int gptq_code(const uint32_t (&words)[BITS == 3 ? 3 : 1], int j) {
  if constexpr (BITS == 3) {
    const int pos = 3 * j, word = pos >> 5, shift = pos & 31;
    uint32_t v = words[word] >> shift;
    if (shift > 29) v |= words[word + 1] << (32 - shift);
    return static_cast<int>(v & 7u);
  } else {
    return static_cast<int>((words[0] >> (BITS * j)) & ((1u << BITS) - 1u));
  }
}

/// Grid (⌈out/128⌉, k_splits), block (32, 8). A unit is one packed row (3 for 3-bit): VALS inputs.
/// Writes y[o] = acc + bias when k_splits = 1, else partial[split · out + o].
template <int BITS, bool FAST>
__global__ void __launch_bounds__(kGemvColThreads* kGemvKWarps)
    gptq_gemv_kernel(DW w, const __half* __restrict__ x, float* __restrict__ dst,
                     int64_t units_per_split) {
  constexpr int kWords = BITS == 3 ? 3 : 1;
  constexpr int kVals = BITS == 3 ? 32 : 32 / BITS;
  const int64_t units = w.in / kVals;
  const int64_t o0 = (static_cast<int64_t>(blockIdx.x) * kGemvColThreads + threadIdx.x) * 4;
  const bool active = o0 < w.out;
  const int64_t u_begin = blockIdx.y * units_per_split;
  const int64_t u_end = u_begin + units_per_split < units ? u_begin + units_per_split : units;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  if (active) {
    int64_t cur_g = -1;
    float s[4] = {0.f, 0.f, 0.f, 0.f}, z[4] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t u = u_begin + threadIdx.y; u < u_end; u += kGemvKWarps) {
      uint32_t words[4][kWords];
#pragma unroll
      for (int r = 0; r < kWords; ++r) {
        const int4 v =
            __ldg(reinterpret_cast<const int4*>(w.packed + (u * kWords + r) * w.ld_packed + o0));
        words[0][r] = static_cast<uint32_t>(v.x), words[1][r] = static_cast<uint32_t>(v.y);
        words[2][r] = static_cast<uint32_t>(v.z), words[3][r] = static_cast<uint32_t>(v.w);
      }
      const int64_t i0 = u * kVals;
      float xv[kVals];
      load_half_row<kVals>(x + i0, xv);
      if constexpr (FAST) {
        const int64_t g = w.group_size > 0 ? i0 / w.group_size : 0;
        if (g != cur_g) {
          cur_g = g;
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            s[c] = load_scale(w, g * w.out + o0 + c);
            z[c] = static_cast<float>(gptq_zero(w, g, o0 + c));
          }
        }
        float xsum = 0.f;
#pragma unroll
        for (int j = 0; j < kVals; ++j) xsum += xv[j];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          float dot = 0.f;
#pragma unroll
          for (int j = 0; j < kVals; ++j)
            dot = fmaf(static_cast<float>(gptq_code<BITS>(words[c], j)), xv[j], dot);
          acc[c] = fmaf(s[c], dot - z[c] * xsum, acc[c]);
        }
      } else {
#pragma unroll
        for (int j = 0; j < kVals; ++j) {
          const int64_t g = group_of(w, i0 + j);
          if (g != cur_g) {
            cur_g = g;
#pragma unroll
            for (int c = 0; c < 4; ++c) {
              s[c] = load_scale(w, g * w.out + o0 + c);
              z[c] = static_cast<float>(gptq_zero(w, g, o0 + c));
            }
          }
#pragma unroll
          for (int c = 0; c < 4; ++c)
            acc[c] = fmaf(s[c] * (static_cast<float>(gptq_code<BITS>(words[c], j)) - z[c]), xv[j],
                          acc[c]);
        }
      }
    }
  }
  __shared__ float red[kGemvKWarps][kGemvColThreads][4];
#pragma unroll
  for (int c = 0; c < 4; ++c) red[threadIdx.y][threadIdx.x][c] = acc[c];
  __syncthreads();
  if (threadIdx.y != 0 || !active) return;
  for (int k = 1; k < kGemvKWarps; ++k)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[c] += red[k][threadIdx.x][c];
  if (gridDim.y == 1) {
#pragma unroll
    for (int c = 0; c < 4; ++c) dst[o0 + c] = acc[c] + (w.bias ? w.bias[o0 + c] : 0.f);
  } else {
#pragma unroll
    for (int c = 0; c < 4; ++c) dst[blockIdx.y * w.out + o0 + c] = acc[c];
  }
}

/// y[o] = Σ_split partial[split, o] + bias[o].
__global__ void reduce_partials_kernel(const float* __restrict__ partial, int splits, int64_t out,
                                       const float* __restrict__ bias, float* __restrict__ y) {
  const int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (o >= out) return;
  float sum = 0.f;
  for (int s = 0; s < splits; ++s) sum += partial[s * out + o];
  y[o] = sum + (bias ? bias[o] : 0.f);
}

// ---------------------------------------------------------------------------------------------
// compressed-tensors pack-quantized GEMV (m = 1): a warp per output row.

constexpr int kRowWarps = 8;

template <int BITS, bool FAST, bool VEC4>
__global__ void __launch_bounds__(32 * kRowWarps)
    ct_gemv_kernel(DW w, const __half* __restrict__ x, float* __restrict__ y) {
  constexpr int kPf = 32 / BITS;
  constexpr int kVec = VEC4 ? 4 : 1;
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (o >= w.out) return;
  const uint32_t* row = w.packed + o * w.ld_packed;
  float acc = 0.f;
  int64_t cur_g = -1;
  float s = 0.f, z = 0.f;
  for (int64_t w0 = static_cast<int64_t>(lane) * kVec; w0 < w.ld_packed; w0 += 32 * kVec) {
    uint32_t words[kVec];
    if constexpr (VEC4) {
      const int4 v = __ldg(reinterpret_cast<const int4*>(row + w0));
      words[0] = static_cast<uint32_t>(v.x), words[1] = static_cast<uint32_t>(v.y);
      words[2] = static_cast<uint32_t>(v.z), words[3] = static_cast<uint32_t>(v.w);
    } else {
      words[0] = __ldg(row + w0);
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int64_t i0 = (w0 + k) * kPf;
      float xv[kPf];
      load_half_row<kPf>(x + i0, xv);  // x is zero padded past `in`
      if constexpr (FAST) {
        const int64_t g = w.group_size > 0 ? i0 / w.group_size : 0;
        if (g != cur_g)
          cur_g = g, s = load_scale(w, o * w.groups + g), z = static_cast<float>(ct_zero(w, o, g));
        float dot = 0.f, xsum = 0.f;
#pragma unroll
        for (int j = 0; j < kPf; ++j) {
          dot =
              fmaf(static_cast<float>((words[k] >> (BITS * j)) & ((1u << BITS) - 1u)), xv[j], dot);
          xsum += xv[j];
        }
        acc = fmaf(s, dot - z * xsum, acc);
      } else {
#pragma unroll
        for (int j = 0; j < kPf; ++j) {
          if (i0 + j >= w.in) continue;  // zero padding of the last word
          const int64_t g = group_of(w, i0 + j);
          if (g != cur_g)
            cur_g = g, s = load_scale(w, o * w.groups + g),
            z = static_cast<float>(ct_zero(w, o, g));
          const float q = static_cast<float>((words[k] >> (BITS * j)) & ((1u << BITS) - 1u));
          acc = fmaf(s * (q - z), xv[j], acc);
        }
      }
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) y[o] = acc + (w.bias ? w.bias[o] : 0.f);
}

// ---------------------------------------------------------------------------------------------
// Quantized A16 GEMM (m > 1): dequantized fp16 weight tiles, wmma tensor cores.

constexpr int kTm = 64, kTn = 64, kTk = 32, kLds = kTk + 8, kLdc = kTn + 4;

__global__ void __launch_bounds__(128)
    qgemm_wmma_kernel(DW w, const __half* __restrict__ x, int64_t ld_x, int64_t m,
                      float* __restrict__ y) {
  using namespace nvcuda;
  __shared__ __align__(32) __half a_tile[kTm * kLds];
  __shared__ __align__(32) __half b_tile[kTn * kLds];
  __shared__ __align__(32) float c_tile[kTm * kLdc];
  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTm,
                n0 = static_cast<int64_t>(blockIdx.x) * kTn;
  const bool out_major = w.fmt == kFmtGptq;  // GPTQ rows are along the output: walk n fastest

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < w.in; k0 += kTk) {
    // Activations: 64 rows × 32 halves as 16-byte chunks (x rows are zero padded to 128).
    for (int c = tid; c < kTm * kTk / 8; c += blockDim.x) {
      const int r = c / (kTk / 8), kc = (c % (kTk / 8)) * 8;
      int4 v = make_int4(0, 0, 0, 0);
      if (m0 + r < m) v = __ldg(reinterpret_cast<const int4*>(x + (m0 + r) * ld_x + k0 + kc));
      *reinterpret_cast<int4*>(a_tile + r * kLds + kc) = v;
    }
    // Weights: W[n0 + n, k0 + k] → b_tile[n][k] (B = Wᵀ in column-major).
    for (int e = tid; e < kTn * kTk; e += blockDim.x) {
      const int n = out_major ? e % kTn : e / kTk;
      const int k = out_major ? e / kTn : e % kTk;
      const int64_t o = n0 + n, i = k0 + k;
      const float v = (o < w.out && i < w.in) ? dequant(w, o, i) : 0.0f;
      b_tile[n * kLds + k] = __float2half_rn(v);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTk; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        wmma::load_matrix_sync(fa[i], a_tile + (wm * 32 + i * 16) * kLds + kk, kLds);
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::load_matrix_sync(fb[j], b_tile + (wn * 32 + j * 16) * kLds + kk, kLds);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(c_tile + (wm * 32 + i * 16) * kLdc + wn * 32 + j * 16, acc[i][j],
                              kLdc, wmma::mem_row_major);
  __syncthreads();
  for (int e = tid; e < kTm * kTn; e += blockDim.x) {
    const int r = e / kTn, c = e % kTn;
    const int64_t row = m0 + r, o = n0 + c;
    if (row < m && o < w.out)
      y[row * w.out + o] = c_tile[r * kLdc + c] + (w.bias ? w.bias[o] : 0.f);
  }
}

// ---------------------------------------------------------------------------------------------
// Dense fp32.

template <bool VEC4>
__global__ void __launch_bounds__(32 * kRowWarps)
    dense_gemv_kernel(DW w, const float* __restrict__ x, float* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (o >= w.out) return;
  const float* row = w.dense + o * w.in;
  float acc = 0.f;
  if constexpr (VEC4) {
    for (int64_t i = static_cast<int64_t>(lane) * 4; i < w.in; i += 128) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(row + i));
      const float4 b = __ldg(reinterpret_cast<const float4*>(x + i));
      acc = fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, fmaf(a.w, b.w, acc))));
    }
  } else {
    for (int64_t i = lane; i < w.in; i += 32) acc = fmaf(__ldg(row + i), __ldg(x + i), acc);
  }
  acc = warp_sum(acc);
  if (lane == 0) y[o] = acc + (w.bias ? w.bias[o] : 0.f);
}

constexpr int kSm = 64, kSn = 64, kSk = 16;

__global__ void __launch_bounds__(256)
    dense_gemm_kernel(DW w, const float* __restrict__ x, int64_t m, float* __restrict__ y) {
  __shared__ float a_tile[kSk][kSm + 4];
  __shared__ float b_tile[kSk][kSn + 4];
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kSm,
                n0 = static_cast<int64_t>(blockIdx.x) * kSn;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < w.in; k0 += kSk) {
    for (int e = tid; e < kSm * kSk; e += blockDim.x) {
      const int r = e / kSk, k = e % kSk;
      const int64_t row = m0 + r, i = k0 + k;
      a_tile[k][r] = (row < m && i < w.in) ? x[row * w.in + i] : 0.f;
      const int64_t o = n0 + r;
      b_tile[k][r] = (o < w.out && i < w.in) ? __ldg(w.dense + o * w.in + i) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSk; ++k) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = a_tile[k][ty * 4 + i], b[i] = b_tile[k][tx * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t row = m0 + ty * 4 + i, o = n0 + tx * 4 + j;
      if (row < m && o < w.out) y[row * w.out + o] = acc[i][j] + (w.bias ? w.bias[o] : 0.f);
    }
}

// ---------------------------------------------------------------------------------------------
// W8A8: int8 × int8 → int32 with __dp4a. Weight and activation rows are padded to ld_int8 bytes
// (a multiple of 16) with zeros.

__global__ void __launch_bounds__(32 * kRowWarps)
    i8_gemv_kernel(DW w, const int8_t* __restrict__ xq, const float* __restrict__ xs,
                   float* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (o >= w.out) return;
  const int4* row = reinterpret_cast<const int4*>(w.int8_weight + o * w.ld_int8);
  const int4* xv = reinterpret_cast<const int4*>(xq);
  const int64_t chunks = w.ld_int8 / 16;
  int acc = 0;
  for (int64_t c = lane; c < chunks; c += 32) {
    const int4 a = __ldg(row + c), b = __ldg(xv + c);
    acc = __dp4a(a.x, b.x, acc);
    acc = __dp4a(a.y, b.y, acc);
    acc = __dp4a(a.z, b.z, acc);
    acc = __dp4a(a.w, b.w, acc);
  }
  acc = warp_sum(acc);
  if (lane == 0)
    y[o] = xs[0] * load_scale(w, o) * static_cast<float>(acc) + (w.bias ? w.bias[o] : 0.f);
}

__global__ void __launch_bounds__(256)
    i8_gemm_kernel(DW w, const int8_t* __restrict__ xq, const float* __restrict__ xs, int64_t m,
                   float* __restrict__ y) {
  __shared__ int a_tile[kSk][kSm + 4];  // kSk words = 64 int8 per step
  __shared__ int b_tile[kSk][kSn + 4];
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kSm,
                n0 = static_cast<int64_t>(blockIdx.x) * kSn;
  const int64_t ld_words = w.ld_int8 / 4;
  const int* x32 = reinterpret_cast<const int*>(xq);
  const int* w32 = reinterpret_cast<const int*>(w.int8_weight);
  int acc[4][4] = {};
  for (int64_t k0 = 0; k0 < ld_words; k0 += kSk) {
    for (int e = tid; e < kSm * kSk; e += blockDim.x) {
      const int r = e / kSk, k = e % kSk;
      const int64_t kw = k0 + k;
      a_tile[k][r] = (m0 + r < m && kw < ld_words) ? x32[(m0 + r) * ld_words + kw] : 0;
      b_tile[k][r] = (n0 + r < w.out && kw < ld_words) ? __ldg(w32 + (n0 + r) * ld_words + kw) : 0;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSk; ++k) {
      int a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = a_tile[k][ty * 4 + i], b[i] = b_tile[k][tx * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = m0 + ty * 4 + i;
    if (row >= m) continue;
    const float st = xs[row];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t o = n0 + tx * 4 + j;
      if (o < w.out)
        y[row * w.out + o] =
            st * load_scale(w, o) * static_cast<float>(acc[i][j]) + (w.bias ? w.bias[o] : 0.f);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers.

unsigned blocks_for(int64_t n, int64_t per_block) {
  return static_cast<unsigned>(ceil_div(n, per_block));
}

template <int BITS>
void launch_gptq_gemv(const DW& d, const __half* xh, float* y, Workspace& ws, cudaStream_t stream) {
  constexpr int64_t kVals = BITS == 3 ? 32 : 32 / BITS;
  const int64_t units = d.in / kVals;
  const bool fast = d.g_idx == nullptr && (d.group_size <= 0 || d.group_size % kVals == 0);
  const int64_t col_blocks = ceil_div(d.out, 4 * kGemvColThreads);
  // Split K over the grid until ~4 blocks per SM, keeping ≥ 4 units per warp.
  const int64_t want = ceil_div(4 * static_cast<int64_t>(sm_count()), col_blocks);
  const int64_t max_splits = std::max<int64_t>(1, units / (4 * kGemvKWarps));
  int64_t splits = std::min(want, max_splits);
  const int64_t per_split = ceil_div(units, splits);
  splits = ceil_div(units, per_split);
  float* dst = y;
  if (splits > 1) {
    ws.partial.reserve(static_cast<size_t>(splits * d.out));
    dst = ws.partial.get();
  }
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(splits));
  const dim3 block(kGemvColThreads, kGemvKWarps);
  if (fast)
    gptq_gemv_kernel<BITS, true><<<grid, block, 0, stream>>>(d, xh, dst, per_split);
  else
    gptq_gemv_kernel<BITS, false><<<grid, block, 0, stream>>>(d, xh, dst, per_split);
  check_launch("gptq_gemv_kernel");
  if (splits > 1) {
    reduce_partials_kernel<<<blocks_for(d.out, 256), 256, 0, stream>>>(
        dst, static_cast<int>(splits), d.out, d.bias, y);
    check_launch("reduce_partials_kernel");
  }
}

template <int BITS>
void launch_ct_gemv(const DW& d, const __half* xh, float* y, cudaStream_t stream) {
  constexpr int kPf = 32 / BITS;
  const bool fast = d.g_idx == nullptr && (d.group_size <= 0 || d.group_size % kPf == 0);
  const bool vec4 = d.ld_packed % 4 == 0;
  const unsigned grid = blocks_for(d.out, kRowWarps);
  const unsigned block = 32 * kRowWarps;
  if (fast && vec4)
    ct_gemv_kernel<BITS, true, true><<<grid, block, 0, stream>>>(d, xh, y);
  else if (fast)
    ct_gemv_kernel<BITS, true, false><<<grid, block, 0, stream>>>(d, xh, y);
  else if (vec4)
    ct_gemv_kernel<BITS, false, true><<<grid, block, 0, stream>>>(d, xh, y);
  else
    ct_gemv_kernel<BITS, false, false><<<grid, block, 0, stream>>>(d, xh, y);
  check_launch("ct_gemv_kernel");
}

void launch_wmma(const DW& d, const __half* xh, int64_t ld_x, int64_t m, float* y,
                 cudaStream_t stream) {
  const dim3 grid(blocks_for(d.out, kTn), blocks_for(m, kTm));
  qgemm_wmma_kernel<<<grid, 128, 0, stream>>>(d, xh, ld_x, m, y);
  check_launch("qgemm_wmma_kernel");
}

// Host-side checks ------------------------------------------------------------------------------

[[noreturn]] void bad(const std::string& what) {
  throw KernelError("cuda qlinear: " + what);
}

size_t scale_bytes(ScaleType t) {
  return t == ScaleType::kF32 ? 4 : 2;
}

}  // namespace

void upload_weight(const QuantWeightView& w, DeviceWeight* dw) {
  check_view(w);
  if (w.out <= 0 || w.in <= 0) bad("empty weight");
  if (w.act_bits != 0 && w.act_bits != 8)
    bad("act_bits must be 0 or 8, found " + std::to_string(w.act_bits));
  DeviceWeight& d = *dw;
  d.format = w.format;
  d.out = w.out, d.in = w.in, d.bits = w.bits, d.group_size = w.group_size, d.groups = w.groups();
  d.act_bits = w.act_bits;
  d.scale_type = w.scale_type;
  d.has_g_idx = false, d.has_zeros = false, d.has_bias = w.bias != nullptr;
  double bytes = 0;
  const size_t sb = scale_bytes(w.scale_type);
  const int64_t G = d.groups;

  auto upload_g_idx = [&] {
    if (!w.g_idx) return;
    bool trivial = true;
    for (int64_t i = 0; i < w.in; ++i) {
      const int32_t g = w.g_idx[i];
      if (g < 0 || g >= G)
        bad("g_idx[" + std::to_string(i) + "] = " + std::to_string(g) + " outside [0, " +
            std::to_string(G) + ")");
      if (g != (w.group_size > 0 ? i / w.group_size : 0)) trivial = false;
    }
    if (trivial) return;  // the column / group_size fast path reads no g_idx
    d.has_g_idx = true;
    d.g_idx.upload(w.g_idx, static_cast<size_t>(w.in));
    bytes += 4.0 * static_cast<double>(w.in);
  };

  switch (w.format) {
    case WeightFormat::kDense: {
      if (!w.dense) bad("dense weight is null");
      const size_t n = static_cast<size_t>(w.out * w.in);
      d.dense.upload(w.dense, n);
      bytes += 4.0 * static_cast<double>(n);
      break;
    }
    case WeightFormat::kGptq: {
      if (w.bits != 2 && w.bits != 3 && w.bits != 4 && w.bits != 8)
        bad("GPTQ bits must be 2, 3, 4 or 8");
      const int64_t mult = w.bits == 3 ? 32 : 32 / w.bits;
      if (w.in % mult != 0 || w.out % mult != 0)
        bad(std::to_string(w.bits) + "-bit GPTQ needs in and out multiples of " +
            std::to_string(mult));
      if (!w.packed || !w.zeros || !w.scales) bad("GPTQ qweight, qzeros and scales are required");
      d.ld_packed = w.out;
      d.ld_zeros = w.out * w.bits / 32;
      const size_t np = static_cast<size_t>(w.in * w.bits / 32 * w.out),
                   nz = static_cast<size_t>(G * d.ld_zeros);
      d.packed.upload(reinterpret_cast<const uint32_t*>(w.packed), np);
      d.zeros.upload(reinterpret_cast<const uint32_t*>(w.zeros), nz);
      d.scales.upload(static_cast<const uint8_t*>(w.scales), static_cast<size_t>(G * w.out) * sb);
      bytes += 4.0 * static_cast<double>(np + nz) + static_cast<double>(G * w.out * sb);
      upload_g_idx();
      break;
    }
    case WeightFormat::kCtPacked: {
      if (w.bits != 2 && w.bits != 4 && w.bits != 8) bad("pack-quantized bits must be 2, 4 or 8");
      if (!w.packed || !w.scales) bad("weight_packed and weight_scale are required");
      const int64_t pf = 32 / w.bits;
      d.ld_packed = ceil_div(w.in, pf);
      d.ld_zeros = G;
      const size_t np = static_cast<size_t>(w.out * d.ld_packed);
      d.packed.upload(reinterpret_cast<const uint32_t*>(w.packed), np);
      d.scales.upload(static_cast<const uint8_t*>(w.scales), static_cast<size_t>(w.out * G) * sb);
      bytes += 4.0 * static_cast<double>(np) + static_cast<double>(w.out * G * sb);
      if (w.zeros) {
        const size_t nz = static_cast<size_t>(ceil_div(w.out, pf) * G);
        d.has_zeros = true;
        d.zeros.upload(reinterpret_cast<const uint32_t*>(w.zeros), nz);
        bytes += 4.0 * static_cast<double>(nz);
      }
      upload_g_idx();
      break;
    }
    case WeightFormat::kCtInt8: {
      if (w.bits != 8) bad("int-quantized weights are 8-bit");
      if (!w.int8_weight || !w.scales) bad("int8 weight and weight_scale are required");
      d.ld_int8 = round_up(w.in, 16);
      std::vector<int8_t> padded(static_cast<size_t>(w.out * d.ld_int8), 0);
      for (int64_t o = 0; o < w.out; ++o)
        std::memcpy(padded.data() + o * d.ld_int8, w.int8_weight + o * w.in,
                    static_cast<size_t>(w.in));
      d.int8_weight.upload(padded.data(), padded.size());
      d.scales.upload(static_cast<const uint8_t*>(w.scales), static_cast<size_t>(w.out) * sb);
      bytes += static_cast<double>(w.out * w.in) + static_cast<double>(w.out * sb);
      break;
    }
  }
  if (w.bias) {
    d.bias.upload(w.bias, static_cast<size_t>(w.out));
    bytes += 4.0 * static_cast<double>(w.out);
  }
  d.bytes = bytes;
}

void device_qlinear(const DeviceWeight& w, const float* x, int64_t m, float* y, Workspace& ws,
                    cudaStream_t stream) {
  if (m <= 0) return;
  const DW d = describe(w);
  const bool w8a8 = w.format == WeightFormat::kCtInt8 && w.act_bits == 8;
  const bool dense = w.format == WeightFormat::kDense;
  const bool need_half = !dense && !w8a8;
  const bool need_float = dense && w.act_bits == 8;
  const int64_t ld_half = round_up(w.in, 128);
  __half* xh = nullptr;
  int8_t* xq = nullptr;
  float* xs = nullptr;
  float* xf = nullptr;
  if (need_half) ws.x_half.reserve(static_cast<size_t>(m * ld_half)), xh = ws.x_half.get();
  if (w8a8) {
    ws.x_int8.reserve(static_cast<size_t>(m * w.ld_int8)), xq = ws.x_int8.get();
    ws.x_scale.reserve(static_cast<size_t>(m)), xs = ws.x_scale.get();
  }
  if (need_float) ws.x_float.reserve(static_cast<size_t>(m * w.in)), xf = ws.x_float.get();
  if (xh || xq || xf) {
    prep_act_kernel<<<static_cast<unsigned>(m), kPrepThreads, 0, stream>>>(
        x, w.in, static_cast<int>(w.act_bits), xh, ld_half, xq, w.ld_int8, xs, xf);
    check_launch("prep_act_kernel");
  }

  if (dense) {
    const float* xin = need_float ? xf : x;
    if (m == 1) {
      const unsigned grid = blocks_for(w.out, kRowWarps);
      if (w.in % 4 == 0)
        dense_gemv_kernel<true><<<grid, 32 * kRowWarps, 0, stream>>>(d, xin, y);
      else
        dense_gemv_kernel<false><<<grid, 32 * kRowWarps, 0, stream>>>(d, xin, y);
      check_launch("dense_gemv_kernel");
    } else {
      const dim3 grid(blocks_for(w.out, kSn), blocks_for(m, kSm));
      dense_gemm_kernel<<<grid, 256, 0, stream>>>(d, xin, m, y);
      check_launch("dense_gemm_kernel");
    }
    return;
  }
  if (w8a8) {
    if (m == 1) {
      i8_gemv_kernel<<<blocks_for(w.out, kRowWarps), 32 * kRowWarps, 0, stream>>>(d, xq, xs, y);
      check_launch("i8_gemv_kernel");
    } else {
      const dim3 grid(blocks_for(w.out, kSn), blocks_for(m, kSm));
      i8_gemm_kernel<<<grid, 256, 0, stream>>>(d, xq, xs, m, y);
      check_launch("i8_gemm_kernel");
    }
    return;
  }
  if (m == 1 && w.format == WeightFormat::kGptq) {
    switch (w.bits) {
      case 2: return launch_gptq_gemv<2>(d, xh, y, ws, stream);
      case 3: return launch_gptq_gemv<3>(d, xh, y, ws, stream);
      case 4: return launch_gptq_gemv<4>(d, xh, y, ws, stream);
      case 8: return launch_gptq_gemv<8>(d, xh, y, ws, stream);
      default: break;
    }
  }
  if (m == 1 && w.format == WeightFormat::kCtPacked) {
    switch (w.bits) {
      case 2: return launch_ct_gemv<2>(d, xh, y, stream);
      case 4: return launch_ct_gemv<4>(d, xh, y, stream);
      case 8: return launch_ct_gemv<8>(d, xh, y, stream);
      default: break;
    }
  }
  launch_wmma(d, xh, ld_half, m, y, stream);
}

namespace {

__global__ void copy_kernel(const int4* __restrict__ src, int4* __restrict__ dst, size_t n) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    dst[i] = src[i];
}

/// CUDA events around a region of the default stream; destroyed on scope exit.
struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  EventPair() {
    check(cudaEventCreate(&start), "cudaEventCreate");
    const cudaError_t st = cudaEventCreate(&stop);
    if (st != cudaSuccess) cudaEventDestroy(start), start = nullptr;
    check(st, "cudaEventCreate");
  }
  ~EventPair() {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
  double elapsed_seconds() const {
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    return ms / 1e3;
  }
};

}  // namespace
}  // namespace cuda_detail

using namespace cuda_detail;

bool cuda_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" status
    return false;
  }
  return n > 0;
}

CudaDeviceInfo cuda_device_info() {
  CudaDeviceInfo info;
  if (!cuda_available()) return info;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  std::snprintf(info.name, sizeof(info.name), "%s", prop.name);
  info.sm_major = prop.major, info.sm_minor = prop.minor;
  int clock_khz = 0, bus_bits = 0;
  check(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device),
        "cudaDeviceGetAttribute (memory clock)");
  check(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device),
        "cudaDeviceGetAttribute (bus width)");
  // Double data rate: two transfers per clock over bus_bits / 8 bytes.
  info.memory_bandwidth_gbs = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
  return info;
}

void cuda_qlinear(const QuantWeightView& w, const float* x, int64_t m, float* y) {
  if (m < 0) throw KernelError("cuda qlinear: m must be >= 0, found " + std::to_string(m));
  if (m == 0) return check_view(w);
  DeviceWeight dw;
  upload_weight(w, &dw);
  if (!x || !y) throw KernelError("cuda qlinear: x and y must not be null");
  DeviceBuffer<float> dx, dy;
  dx.upload(x, static_cast<size_t>(m * w.in));
  dy.reserve(static_cast<size_t>(m * w.out));
  Workspace ws;
  device_qlinear(dw, dx.get(), m, dy.get(), ws, nullptr);
  check(cudaDeviceSynchronize(), "cuda qlinear (kernel execution)");
  dy.download(y, static_cast<size_t>(m * w.out));
}

CudaPerf cuda_qlinear_perf(const QuantWeightView& w, int64_t m, int iters) {
  if (m < 1) throw KernelError("cuda perf: m must be >= 1, found " + std::to_string(m));
  if (iters < 1) throw KernelError("cuda perf: iters must be >= 1, found " + std::to_string(iters));
  DeviceWeight dw;
  upload_weight(w, &dw);
  std::vector<float> x(static_cast<size_t>(m * w.in));
  std::mt19937 rng(12345);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& v : x) v = dist(rng);
  DeviceBuffer<float> dx, dy;
  dx.upload(x.data(), x.size());
  dy.reserve(static_cast<size_t>(m * w.out));
  Workspace ws;
  for (int i = 0; i < 3; ++i) device_qlinear(dw, dx.get(), m, dy.get(), ws, nullptr);
  check(cudaDeviceSynchronize(), "cuda perf (warm-up)");
  EventPair ev;
  check(cudaEventRecord(ev.start, nullptr), "cudaEventRecord");
  for (int i = 0; i < iters; ++i) device_qlinear(dw, dx.get(), m, dy.get(), ws, nullptr);
  check(cudaEventRecord(ev.stop, nullptr), "cudaEventRecord");
  CudaPerf perf;
  perf.seconds_per_call = ev.elapsed_seconds() / iters;
  perf.bytes = dw.bytes + 4.0 * static_cast<double>(m) * static_cast<double>(w.in + w.out);
  perf.flops =
      2.0 * static_cast<double>(m) * static_cast<double>(w.in) * static_cast<double>(w.out);
  return perf;
}

double cuda_copy_bandwidth_gbs(size_t bytes, int iters) {
  if (iters < 1) throw KernelError("cuda copy bandwidth: iters must be >= 1");
  const size_t n = std::max<size_t>(1, bytes / sizeof(int4));
  DeviceBuffer<int4> src(n), dst(n);
  check(cudaMemset(src.get(), 0, n * sizeof(int4)), "cudaMemset");
  const unsigned threads = 256;
  const unsigned blocks = static_cast<unsigned>(
      std::min<size_t>(static_cast<size_t>(ceil_div(static_cast<int64_t>(n), threads)),
                       static_cast<size_t>(sm_count()) * 16));
  for (int i = 0; i < 2; ++i) copy_kernel<<<blocks, threads>>>(src.get(), dst.get(), n);
  check_launch("copy_kernel");
  check(cudaDeviceSynchronize(), "copy_kernel (warm-up)");
  EventPair ev;
  check(cudaEventRecord(ev.start, nullptr), "cudaEventRecord");
  for (int i = 0; i < iters; ++i) copy_kernel<<<blocks, threads>>>(src.get(), dst.get(), n);
  check_launch("copy_kernel");
  check(cudaEventRecord(ev.stop, nullptr), "cudaEventRecord");
  const double seconds = ev.elapsed_seconds();
  return 2.0 * static_cast<double>(n * sizeof(int4)) * iters / seconds / 1e9;
}

}  // namespace lathe::kernels
