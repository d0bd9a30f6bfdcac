// qlinear activations (see qlinear.cu): fp16 conversion and per-token int8 quantization.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/qlinear_kernels.cuh"

namespace lathe::kernels::cuda_detail {
namespace {

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

}  // namespace

void launch_prep_act(const float* x, int64_t m, int64_t in, int act_bits, __half* x_half,
                     int64_t ld_half, int8_t* x_int8, int64_t ld_int8, float* x_scale,
                     float* x_float, cudaStream_t stream) {
  prep_act_kernel<<<static_cast<unsigned>(m), kPrepThreads, 0, stream>>>(
      x, in, act_bits, x_half, ld_half, x_int8, ld_int8, x_scale, x_float);
  check_launch("prep_act_kernel");
}
}  // namespace lathe::kernels::cuda_detail
