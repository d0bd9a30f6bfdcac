// A random QuantizedWeight for the packing and kernel tests: codes uniform in [0, 2^bits − 1],
// scales in [1e-3, 0.051), zeros 2^(bits−1) (symmetric) or uniform in [1, 2^bits − 1], seeded.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "compressor/quant/quantizer.h"

namespace lathe::testing {

inline QuantizedWeight random_quantized_weight(int64_t bits, int64_t out, int64_t in, int64_t g,
                                               bool sym, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t groups = g == -1 ? 1 : (in + g - 1) / g;
  const int64_t maxq = (int64_t{1} << bits) - 1;
  QuantizedWeight q;
  q.spec = QuantSpec{bits, g, sym};
  q.codes = torch::randint(0, maxq + 1, {out, in}, torch::kLong).to(torch::kByte);
  q.scales = torch::rand({out, groups}) * 0.05f + 1e-3f;
  q.zeros = sym ? torch::full({out, groups}, int64_t{1} << (bits - 1), torch::kInt)
                : torch::randint(1, maxq + 1, {out, groups}, torch::kLong).to(torch::kInt);
  return q;
}

}  // namespace lathe::testing
