// Host side of kernels/convert.h for builds without CUDA: no devices, and a clear error when a
// caller asks for a CUDA conversion anyway.
#ifndef LATHE_HAVE_CUDA

#include "kernels/convert.h"
#include "kernels/kernel_error.h"

namespace lathe::kernels {

int cuda_device_count() {
  return 0;
}

bool cuda_compiled() {
  return false;
}

void cuda_half_to_f32(const uint16_t*, float*, size_t, bool) {
  throw KernelError(KernelError::Kind::kUnsupported,
                    "device: this lathe was built without CUDA (configure with -DLATHE_CUDA=ON)");
}

}  // namespace lathe::kernels

#endif  // LATHE_HAVE_CUDA
