// compressed-tensors pack-quantized GEMV (m = 1): a warp per output row (see qlinear.cu).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/qlinear_kernels.cuh"

namespace lathe::kernels::cuda_detail {
namespace {

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

template <int BITS>
void ct_gemv(const DW& d, const __half* xh, float* y, cudaStream_t stream) {
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

}  // namespace

bool launch_ct_gemv(const DW& d, const __half* xh, float* y, cudaStream_t stream) {
  switch (d.bits) {
    case 2: return ct_gemv<2>(d, xh, y, stream), true;
    case 4: return ct_gemv<4>(d, xh, y, stream), true;
    case 8: return ct_gemv<8>(d, xh, y, stream), true;
    default: return false;
  }
}
}  // namespace lathe::kernels::cuda_detail
