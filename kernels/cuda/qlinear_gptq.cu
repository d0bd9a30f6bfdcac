// GPTQ v1 GEMV (m = 1) with split-K (see qlinear.cu).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/qlinear_kernels.cuh"

namespace lathe::kernels::cuda_detail {
namespace {

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

template <int BITS>
void gptq_gemv(const DW& d, const __half* xh, float* y, Workspace& ws, cudaStream_t stream) {
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

}  // namespace

bool launch_gptq_gemv(const DW& d, const __half* xh, float* y, Workspace& ws, cudaStream_t stream) {
  switch (d.bits) {
    case 2: return gptq_gemv<2>(d, xh, y, ws, stream), true;
    case 3: return gptq_gemv<3>(d, xh, y, ws, stream), true;
    case 4: return gptq_gemv<4>(d, xh, y, ws, stream), true;
    case 8: return gptq_gemv<8>(d, xh, y, ws, stream), true;
    default: return false;
  }
}
}  // namespace lathe::kernels::cuda_detail
