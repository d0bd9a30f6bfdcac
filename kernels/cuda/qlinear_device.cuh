// Private device-side qlinear interface shared by kernels/cuda/qlinear.cu (which implements it) and
// kernels/cuda/moe.cu: a weight uploaded once in its stored layout, and y = act(x)·Wᵀ + bias on
// device-resident fp32 activations. Torch-free.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_util.cuh"
#include "kernels/qlinear.h"

namespace lathe::kernels::cuda_detail {

/// One linear's weight on the device, exactly as stored (FORMATS.md §3/§4), plus what the kernels
/// need to read it. Built by upload_weight; owns its buffers.
struct DeviceWeight {
  WeightFormat format = WeightFormat::kDense;
  int64_t out = 0, in = 0, bits = 16, group_size = -1, groups = 1, act_bits = 0;
  ScaleType scale_type = ScaleType::kF16;
  bool has_g_idx = false;  ///< false when the view had none or a trivial one (column / group_size)
  bool has_zeros = false;  ///< kCtPacked asymmetric
  bool has_bias = false;
  int64_t ld_packed = 0;  ///< words per packed row: kGptq out, kCtPacked ⌈in/pf⌉
  int64_t ld_zeros = 0;   ///< words per zero row: kGptq out·b/32, kCtPacked G
  int64_t ld_int8 = 0;    ///< kCtInt8 row stride in bytes (in rounded up to 16, zero padded)
  DeviceBuffer<uint32_t> packed, zeros;
  DeviceBuffer<uint8_t> scales;  ///< raw bytes as stored (f16/bf16/f32 per scale_type)
  DeviceBuffer<int32_t> g_idx;
  DeviceBuffer<int8_t> int8_weight;
  DeviceBuffer<float> dense, bias;
  double bytes = 0;  ///< weight bytes a call reads (packed, zeros, scales, g_idx, bias as stored)
};

/// Checks `w` (check_view plus what the device kernels rely on: g_idx values in range, pack
/// multiples; KernelError) and uploads it. KernelError (kRuntime) on CUDA failures.
void upload_weight(const QuantWeightView& w, DeviceWeight* dw);

/// Scratch space of device_qlinear, grown on demand and reused across calls.
struct Workspace {
  DeviceBuffer<__half> x_half;  ///< [m, round_up(in, 128)] fp16 activations, zero padded
  DeviceBuffer<int8_t> x_int8;  ///< [m, ld_int8] per-token int8 activations, zero padded
  DeviceBuffer<float> x_scale;  ///< [m] per-token scales
  DeviceBuffer<float> x_float;  ///< [m, in] fake-quantized fp32 activations (dense + act_bits 8)
  DeviceBuffer<float> partial;  ///< split-K partial sums of the GEMV
};

/// y[m, out] = act(x[m, in])·Wᵀ + bias with x and y device pointers (fp32, row-major), enqueued on
/// `stream` (not synchronised). m ≥ 1.
void device_qlinear(const DeviceWeight& w, const float* x, int64_t m, float* y, Workspace& ws,
                    cudaStream_t stream);

}  // namespace lathe::kernels::cuda_detail
