// CUDA MoE expert dispatch (kernels/qlinear_cuda.h cuda_moe_block), the semantics of lathe's engine
// (compressor/model/decoder_layer.cpp DecoderLayer::moe) for a routing computed on the host.
//
// The token lists per expert are built on the host from experts[m, top_k] (tiny; it also validates
// the expert ids), uploaded once with the slot weights; then for each expert that received tokens,
// in expert order: gather_rows_kernel copies its tokens' rows of x, the gate and up linears run
// with the qlinear kernels (kernels/cuda/qlinear.cu: GEMV for one token, GEMM for more),
// swiglu_kernel forms SiLU(gate)·up in fp32, the down linear runs, and scatter_add_kernel adds
// weight·down into y. A token appears at most once per expert, so each scatter is race free and the
// sum order is the engine's (expert by expert, then the shared expert): no atomics, deterministic.
// The shared expert runs on every token; with shared_expert_gate its output is scaled by sigmoid(x
// · shared_expert_gate) (gated_add_kernel, a warp per token).
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cuda/qlinear_device.cuh"
#include "kernels/qlinear_cuda.h"

namespace lathe::kernels {
namespace cuda_detail {
namespace {

__global__ void gather_rows_kernel(const float* __restrict__ x, const int32_t* __restrict__ rows,
                                   int64_t n, int64_t width, float* __restrict__ out) {
  const int64_t total = n * width;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / width, c = e % width;
    out[e] = x[static_cast<int64_t>(rows[r]) * width + c];
  }
}

/// gate[e] = SiLU(gate[e]) · up[e] = gate / (1 + exp(−gate)) · up, fp32.
__global__ void swiglu_kernel(float* __restrict__ gate, const float* __restrict__ up,
                              int64_t total) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[e];
    gate[e] = g / (1.0f + expf(-g)) * up[e];
  }
}

/// y[rows[r], c] += weights[r] · d[r, c]; rows are distinct within one launch.
__global__ void scatter_add_kernel(const float* __restrict__ d, const int32_t* __restrict__ rows,
                                   const float* __restrict__ weights, int64_t n, int64_t width,
                                   float* __restrict__ y) {
  const int64_t total = n * width;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / width, c = e % width;
    y[static_cast<int64_t>(rows[r]) * width + c] += d[e] * weights[r];
  }
}

/// y[t, :] += (gate ? sigmoid(x[t, :] · gate) : 1) · s[t, :]; a warp per token.
__global__ void gated_add_kernel(const float* __restrict__ x, const float* __restrict__ gate,
                                 const float* __restrict__ s, int64_t m, int64_t width,
                                 float* __restrict__ y) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (t >= m) return;
  float factor = 1.0f;
  if (gate) {
    float dot = 0.f;
    for (int64_t c = lane; c < width; c += 32) dot = fmaf(x[t * width + c], gate[c], dot);
    for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    factor = 1.0f / (1.0f + expf(-dot));
  }
  for (int64_t c = lane; c < width; c += 32) y[t * width + c] += factor * s[t * width + c];
}

unsigned grid_for(int64_t total) {
  const int64_t blocks = (total + 255) / 256;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

[[noreturn]] void bad(const std::string& what) {
  throw KernelError("cuda moe: " + what);
}

void check_expert(const QuantWeightView& gate, const QuantWeightView& up,
                  const QuantWeightView& down, int64_t hidden, const std::string& name) {
  if (gate.in != hidden || up.in != hidden || gate.out != up.out)
    bad(name + ": gate and up must be [I, hidden = " + std::to_string(hidden) + "]");
  if (down.out != hidden || down.in != gate.out)
    bad(name + ": down must be [hidden, I] = [" + std::to_string(hidden) + ", " +
        std::to_string(gate.out) + "]");
}

/// One SwiGLU expert on n device rows `xin`: result [n, hidden] in `out`.
struct ExpertRunner {
  Workspace ws;
  DeviceBuffer<float> g, u;

  void run(const QuantWeightView& gate, const QuantWeightView& up, const QuantWeightView& down,
           const float* xin, int64_t n, float* out) {
    DeviceWeight wg, wu, wd;
    upload_weight(gate, &wg);
    upload_weight(up, &wu);
    upload_weight(down, &wd);
    const int64_t inter = gate.out;
    g.reserve(static_cast<size_t>(n * inter));
    u.reserve(static_cast<size_t>(n * inter));
    device_qlinear(wg, xin, n, g.get(), ws, nullptr);
    device_qlinear(wu, xin, n, u.get(), ws, nullptr);
    swiglu_kernel<<<grid_for(n * inter), 256>>>(g.get(), u.get(), n * inter);
    check_launch("swiglu_kernel");
    device_qlinear(wd, g.get(), n, out, ws, nullptr);
    // The weights are freed on return: finish using them first.
    check(cudaDeviceSynchronize(), "cuda moe expert");
  }
};

}  // namespace
}  // namespace cuda_detail

using namespace cuda_detail;

void cuda_moe_block(const MoeBlockView& block, const float* x, int64_t m, const int32_t* experts,
                    const float* weights, float* y) {
  const int64_t hidden = block.hidden, num_experts = block.num_experts, k = block.routing.top_k;
  if (hidden <= 0) bad("hidden must be positive");
  if (num_experts < 0 || static_cast<int64_t>(block.gate.size()) != num_experts ||
      static_cast<int64_t>(block.up.size()) != num_experts ||
      static_cast<int64_t>(block.down.size()) != num_experts)
    bad("gate, up and down must hold num_experts = " + std::to_string(num_experts) + " views");
  if (k <= 0) bad("top_k must be positive");
  if (m < 0) bad("m must be >= 0");
  if (m == 0) return;
  if (!x || !y || !experts || !weights) bad("x, y, experts and weights must not be null");

  // Token lists per expert, in token order (the order of the engine's nonzero()).
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(num_experts));
  std::vector<std::vector<float>> slot_weights(static_cast<size_t>(num_experts));
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t s = 0; s < k; ++s) {
      const int32_t e = experts[t * k + s];
      if (e < 0 || e >= num_experts)
        bad("experts[" + std::to_string(t) + ", " + std::to_string(s) + "] = " + std::to_string(e) +
            " outside [0, " + std::to_string(num_experts) + ")");
      rows[static_cast<size_t>(e)].push_back(static_cast<int32_t>(t));
      slot_weights[static_cast<size_t>(e)].push_back(weights[t * k + s]);
    }
  }
  std::vector<int32_t> all_rows;
  std::vector<float> all_weights;
  std::vector<int64_t> offset(static_cast<size_t>(num_experts) + 1, 0);
  int64_t max_n = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    const auto& r = rows[static_cast<size_t>(e)];
    if (!r.empty()) {
      const std::string name = "expert " + std::to_string(e);
      check_expert(block.gate[static_cast<size_t>(e)], block.up[static_cast<size_t>(e)],
                   block.down[static_cast<size_t>(e)], hidden, name);
      for (size_t i = 1; i < r.size(); ++i)
        if (r[i] == r[i - 1]) bad("token " + std::to_string(r[i]) + " routed twice to " + name);
    }
    all_rows.insert(all_rows.end(), r.begin(), r.end());
    all_weights.insert(all_weights.end(), slot_weights[static_cast<size_t>(e)].begin(),
                       slot_weights[static_cast<size_t>(e)].end());
    offset[static_cast<size_t>(e) + 1] = static_cast<int64_t>(all_rows.size());
    max_n = std::max<int64_t>(max_n, static_cast<int64_t>(r.size()));
  }
  if (block.has_shared)
    check_expert(block.shared_gate, block.shared_up, block.shared_down, hidden, "shared expert");

  DeviceBuffer<float> dx, dy, xe, de;
  DeviceBuffer<int32_t> drows;
  DeviceBuffer<float> dweights;
  dx.upload(x, static_cast<size_t>(m * hidden));
  dy.zero(static_cast<size_t>(m * hidden));
  drows.upload(all_rows.data(), all_rows.size());
  dweights.upload(all_weights.data(), all_weights.size());
  xe.reserve(static_cast<size_t>(std::max<int64_t>(max_n, 1) * hidden));
  de.reserve(static_cast<size_t>(std::max<int64_t>(max_n, m) * hidden));

  ExpertRunner runner;
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t n = offset[static_cast<size_t>(e) + 1] - offset[static_cast<size_t>(e)];
    if (n == 0) continue;
    const int32_t* erows = drows.get() + offset[static_cast<size_t>(e)];
    gather_rows_kernel<<<grid_for(n * hidden), 256>>>(dx.get(), erows, n, hidden, xe.get());
    check_launch("gather_rows_kernel");
    runner.run(block.gate[static_cast<size_t>(e)], block.up[static_cast<size_t>(e)],
               block.down[static_cast<size_t>(e)], xe.get(), n, de.get());
    scatter_add_kernel<<<grid_for(n * hidden), 256>>>(
        de.get(), erows, dweights.get() + offset[static_cast<size_t>(e)], n, hidden, dy.get());
    check_launch("scatter_add_kernel");
  }
  if (block.has_shared) {
    runner.run(block.shared_gate, block.shared_up, block.shared_down, dx.get(), m, de.get());
    DeviceBuffer<float> dgate;
    if (block.shared_expert_gate)
      dgate.upload(block.shared_expert_gate, static_cast<size_t>(hidden));
    const unsigned grid = static_cast<unsigned>((m + 7) / 8);
    gated_add_kernel<<<grid, 256>>>(dx.get(), block.shared_expert_gate ? dgate.get() : nullptr,
                                    de.get(), m, hidden, dy.get());
    check_launch("gated_add_kernel");
  }
  check(cudaDeviceSynchronize(), "cuda moe block");
  dy.download(y, static_cast<size_t>(m * hidden));
}

}  // namespace lathe::kernels
