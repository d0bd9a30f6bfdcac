// Quantized A16 GEMM (m > 1): dequantized fp16 weight tiles on tensor cores (see qlinear.cu).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/qlinear_kernels.cuh"

namespace lathe::kernels::cuda_detail {
namespace {

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

}  // namespace

void launch_wmma(const DW& d, const __half* xh, int64_t ld_x, int64_t m, float* y,
                 cudaStream_t stream) {
  const dim3 grid(blocks_for(d.out, kTn), blocks_for(m, kTm));
  qgemm_wmma_kernel<<<grid, 128, 0, stream>>>(d, xh, ld_x, m, y);
  check_launch("qgemm_wmma_kernel");
}
}  // namespace lathe::kernels::cuda_detail
