// The qlinear kernels' shared device code (private to kernels/cuda/qlinear*.cu): the weight as the
// kernels see it, the dequantization helpers every format's kernel uses, and one launcher per
// kernel family, each in its own file (qlinear.cu says which kernel serves which format and m).
// Torch-free.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_util.cuh"
#include "kernels/cuda/qlinear_device.cuh"

namespace lathe::kernels::cuda_detail {

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

/// The kernel view of an uploaded weight (qlinear.cu).
DW describe(const DeviceWeight& w);

/// Warps per block of the row-per-warp kernels (ct GEMV, dense GEMV, W8A8 GEMV).
constexpr int kRowWarps = 8;
/// Output tile (rows × columns) and K step of the SIMT GEMMs (dense fp32, W8A8).
constexpr int kSm = 64, kSn = 64, kSk = 16;

inline unsigned blocks_for(int64_t n, int64_t per_block) {
  return static_cast<unsigned>(ceil_div(n, per_block));
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
__device__ inline float dequant(const DW& w, int64_t o, int64_t i) {
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
// Launchers (enqueued on `stream`, launch errors checked; not synchronised).

/// Activations for one call (qlinear_prep.cu): whichever of x_half (fp16, or fake-quantized q·s
/// with act_bits 8; stride ld_half, zero padded), x_int8/x_scale (per-token int8, stride
/// ld_int8) and x_float (q·s) are non-null, for m token rows of `in` values.
void launch_prep_act(const float* x, int64_t m, int64_t in, int act_bits, __half* x_half,
                     int64_t ld_half, int8_t* x_int8, int64_t ld_int8, float* x_scale,
                     float* x_float, cudaStream_t stream);
/// GPTQ GEMV, m = 1 (qlinear_gptq.cu); false when d.bits has no GEMV kernel.
bool launch_gptq_gemv(const DW& d, const __half* xh, float* y, Workspace& ws, cudaStream_t stream);
/// compressed-tensors pack-quantized GEMV, m = 1 (qlinear_ct.cu); false when d.bits has none.
bool launch_ct_gemv(const DW& d, const __half* xh, float* y, cudaStream_t stream);
/// Quantized A16 GEMM with tensor cores, every quantized format (qlinear_wmma.cu).
void launch_wmma(const DW& d, const __half* xh, int64_t ld_x, int64_t m, float* y,
                 cudaStream_t stream);
/// Dense fp32 GEMV / GEMM (qlinear_dense.cu).
void launch_dense(const DW& d, const float* x, int64_t m, float* y, cudaStream_t stream);
/// W8A8 int8 × int8 GEMV / GEMM (qlinear_w8a8.cu).
void launch_w8a8(const DW& d, const int8_t* xq, const float* xs, int64_t m, float* y,
                 cudaStream_t stream);

}  // namespace lathe::kernels::cuda_detail
