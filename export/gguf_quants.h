// Dequantization of GGUF tensor data (ggml's block formats) to float32, bit-identical to the `gguf`
// package's gguf.quants.dequantize (the reference the tests compare against): the same products and
// sums in the same order, in float32, never fused. Torch-free.
#pragma once

#include <cstdint>
#include <string>

namespace lathe::gguf {

/// True for the types lathe dequantizes: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,
/// Q4_K, Q5_K, Q6_K.
bool can_dequantize(uint32_t type);

/// Writes the `numel` values of a tensor of `type` stored at `data` (exactly
/// numel / block_size × type_size bytes, any alignment) to `out`, in storage order (row-major,
/// the GGUF row = dims[0]). `numel` must be a multiple of the type's block size. UnsupportedError
/// (label, tensor) naming the type for a type can_dequantize() refuses; InternalError for a
/// `numel` that is not a whole number of blocks.
void dequantize(uint32_t type, const uint8_t* data, uint64_t numel, float* out,
                const std::string& label, const std::string& tensor);

}  // namespace lathe::gguf
