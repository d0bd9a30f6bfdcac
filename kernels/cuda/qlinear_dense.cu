// Dense fp32 GEMV and GEMM, SIMT (see qlinear.cu).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/qlinear_kernels.cuh"

namespace lathe::kernels::cuda_detail {
namespace {

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

}  // namespace

void launch_dense(const DW& d, const float* x, int64_t m, float* y, cudaStream_t stream) {
  if (m == 1) {
    const unsigned grid = blocks_for(d.out, kRowWarps);
    if (d.in % 4 == 0)
      dense_gemv_kernel<true><<<grid, 32 * kRowWarps, 0, stream>>>(d, x, y);
    else
      dense_gemv_kernel<false><<<grid, 32 * kRowWarps, 0, stream>>>(d, x, y);
    check_launch("dense_gemv_kernel");
  } else {
    const dim3 grid(blocks_for(d.out, kSn), blocks_for(m, kSm));
    dense_gemm_kernel<<<grid, 256, 0, stream>>>(d, x, m, y);
    check_launch("dense_gemm_kernel");
  }
}
}  // namespace lathe::kernels::cuda_detail
