// CUDA qlinear (kernels/qlinear_cuda.h): weight upload, the dispatch to the kernels, and the
// availability and bandwidth probes. The kernels read the exported weights in their stored
// layouts (FORMATS.md §3 GPTQ v1, §4 compressed-tensors). Torch-free.
//
// Activations (prep_act_kernel, one block per token): A16 formats convert x to fp16 (round to
// nearest even) into a zero-padded [m, round_up(in, 128)] buffer; act_bits 8 quantizes per token
// exactly as kernels/qlinear.h (s = max|x|/127 with __fdiv_rn, q = rintf(__fdiv_rn(x, s)) clamped
// to ±127, s = 1 where max|x|/127 is 0) into int8 for W8A8, or fake-quantizes (q·s) for the other
// formats.
//
// Kernels, picked by format and m:
//   gptq_gemv_kernel<BITS, FAST>   m = 1, GPTQ (qweight [in·b/32, out]). Each thread owns 4 output
//       columns and streams their packed words with one 128-bit load per packed row (three for
//       3-bit, whose 32 values fill 3 words); 8 warps per block split K, and the grid splits K
//       further (partials reduced by reduce_partials_kernel) so a decode-sized weight fills the
//       GPU. FAST (no/trivial g_idx, group size a multiple of the values per load): one scale and
//       zero per load, y += s·(Σq·x − z·Σx). Otherwise every value looks up its group (act order).
//   ct_gemv_kernel<BITS, FAST, VEC4>  m = 1, compressed-tensors pack-quantized ([out, ⌈in/pf⌉]):
//       a warp per output row, 128-bit loads of 4 words per lane when the row length allows.
//   qgemm_wmma_kernel   m > 1 for every quantized A16 format (and ct-int8 with A16): 64×64 output
//       tiles, K step 32; the weight tile is dequantized (scale·(code − zero)) into shared memory
//       as fp16, activations are fp16, and 4 warps multiply with tensor cores (wmma 16×16×16, fp32
//       accumulate). The dequantization reads element by element (cached loads), not yet a
//       word-per-thread decode: correctness first. A dequantized weight must fit fp16 (|W| < 65504;
//       real checkpoints' scales are far below that); also used for m = 1 of ct-int8 A16.
//   dense_gemv_kernel / dense_gemm_kernel   fp32 weights and fp32 activations, fp32 SIMT
//       (float4 loads in the GEMV, 64×64 shared-memory tiles with 4×4 per thread in the GEMM).
//   i8_gemv_kernel / i8_gemm_kernel   W8A8 (ct-int8 with act_bits 8): int8×int8 → int32 with
//       __dp4a, y = s_token·s_channel·acc + bias. Weights are uploaded with rows padded to 16
//       bytes.
// Bias is added in each kernel's epilogue (or the split-K reduction).#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/qlinear_kernels.cuh"
#include "kernels/qlinear_cuda.h"

namespace lathe::kernels {
namespace cuda_detail {

int sm_count() {
  static const int count = [] {
    int device = 0, n = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return 1;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 1;
    return std::max(n, 1);
  }();
  return count;
}

DW describe(const DeviceWeight& w) {
  DW d{};
  d.fmt = w.format == WeightFormat::kDense      ? kFmtDense
          : w.format == WeightFormat::kGptq     ? kFmtGptq
          : w.format == WeightFormat::kCtPacked ? kFmtCt
                                                : kFmtInt8;
  d.bits = static_cast<int>(w.bits);
  d.pf = (w.bits >= 1 && w.bits <= 32) ? static_cast<int>(32 / w.bits) : 1;
  d.out = w.out, d.in = w.in, d.group_size = w.group_size, d.groups = w.groups;
  d.packed = w.packed.get(), d.ld_packed = w.ld_packed;
  d.zeros = w.has_zeros || w.format == WeightFormat::kGptq ? w.zeros.get() : nullptr;
  d.ld_zeros = w.ld_zeros;
  d.scales = w.scales.get();
  d.scale_type = w.scale_type == ScaleType::kF16 ? 0 : w.scale_type == ScaleType::kBF16 ? 1 : 2;
  d.g_idx = w.has_g_idx ? w.g_idx.get() : nullptr;
  d.int8_weight = w.int8_weight.get(), d.ld_int8 = w.ld_int8;
  d.dense = w.dense.get();
  d.bias = w.has_bias ? w.bias.get() : nullptr;
  return d;
}

namespace {

// Host-side checks ------------------------------------------------------------------------------

[[noreturn]] void bad(const std::string& what) {
  throw KernelError("cuda qlinear: " + what);
}

size_t scale_bytes(ScaleType t) {
  return t == ScaleType::kF32 ? 4 : 2;
}

}  // namespace

void upload_weight(const QuantWeightView& w, DeviceWeight* dw) {
  check_view(w);
  if (w.out <= 0 || w.in <= 0) bad("empty weight");
  if (w.act_bits != 0 && w.act_bits != 8)
    bad("act_bits must be 0 or 8, found " + std::to_string(w.act_bits));
  DeviceWeight& d = *dw;
  d.format = w.format;
  d.out = w.out, d.in = w.in, d.bits = w.bits, d.group_size = w.group_size, d.groups = w.groups();
  d.act_bits = w.act_bits;
  d.scale_type = w.scale_type;
  d.has_g_idx = false, d.has_zeros = false, d.has_bias = w.bias != nullptr;
  double bytes = 0;
  const size_t sb = scale_bytes(w.scale_type);
  const int64_t G = d.groups;

  auto upload_g_idx = [&] {
    if (!w.g_idx) return;
    bool trivial = true;
    for (int64_t i = 0; i < w.in; ++i) {
      const int32_t g = w.g_idx[i];
      if (g < 0 || g >= G)
        bad("g_idx[" + std::to_string(i) + "] = " + std::to_string(g) + " outside [0, " +
            std::to_string(G) + ")");
      if (g != (w.group_size > 0 ? i / w.group_size : 0)) trivial = false;
    }
    if (trivial) return;  // the column / group_size fast path reads no g_idx
    d.has_g_idx = true;
    d.g_idx.upload(w.g_idx, static_cast<size_t>(w.in));
    bytes += 4.0 * static_cast<double>(w.in);
  };

  switch (w.format) {
    case WeightFormat::kDense: {
      if (!w.dense) bad("dense weight is null");
      const size_t n = static_cast<size_t>(w.out * w.in);
      d.dense.upload(w.dense, n);
      bytes += 4.0 * static_cast<double>(n);
      break;
    }
    case WeightFormat::kGptq: {
      if (w.bits != 2 && w.bits != 3 && w.bits != 4 && w.bits != 8)
        bad("GPTQ bits must be 2, 3, 4 or 8");
      const int64_t mult = w.bits == 3 ? 32 : 32 / w.bits;
      if (w.in % mult != 0 || w.out % mult != 0)
        bad(std::to_string(w.bits) + "-bit GPTQ needs in and out multiples of " +
            std::to_string(mult));
      if (!w.packed || !w.zeros || !w.scales) bad("GPTQ qweight, qzeros and scales are required");
      d.ld_packed = w.out;
      d.ld_zeros = w.out * w.bits / 32;
      const size_t np = static_cast<size_t>(w.in * w.bits / 32 * w.out),
                   nz = static_cast<size_t>(G * d.ld_zeros);
      d.packed.upload(reinterpret_cast<const uint32_t*>(w.packed), np);
      d.zeros.upload(reinterpret_cast<const uint32_t*>(w.zeros), nz);
      d.scales.upload(static_cast<const uint8_t*>(w.scales), static_cast<size_t>(G * w.out) * sb);
      bytes += 4.0 * static_cast<double>(np + nz) + static_cast<double>(G * w.out * sb);
      upload_g_idx();
      break;
    }
    case WeightFormat::kCtPacked: {
      if (w.bits != 2 && w.bits != 4 && w.bits != 8) bad("pack-quantized bits must be 2, 4 or 8");
      if (!w.packed || !w.scales) bad("weight_packed and weight_scale are required");
      const int64_t pf = 32 / w.bits;
      d.ld_packed = ceil_div(w.in, pf);
      d.ld_zeros = G;
      const size_t np = static_cast<size_t>(w.out * d.ld_packed);
      d.packed.upload(reinterpret_cast<const uint32_t*>(w.packed), np);
      d.scales.upload(static_cast<const uint8_t*>(w.scales), static_cast<size_t>(w.out * G) * sb);
      bytes += 4.0 * static_cast<double>(np) + static_cast<double>(w.out * G * sb);
      if (w.zeros) {
        const size_t nz = static_cast<size_t>(ceil_div(w.out, pf) * G);
        d.has_zeros = true;
        d.zeros.upload(reinterpret_cast<const uint32_t*>(w.zeros), nz);
        bytes += 4.0 * static_cast<double>(nz);
      }
      upload_g_idx();
      break;
    }
    case WeightFormat::kCtInt8: {
      if (w.bits != 8) bad("int-quantized weights are 8-bit");
      if (!w.int8_weight || !w.scales) bad("int8 weight and weight_scale are required");
      d.ld_int8 = round_up(w.in, 16);
      std::vector<int8_t> padded(static_cast<size_t>(w.out * d.ld_int8), 0);
      for (int64_t o = 0; o < w.out; ++o)
        std::memcpy(padded.data() + o * d.ld_int8, w.int8_weight + o * w.in,
                    static_cast<size_t>(w.in));
      d.int8_weight.upload(padded.data(), padded.size());
      d.scales.upload(static_cast<const uint8_t*>(w.scales), static_cast<size_t>(w.out) * sb);
      bytes += static_cast<double>(w.out * w.in) + static_cast<double>(w.out * sb);
      break;
    }
  }
  if (w.bias) {
    d.bias.upload(w.bias, static_cast<size_t>(w.out));
    bytes += 4.0 * static_cast<double>(w.out);
  }
  d.bytes = bytes;
}

void device_qlinear(const DeviceWeight& w, const float* x, int64_t m, float* y, Workspace& ws,
                    cudaStream_t stream) {
  if (m <= 0) return;
  const DW d = describe(w);
  const bool w8a8 = w.format == WeightFormat::kCtInt8 && w.act_bits == 8;
  const bool dense = w.format == WeightFormat::kDense;
  const bool need_half = !dense && !w8a8;
  const bool need_float = dense && w.act_bits == 8;
  const int64_t ld_half = round_up(w.in, 128);
  __half* xh = nullptr;
  int8_t* xq = nullptr;
  float* xs = nullptr;
  float* xf = nullptr;
  if (need_half) ws.x_half.reserve(static_cast<size_t>(m * ld_half)), xh = ws.x_half.get();
  if (w8a8) {
    ws.x_int8.reserve(static_cast<size_t>(m * w.ld_int8)), xq = ws.x_int8.get();
    ws.x_scale.reserve(static_cast<size_t>(m)), xs = ws.x_scale.get();
  }
  if (need_float) ws.x_float.reserve(static_cast<size_t>(m * w.in)), xf = ws.x_float.get();
  if (xh || xq || xf)
    launch_prep_act(x, m, w.in, static_cast<int>(w.act_bits), xh, ld_half, xq, w.ld_int8, xs, xf,
                    stream);
  if (dense) return launch_dense(d, need_float ? xf : x, m, y, stream);
  if (w8a8) return launch_w8a8(d, xq, xs, m, y, stream);
  if (m == 1 && w.format == WeightFormat::kGptq && launch_gptq_gemv(d, xh, y, ws, stream)) return;
  if (m == 1 && w.format == WeightFormat::kCtPacked && launch_ct_gemv(d, xh, y, stream)) return;
  launch_wmma(d, xh, ld_half, m, y, stream);
}

namespace {

__global__ void copy_kernel(const int4* __restrict__ src, int4* __restrict__ dst, size_t n) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    dst[i] = src[i];
}

/// CUDA events around a region of the default stream; destroyed on scope exit.
struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  EventPair() {
    check(cudaEventCreate(&start), "cudaEventCreate");
    const cudaError_t st = cudaEventCreate(&stop);
    if (st != cudaSuccess) cudaEventDestroy(start), start = nullptr;
    check(st, "cudaEventCreate");
  }
  ~EventPair() {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
  double elapsed_seconds() const {
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    return ms / 1e3;
  }
};

}  // namespace
}  // namespace cuda_detail

using namespace cuda_detail;

bool cuda_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" status
    return false;
  }
  return n > 0;
}

CudaDeviceInfo cuda_device_info() {
  CudaDeviceInfo info;
  if (!cuda_available()) return info;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  std::snprintf(info.name, sizeof(info.name), "%s", prop.name);
  info.sm_major = prop.major, info.sm_minor = prop.minor;
  int clock_khz = 0, bus_bits = 0;
  check(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device),
        "cudaDeviceGetAttribute (memory clock)");
  check(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device),
        "cudaDeviceGetAttribute (bus width)");
  // Double data rate: two transfers per clock over bus_bits / 8 bytes.
  info.memory_bandwidth_gbs = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
  return info;
}

void cuda_qlinear(const QuantWeightView& w, const float* x, int64_t m, float* y) {
  if (m < 0) throw KernelError("cuda qlinear: m must be >= 0, found " + std::to_string(m));
  if (m == 0) return check_view(w);
  DeviceWeight dw;
  upload_weight(w, &dw);
  if (!x || !y) throw KernelError("cuda qlinear: x and y must not be null");
  DeviceBuffer<float> dx, dy;
  dx.upload(x, static_cast<size_t>(m * w.in));
  dy.reserve(static_cast<size_t>(m * w.out));
  Workspace ws;
  device_qlinear(dw, dx.get(), m, dy.get(), ws, nullptr);
  check(cudaDeviceSynchronize(), "cuda qlinear (kernel execution)");
  dy.download(y, static_cast<size_t>(m * w.out));
}

CudaPerf cuda_qlinear_perf(const QuantWeightView& w, int64_t m, int iters) {
  if (m < 1) throw KernelError("cuda perf: m must be >= 1, found " + std::to_string(m));
  if (iters < 1) throw KernelError("cuda perf: iters must be >= 1, found " + std::to_string(iters));
  DeviceWeight dw;
  upload_weight(w, &dw);
  std::vector<float> x(static_cast<size_t>(m * w.in));
  std::mt19937 rng(12345);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& v : x) v = dist(rng);
  DeviceBuffer<float> dx, dy;
  dx.upload(x.data(), x.size());
  dy.reserve(static_cast<size_t>(m * w.out));
  Workspace ws;
  for (int i = 0; i < 3; ++i) device_qlinear(dw, dx.get(), m, dy.get(), ws, nullptr);
  check(cudaDeviceSynchronize(), "cuda perf (warm-up)");
  EventPair ev;
  check(cudaEventRecord(ev.start, nullptr), "cudaEventRecord");
  for (int i = 0; i < iters; ++i) device_qlinear(dw, dx.get(), m, dy.get(), ws, nullptr);
  check(cudaEventRecord(ev.stop, nullptr), "cudaEventRecord");
  CudaPerf perf;
  perf.seconds_per_call = ev.elapsed_seconds() / iters;
  perf.bytes = dw.bytes + 4.0 * static_cast<double>(m) * static_cast<double>(w.in + w.out);
  perf.flops =
      2.0 * static_cast<double>(m) * static_cast<double>(w.in) * static_cast<double>(w.out);
  return perf;
}

double cuda_copy_bandwidth_gbs(size_t bytes, int iters) {
  if (iters < 1) throw KernelError("cuda copy bandwidth: iters must be >= 1");
  const size_t n = std::max<size_t>(1, bytes / sizeof(int4));
  DeviceBuffer<int4> src(n), dst(n);
  check(cudaMemset(src.get(), 0, n * sizeof(int4)), "cudaMemset");
  const unsigned threads = 256;
  const unsigned blocks = static_cast<unsigned>(
      std::min<size_t>(static_cast<size_t>(ceil_div(static_cast<int64_t>(n), threads)),
                       static_cast<size_t>(sm_count()) * 16));
  for (int i = 0; i < 2; ++i) copy_kernel<<<blocks, threads>>>(src.get(), dst.get(), n);
  check_launch("copy_kernel");
  check(cudaDeviceSynchronize(), "copy_kernel (warm-up)");
  EventPair ev;
  check(cudaEventRecord(ev.start, nullptr), "cudaEventRecord");
  for (int i = 0; i < iters; ++i) copy_kernel<<<blocks, threads>>>(src.get(), dst.get(), n);
  check_launch("copy_kernel");
  check(cudaEventRecord(ev.stop, nullptr), "cudaEventRecord");
  const double seconds = ev.elapsed_seconds();
  return 2.0 * static_cast<double>(n * sizeof(int4)) * iters / seconds / 1e9;
}

}  // namespace lathe::kernels
