// Device-side weight conversion: the CUDA twin of compressor/model/dtype.h's convert_to_f32.
// Torch-free (DESIGN.md: kernels/ must not depend on LibTorch in CUDA files).
#pragma once

#include <cstddef>
#include <cstdint>

namespace lathe::kernels {

/// Visible CUDA devices: 0 in a build without LATHE_CUDA or on a machine without a GPU.
int cuda_device_count();

/// True when this binary was compiled with CUDA kernels (-DLATHE_CUDA=ON).
bool cuda_compiled();

/// Converts `count` BF16 (`is_bf16`) or F16 values from host memory to F32 in host memory on
/// device 0: copy in, one thread per element, copy out. Bit-exact with the CPU conversion,
/// including subnormals, infinities and NaN. Throws KernelError of kind kRuntime on a CUDA failure
/// and of kind kUnsupported in a build without CUDA (the CLI maps them to the resource and
/// unsupported exit codes).
void cuda_half_to_f32(const uint16_t* host_in, float* host_out, size_t count, bool is_bf16);

}  // namespace lathe::kernels
