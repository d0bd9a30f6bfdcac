#include "compressor/model/tensor_bridge.h"

#include <ATen/ATen.h>

#include <cstring>

#include "compressor/common/errors.h"
#include "compressor/model/mapped_file.h"
#include "compressor/model/weight_store.h"

namespace lathe {
namespace {

// torch's bool kernels read a byte and assume it is 0 or 1; anything else is undefined there.
void check_bool_bytes(const TensorView& view, const WeightStore& store, const std::string& name) {
  for (int64_t i = 0; i < view.numel; ++i) {
    if (view.data[i] > 1) {
      throw DataError(store.info(name).shard_path, name,
                      "BOOL element " + std::to_string(i) + " holds byte " +
                          std::to_string(view.data[i]) + "; expected 0 or 1");
    }
  }
}

}  // namespace

c10::ScalarType to_scalar_type(DType dtype) {
  switch (dtype) {
    case DType::kBool: return c10::ScalarType::Bool;
    case DType::kU8: return c10::ScalarType::Byte;
    case DType::kI8: return c10::ScalarType::Char;
    case DType::kI16: return c10::ScalarType::Short;
    case DType::kU16: return c10::ScalarType::UInt16;
    case DType::kF16: return c10::ScalarType::Half;
    case DType::kBF16: return c10::ScalarType::BFloat16;
    case DType::kI32: return c10::ScalarType::Int;
    case DType::kU32: return c10::ScalarType::UInt32;
    case DType::kF32: return c10::ScalarType::Float;
    case DType::kF64: return c10::ScalarType::Double;
    case DType::kI64: return c10::ScalarType::Long;
    case DType::kU64: return c10::ScalarType::UInt64;
    case DType::kF8E4M3: return c10::ScalarType::Float8_e4m3fn;
    case DType::kF8E5M2: return c10::ScalarType::Float8_e5m2;
  }
  throw InternalError("", dtype_name(dtype), "no torch scalar type for this dtype");
}

at::Tensor load_tensor(const WeightStore& store, const std::string& name) {
  const TensorView view = store.view(name);
  if (view.dtype == DType::kBool) check_bool_bytes(view, store, name);
  const auto options = at::TensorOptions().dtype(to_scalar_type(view.dtype)).device(at::kCPU);
  if (view.numel == 0) return at::empty(view.shape, options);
  if (view.aligned) {
    // The deleter owns a reference to the mapping: the tensor keeps the file mapped after the
    // store is gone. const_cast is sound because the mapping is private (see MappedFile).
    std::shared_ptr<const MappedFile> keep_alive = view.mapping;
    return at::from_blob(
        const_cast<uint8_t*>(view.data), view.shape,
        [keep_alive](void*) mutable { keep_alive.reset(); }, options);
  }
  at::Tensor copy = at::empty(view.shape, options);
  std::memcpy(copy.data_ptr(), view.data, view.nbytes);
  return copy;
}

at::Tensor load_tensor(const WeightStore& store, const std::string& name, c10::ScalarType dtype) {
  at::Tensor tensor = load_tensor(store, name);
  return tensor.scalar_type() == dtype ? tensor : tensor.to(dtype);
}

}  // namespace lathe
