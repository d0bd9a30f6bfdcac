// The one place where WeightStore meets LibTorch: tensors that view the memory-mapped checkpoint.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <string>

#include "compressor/model/dtype.h"

namespace lathe {

class WeightStore;

/// The torch scalar type holding `dtype` bit for bit: BOOL→Bool, U8→Byte, I8→Char, I16→Short,
/// U16→UInt16, F16→Half, BF16→BFloat16, I32→Int, U32→UInt32, F32→Float, F64→Double, I64→Long,
/// U64→UInt64, F8_E4M3→Float8_e4m3fn, F8_E5M2→Float8_e5m2.
c10::ScalarType to_scalar_type(DType dtype);

/// Tensor `name` of `store` on the CPU, in its stored dtype and shape (contiguous). When the bytes
/// are aligned for the dtype the tensor is a zero-copy view into the mapping, which it keeps
/// alive (it may outlive `store`); otherwise (FORMATS.md §1 rule 8) and for empty tensors it is
/// a fresh copy. Treat the result as read-only: clone before an in-place operation (see
/// MappedFile for what a stray write does). Throws DataError when `name` is missing or a BOOL
/// tensor holds a byte other than 0 or 1 (torch assumes 0/1).
at::Tensor load_tensor(const WeightStore& store, const std::string& name);

/// load_tensor(store, name) converted to `dtype` with torch's conversion rules (exact widening
/// of floats, round-to-nearest-even narrowing). Returns the zero-copy view itself when `dtype` is
/// already the stored type; otherwise a new tensor that does not alias the file.
at::Tensor load_tensor(const WeightStore& store, const std::string& name, c10::ScalarType dtype);

}  // namespace lathe
