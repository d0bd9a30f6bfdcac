// CUDA side of kernels/qlinear.h: implemented in kernels/cuda/*.cu when built with -DLATHE_CUDA=ON,
// and by kernels/qlinear_cuda_host.cpp (every call throws KernelError, cuda_available() false)
// otherwise. Torch-free.
//
// Kernels: W4A16 grouped GEMV (decode, m = 1) and GEMM (prefill, m > 1) for GPTQ and
// compressed-tensors pack-quantized (2/3/4/8 bits are accepted by the generic path; 4-bit has the
// tuned one), W8A8 int8 GEMM (per-token activation scales, per-channel weight scales, int32
// accumulation) for compressed-tensors int-quantized, and the MoE expert dispatch (tokens grouped
// by expert on the device, each expert's gate/up/down as above, weighted scatter-add). A16 formats
// convert activations to fp16 on the device and accumulate in fp32.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/qlinear.h"

namespace lathe::kernels {

/// Compiled with CUDA and at least one device visible.
bool cuda_available();

/// Name and peak figures of device 0 ("" / 0 without a device).
struct CudaDeviceInfo {
  char name[256] = {0};
  int sm_major = 0, sm_minor = 0;
  double memory_bandwidth_gbs = 0;  ///< theoretical, from the memory clock and bus width
};
CudaDeviceInfo cuda_device_info();

/// y[m, out] = act(x[m, in]) · Wᵀ + bias with host pointers: uploads the weight and x, runs, copies
/// y back (what `lathe verify` and the harness' test mode use).
void cuda_qlinear(const QuantWeightView& w, const float* x, int64_t m, float* y);

/// The experts of a MoE block for a routing already computed on the host (moe_route): experts and
/// weights are [m, top_k]. y[m, hidden] includes the shared expert when the block has one.
void cuda_moe_block(const MoeBlockView& block, const float* x, int64_t m, const int32_t* experts,
                    const float* weights, float* y);

/// Device-resident timing for the harness' perf mode: uploads w once, then times `iters` calls on
/// random activations after warm-up (CUDA events). bytes = weight bytes read + activations in/out;
/// flops = 2·m·in·out.
struct CudaPerf {
  double seconds_per_call = 0;
  double bytes = 0;
  double flops = 0;
};
CudaPerf cuda_qlinear_perf(const QuantWeightView& w, int64_t m, int iters);

/// Device-to-device copy bandwidth in GB/s (read + write bytes / time) with a simple copy kernel
/// over `bytes` bytes: the reference the perf mode reports fractions against.
double cuda_copy_bandwidth_gbs(size_t bytes, int iters);

}  // namespace lathe::kernels
