// Private helpers of kernels/cuda/*.cu: CUDA error checking (KernelError of kind kRuntime with the
// CUDA error string), an owning device buffer, and small device utilities. Torch-free.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/kernel_error.h"

namespace lathe::kernels::cuda_detail {

/// Throws KernelError(kRuntime, "cuda: <what>: <CUDA error string>") unless `status` is
/// cudaSuccess.
inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw KernelError(KernelError::Kind::kRuntime,
                      std::string("cuda: ") + what + ": " + cudaGetErrorString(status));
  }
}

/// Checks the launch of the kernel just enqueued (configuration errors, earlier async faults).
inline void check_launch(const char* kernel) {
  check(cudaGetLastError(), kernel);
}

#define LATHE_CUDA_CHECK(call) ::lathe::kernels::cuda_detail::check((call), #call)

/// An owning device allocation of `count` T; grows (never shrinks) on reserve.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) { reserve(count); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), count_(o.count_) {
    o.ptr_ = nullptr, o.count_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = o.ptr_, count_ = o.count_;
      o.ptr_ = nullptr, o.count_ = 0;
    }
    return *this;
  }

  /// Ensures room for `count` elements (contents are lost when it reallocates).
  void reserve(size_t count) {
    if (count <= count_) return;
    release();
    void* p = nullptr;
    check(cudaMalloc(&p, count * sizeof(T)), "cudaMalloc");
    ptr_ = static_cast<T*>(p);
    count_ = count;
  }
  /// reserve(count), then copy `count` elements from host memory.
  void upload(const T* host, size_t count) {
    reserve(count);
    if (count)
      check(cudaMemcpy(ptr_, host, count * sizeof(T), cudaMemcpyHostToDevice),
            "cudaMemcpy (upload)");
  }
  void download(T* host, size_t count) const {
    if (count)
      check(cudaMemcpy(host, ptr_, count * sizeof(T), cudaMemcpyDeviceToHost),
            "cudaMemcpy (download)");
  }
  void zero(size_t count, cudaStream_t stream = nullptr) {
    reserve(count);
    if (count) check(cudaMemsetAsync(ptr_, 0, count * sizeof(T), stream), "cudaMemsetAsync");
  }
  T* get() const { return ptr_; }
  size_t size() const { return count_; }

 private:
  void release() {
    if (ptr_) cudaFree(ptr_);  // errors here cannot be reported from a destructor
    ptr_ = nullptr;
    count_ = 0;
  }
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
inline int64_t round_up(int64_t a, int64_t b) {
  return ceil_div(a, b) * b;
}

/// Multiprocessor count of the current device (queried once).
int sm_count();

}  // namespace lathe::kernels::cuda_detail
