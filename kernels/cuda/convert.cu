// CUDA conversion of 16-bit floats to f32. No LibTorch here (DESIGN.md module map).
#include <cuda_runtime.h>

#include <string>

#include "kernels/convert.h"
#include "kernels/kernel_error.h"

namespace lathe::kernels {
namespace {

// IEEE half → float by bit manipulation, so the result does not depend on device intrinsics.
__device__ float half_bits_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal half: normalise into a float
    int shift = 0;
    while ((mantissa & 0x400u) == 0) mantissa <<= 1, ++shift;
    bits = sign | ((113u - shift) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return __uint_as_float(bits);
}

__global__ void half_to_f32_kernel(const uint16_t* in, float* out, size_t count, bool is_bf16) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  out[i] = is_bf16 ? __uint_as_float(static_cast<uint32_t>(in[i]) << 16) : half_bits_to_f32(in[i]);
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw KernelError(KernelError::Kind::kRuntime,
                      std::string("cuda: ") + what + ": " + cudaGetErrorString(status));
  }
}

}  // namespace

int cuda_device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

bool cuda_compiled() {
  return true;
}

void cuda_half_to_f32(const uint16_t* host_in, float* host_out, size_t count, bool is_bf16) {
  if (count == 0) return;
  uint16_t* in = nullptr;
  float* out = nullptr;
  check(cudaMalloc(&in, count * sizeof(uint16_t)), "cudaMalloc");
  const cudaError_t alloc = cudaMalloc(&out, count * sizeof(float));
  if (alloc != cudaSuccess) cudaFree(in);
  check(alloc, "cudaMalloc");
  cudaError_t status = cudaMemcpy(in, host_in, count * sizeof(uint16_t), cudaMemcpyHostToDevice);
  if (status == cudaSuccess) {
    const unsigned threads = 256;
    const unsigned blocks = static_cast<unsigned>((count + threads - 1) / threads);
    half_to_f32_kernel<<<blocks, threads>>>(in, out, count, is_bf16);
    status = cudaGetLastError();
  }
  if (status == cudaSuccess)
    status = cudaMemcpy(host_out, out, count * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(in);
  cudaFree(out);
  check(status, "half_to_f32_kernel");
}

}  // namespace lathe::kernels
