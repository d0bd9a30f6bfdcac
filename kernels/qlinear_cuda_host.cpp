// Host side of kernels/qlinear_cuda.h for builds without CUDA: no device, and a clear KernelError
// when a caller asks for a CUDA kernel anyway.
#ifndef LATHE_HAVE_CUDA

#include "kernels/qlinear_cuda.h"

namespace lathe::kernels {
namespace {

[[noreturn]] void no_cuda() {
  throw KernelError("this build has no CUDA (configure with -DLATHE_CUDA=ON)");
}

}  // namespace

bool cuda_available() {
  return false;
}

CudaDeviceInfo cuda_device_info() {
  return {};
}

void cuda_qlinear(const QuantWeightView&, const float*, int64_t, float*) {
  no_cuda();
}

void cuda_moe_block(const MoeBlockView&, const float*, int64_t, const int32_t*, const float*,
                    float*) {
  no_cuda();
}

CudaPerf cuda_qlinear_perf(const QuantWeightView&, int64_t, int) {
  no_cuda();
}

double cuda_copy_bandwidth_gbs(size_t, int) {
  no_cuda();
}

}  // namespace lathe::kernels

#endif  // LATHE_HAVE_CUDA
