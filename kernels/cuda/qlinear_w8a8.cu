// W8A8 (compressed-tensors int8 weights, per-token int8 activations): __dp4a GEMV and GEMM
// (see qlinear.cu).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/qlinear_kernels.cuh"

namespace lathe::kernels::cuda_detail {
namespace {

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

}  // namespace

void launch_w8a8(const DW& d, const int8_t* xq, const float* xs, int64_t m, float* y,
                 cudaStream_t stream) {
  if (m == 1) {
    i8_gemv_kernel<<<blocks_for(d.out, kRowWarps), 32 * kRowWarps, 0, stream>>>(d, xq, xs, y);
    check_launch("i8_gemv_kernel");
  } else {
    const dim3 grid(blocks_for(d.out, kSn), blocks_for(m, kSm));
    i8_gemm_kernel<<<grid, 256, 0, stream>>>(d, xq, xs, m, y);
    check_launch("i8_gemm_kernel");
  }
}
}  // namespace lathe::kernels::cuda_detail
