// The one error type of kernels/ (which includes nothing from compressor/): what went wrong and of
// which kind, so the CLI can map it to lathe's exit codes (compressor/cli/main.cpp).
#pragma once

#include <stdexcept>
#include <string>

namespace lathe::kernels {

struct KernelError : std::runtime_error {
  enum class Kind {
    kArgument,     ///< bad arguments to a kernel (shapes, bits, null pointers): a caller's bug
    kUnsupported,  ///< a request this build cannot serve (CUDA asked of a build without it)
    kRuntime,      ///< the device failed (a CUDA runtime error: out of memory, a fault)
  };
  explicit KernelError(const std::string& message) : std::runtime_error(message) {}
  KernelError(Kind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_ = Kind::kArgument;
};

}  // namespace lathe::kernels
