// Dispatch and argument checks of kernels/qlinear.h, the normalised error and the exact
// half-precision conversions. The kernels themselves: qlinear_ref.cpp (cpu-ref), qlinear_fast.cpp
// (cpu-fast), cuda/*.cu (cuda), moe.cpp (the MoE block).
#include "kernels/qlinear.h"

#include <cmath>
#include <cstring>
#include <string>

#include "kernels/qlinear_cuda.h"
#include "kernels/qlinear_internal.h"

namespace lathe::kernels {

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::kCpuRef: return "cpu-ref";
    case Backend::kCpuFast: return "cpu-fast";
    case Backend::kCuda: return "cuda";
  }
  return "?";
}

std::vector<Backend> available_backends() {
  std::vector<Backend> r{Backend::kCpuRef, Backend::kCpuFast};
  if (cuda_available()) r.push_back(Backend::kCuda);
  return r;
}

const char* format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kDense: return "dense";
    case WeightFormat::kGptq: return "gptq";
    case WeightFormat::kCtPacked: return "ct-packed";
    case WeightFormat::kCtInt8: return "ct-int8";
  }
  return "?";
}

namespace {

[[noreturn]] void fail(const QuantWeightView& w, const std::string& what) {
  throw KernelError(std::string(format_name(w.format)) + " [" + std::to_string(w.out) + "x" +
                    std::to_string(w.in) + "]: " + what);
}

void require(const QuantWeightView& w, bool ok, const char* what) {
  if (!ok) fail(w, what);
}

void check_groups(const QuantWeightView& w) {
  if (w.group_size == 0 || w.group_size < -1)
    fail(w, "group size " + std::to_string(w.group_size) + ": expected -1 or > 0");
  if (!w.g_idx) return;
  const int64_t groups = w.groups();
  for (int64_t i = 0; i < w.in; ++i)
    if (w.g_idx[i] < 0 || w.g_idx[i] >= groups)
      fail(w, "g_idx[" + std::to_string(i) + "] = " + std::to_string(w.g_idx[i]) + " outside [0, " +
                  std::to_string(groups) + ")");
}

void check_gptq(const QuantWeightView& w) {
  const int64_t pw = detail::gptq_pack_width(w.bits);
  if (pw == 0) fail(w, "bits " + std::to_string(w.bits) + ": GPTQ packs 2, 3, 4 or 8");
  if (w.in % pw != 0 || w.out % pw != 0)
    fail(w,
         std::to_string(w.bits) + "-bit GPTQ needs in and out multiples of " + std::to_string(pw));
  require(w, w.packed != nullptr, "qweight (packed) is null");
  require(w, w.zeros != nullptr, "qzeros (zeros) is null");
  require(w, w.scales != nullptr, "scales is null");
  check_groups(w);
}

void check_ct_packed(const QuantWeightView& w) {
  if (w.bits != 2 && w.bits != 4 && w.bits != 8)
    fail(w, "bits " + std::to_string(w.bits) + ": pack-quantized is read for 2, 4 or 8");
  require(w, w.packed != nullptr, "weight_packed (packed) is null");
  require(w, w.scales != nullptr, "weight_scale (scales) is null");
  check_groups(w);
}

void check_ct_int8(const QuantWeightView& w) {
  if (w.bits != 8) fail(w, "bits " + std::to_string(w.bits) + ": int-quantized is 8-bit");
  require(w, w.int8_weight != nullptr, "weight (int8_weight) is null");
  require(w, w.scales != nullptr, "weight_scale (scales) is null");
  if (w.group_size != -1 || w.g_idx)
    fail(w, "group size " + std::to_string(w.group_size) +
                ": int-quantized is per channel (group size -1, no g_idx)");
}

}  // namespace

void check_view(const QuantWeightView& w) {
  if (w.out <= 0 || w.in <= 0) fail(w, "out and in must be positive");
  if (w.act_bits != 0 && w.act_bits != 8)
    fail(w,
         "act_bits " + std::to_string(w.act_bits) + ": expected 0 (float) or 8 (int8 per token)");
  switch (w.format) {
    case WeightFormat::kDense: require(w, w.dense != nullptr, "dense weight is null"); return;
    case WeightFormat::kGptq: check_gptq(w); return;
    case WeightFormat::kCtPacked: check_ct_packed(w); return;
    case WeightFormat::kCtInt8: check_ct_int8(w); return;
  }
  fail(w, "unknown weight format");
}

void qlinear(Backend backend, const QuantWeightView& w, const float* x, int64_t m, float* y) {
  check_view(w);
  if (m < 0) throw KernelError("qlinear: m = " + std::to_string(m) + " is negative");
  if (m == 0) return;
  if (!x || !y) throw KernelError("qlinear: x or y is null");
  switch (backend) {
    case Backend::kCpuRef: detail::qlinear_cpu_ref(w, x, m, y); return;
    case Backend::kCpuFast: detail::qlinear_cpu_fast(w, x, m, y); return;
    case Backend::kCuda: cuda_qlinear(w, x, m, y); return;
  }
  throw KernelError("qlinear: unknown backend");
}

double nmse(const float* a, const float* b, int64_t n) {
  double err = 0, ref = 0;
  bool inf_mismatch = false;
  for (int64_t i = 0; i < n; ++i) {
    const float ai = a[i], bi = b[i];
    if (std::isnan(ai) || std::isnan(bi)) return std::nan("");
    if (std::isinf(ai) || std::isinf(bi)) {
      if (ai != bi) inf_mismatch = true;  // same-sign infinities compare equal and add nothing
      continue;
    }
    const double d = static_cast<double>(ai) - bi;
    err += d * d;
    ref += static_cast<double>(bi) * bi;
  }
  if (inf_mismatch) return INFINITY;
  if (ref == 0) return err == 0 ? 0.0 : INFINITY;
  return err / ref;
}

namespace detail {

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds to ≥ 65520: overflow
  if (ax < 0x38800000u) {                        // below 2^-14: subnormal half (or zero)
    const float a = std::fabs(f) * 16777216.0f;  // units of 2^-24; exact scaling
    return sign | static_cast<uint16_t>(std::nearbyint(a));
  }
  const uint32_t mant_odd = (ax >> 13) & 1u;
  const uint32_t rounded = ax + 0xfffu + mant_odd;  // round to nearest even at bit 13
  return sign | static_cast<uint16_t>(((rounded >> 13) - (112u << 10)) & 0x7fffu);
}

uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float quantize_activation_row(const float* x, int64_t n, int8_t* q, float* x_hat) {
  float amax = 0.f;
  for (int64_t i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const float scale = amax / 127.0f;
  const float safe = scale > 0.f ? scale : 1.f;
  for (int64_t i = 0; i < n; ++i) {
    float v = std::nearbyint(x[i] / safe);
    v = std::fmin(std::fmax(v, -127.f), 127.f);
    if (q) q[i] = static_cast<int8_t>(v);
    if (x_hat) x_hat[i] = v * safe;
  }
  return safe;
}

bool trivial_g_idx(const QuantWeightView& w) {
  if (!w.g_idx) return true;
  for (int64_t i = 0; i < w.in; ++i)
    if (w.g_idx[i] != (w.group_size <= 0 ? 0 : i / w.group_size)) return false;
  return true;
}

}  // namespace detail
}  // namespace lathe::kernels
