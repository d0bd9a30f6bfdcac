// The hidden states of N sequences at one layer boundary (DESIGN.md "Memory model"): in RAM, or in
// a disk-backed file once they would exceed a memory limit.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>

namespace lathe {

/// A [N, T, d] tensor of one dtype (bf16 by default) whose storage is either anonymous memory or
/// a memory-mapped temporary file (deleted on creation, so nothing is left behind after a kill).
class ActivationBuffer {
 public:
  /// Allocates the buffer; spills to a file under `spill_dir` when its size exceeds
  /// `memory_limit_bytes`. ResourceError when the file cannot be created or sized (disk full).
  ActivationBuffer(int64_t n, int64_t t, int64_t d, at::ScalarType dtype,
                   uint64_t memory_limit_bytes, const std::filesystem::path& spill_dir);
  ~ActivationBuffer();
  ActivationBuffer(ActivationBuffer&&) noexcept;
  ActivationBuffer& operator=(ActivationBuffer&&) noexcept;

  /// Sequences [begin, end) as a view [end-begin, T, d] (no copy).
  at::Tensor rows(int64_t begin, int64_t end) const;
  /// Copies `values` [k, T, d] (any dtype) into sequences [begin, begin+k).
  void write(int64_t begin, const at::Tensor& values);
  /// The whole buffer as a view.
  const at::Tensor& all() const { return tensor_; }
  bool spilled() const { return mapping_ != nullptr; }
  uint64_t bytes() const { return bytes_; }

 private:
  at::Tensor tensor_;
  void* mapping_ = nullptr;
  uint64_t bytes_ = 0;
};

}  // namespace lathe
