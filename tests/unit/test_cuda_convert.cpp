// CUDA conversion against its CPU twin over every 16-bit pattern; skips where no GPU is visible.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "compressor/common/errors.h"
#include "compressor/model/dtype.h"
#include "kernels/convert.h"
#include "kernels/kernel_error.h"

namespace lathe {
namespace {

void expect_same_as_cpu(bool is_bf16) {
  if (kernels::cuda_device_count() == 0) {
    GTEST_SKIP() << "no CUDA device visible (built with CUDA: "
                 << (kernels::cuda_compiled() ? "yes" : "no") << ")";
  }
  std::vector<uint16_t> all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> gpu(all.size());
  kernels::cuda_half_to_f32(all.data(), gpu.data(), all.size(), is_bf16);
  for (size_t i = 0; i < all.size(); ++i) {
    const float cpu = is_bf16 ? bf16_to_f32(all[i]) : f16_to_f32(all[i]);
    if (std::isnan(cpu)) {
      ASSERT_TRUE(std::isnan(gpu[i])) << "pattern " << i;
    } else {
      uint32_t a, b;
      std::memcpy(&a, &cpu, 4);
      std::memcpy(&b, &gpu[i], 4);
      ASSERT_EQ(a, b) << "pattern " << i;
    }
  }
}

TEST(CudaConvert, Bf16MatchesCpuBitForBit) {
  expect_same_as_cpu(true);
}
TEST(CudaConvert, F16MatchesCpuBitForBit) {
  expect_same_as_cpu(false);
}

TEST(CudaConvert, WithoutCudaBuildTheErrorSaysHowToGetIt) {
  if (kernels::cuda_compiled()) GTEST_SKIP() << "CUDA build";
  uint16_t in = 0;
  float out = 0;
  try {
    kernels::cuda_half_to_f32(&in, &out, 1, true);
    FAIL() << "expected an error";
  } catch (const kernels::KernelError& e) {
    EXPECT_EQ(e.kind(), kernels::KernelError::Kind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("-DLATHE_CUDA=ON"), std::string::npos);
  }
}

}  // namespace
}  // namespace lathe
