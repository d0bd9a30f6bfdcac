// The kernel harness: cases, test / perf / list modes (see harness.h).
#include "kernels/harness/harness.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <random>

#include "kernels/qlinear_cuda.h"

namespace lathe::kernels::harness {
namespace {

constexpr int64_t kGuard = 64;                // guard floats before and after every output
constexpr uint32_t kGuardBits = 0x7fa5a5a5u;  // a quiet-NaN pattern no kernel writes by accident

// An output buffer with NaN-patterned canaries on both sides.
class GuardedBuffer {
 public:
  explicit GuardedBuffer(int64_t n) : n_(n), data_(static_cast<size_t>(n + 2 * kGuard)) {
    float g;
    std::memcpy(&g, &kGuardBits, 4);
    std::fill(data_.begin(), data_.end(), g);
  }
  float* data() { return data_.data() + kGuard; }
  const float* data() const { return data_.data() + kGuard; }
  int64_t size() const { return n_; }
  /// True when every canary still holds its bit pattern.
  bool guards_intact() const {
    for (int64_t i = 0; i < kGuard; ++i) {
      uint32_t a, b;
      std::memcpy(&a, &data_[i], 4);
      std::memcpy(&b, &data_[n_ + kGuard + i], 4);
      if (a != kGuardBits || b != kGuardBits) return false;
    }
    return true;
  }

 private:
  int64_t n_;
  std::vector<float> data_;
};

std::vector<float> random_vector(int64_t n, std::mt19937_64& rng, float scale = 1.f) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = u(rng);
  return v;
}

// The inputs of a MoE case: packed experts and the router, owned here.
struct MoeInputs {
  std::vector<std::unique_ptr<PackedWeight>> weights;
  std::vector<float> router, selection_bias, shared_expert_gate;
  MoeBlockView view;
};

std::unique_ptr<MoeInputs> build_moe(const MoeCase& c, std::mt19937_64& rng) {
  auto r = std::make_unique<MoeInputs>();
  const auto make = [&](int64_t out, int64_t in) {
    WeightParams p = c.weight;
    p.out = out;
    p.in = in;
    r->weights.push_back(std::make_unique<PackedWeight>(p, rng));
    return r->weights.back()->view();
  };
  MoeBlockView& v = r->view;
  v.hidden = c.hidden;
  v.num_experts = c.experts;
  v.routing = c.routing;
  r->router = random_vector(c.experts * c.hidden, rng, 0.2f);
  v.router = r->router.data();
  if (c.selection_bias) {
    r->selection_bias = random_vector(c.experts, rng, 0.1f);
    v.routing.selection_bias = r->selection_bias.data();
  }
  for (int64_t e = 0; e < c.experts; ++e) {
    v.gate.push_back(make(c.inter, c.hidden));
    v.up.push_back(make(c.inter, c.hidden));
    v.down.push_back(make(c.hidden, c.inter));
  }
  if (c.shared) {
    v.has_shared = true;
    v.shared_gate = make(c.inter, c.hidden);
    v.shared_up = make(c.inter, c.hidden);
    v.shared_down = make(c.hidden, c.inter);
    if (c.shared_gate) {
      r->shared_expert_gate = random_vector(c.hidden, rng, 0.2f);
      v.shared_expert_gate = r->shared_expert_gate.data();
    }
  }
  return r;
}

const char* scale_name(ScaleType s) {
  return s == ScaleType::kF16 ? "f16" : s == ScaleType::kBF16 ? "bf16" : "f32";
}

std::string weight_desc(const WeightParams& p) {
  char buf[96];
  if (p.format == WeightFormat::kDense) {
    std::snprintf(buf, sizeof buf, "%-9s %-16s", "dense", "f32");
  } else if (p.format == WeightFormat::kCtInt8) {
    std::snprintf(buf, sizeof buf, "%-9s %-16s", "ct-int8",
                  p.act_bits == 8 ? "w8a8 chan" : "w8a16 chan");
  } else {
    char g[24];
    if (p.group_size > 0)
      std::snprintf(g, sizeof g, "g%lld", static_cast<long long>(p.group_size));
    else
      std::snprintf(g, sizeof g, "g-1");
    std::snprintf(buf, sizeof buf, "%-9s b%lld %-4s %-4s %-4s", format_name(p.format),
                  static_cast<long long>(p.bits), g, p.sym ? "sym" : "asym",
                  p.act_order ? "gidx" : "");
  }
  return std::string(buf) + " " + scale_name(p.scale_type);
}

std::string pad(std::string s, size_t n) {
  if (s.size() < n) s.append(n - s.size(), ' ');
  return s;
}

}  // namespace

std::string Case::describe() const {
  char buf[160];
  if (!is_moe) {
    const WeightParams& p = linear.weight;
    std::snprintf(buf, sizeof buf, "m=%-3lld %5lldx%-5lld %s", static_cast<long long>(linear.m),
                  static_cast<long long>(p.out), static_cast<long long>(p.in),
                  p.bias ? "bias" : "    ");
    return pad(weight_desc(p), 36) + " " + buf;
  }
  const MoeRouting& r = moe.routing;
  std::snprintf(buf, sizeof buf, "m=%-3lld moe E%lld top%lld %s%s%s%s%s",
                static_cast<long long>(moe.m), static_cast<long long>(moe.experts),
                static_cast<long long>(r.top_k),
                r.scoring == MoeRouting::Scoring::kSoftmax ? "softmax" : "sigmoid",
                r.renormalize ? " renorm" : "", moe.selection_bias ? " bias" : "",
                r.num_groups > 1 ? " groups" : "",
                moe.shared ? (moe.shared_gate ? " shared+gate" : " shared") : "");
  return pad(weight_desc(moe.weight), 36) + " " + buf;
}

const char* Case::shape_kind() const {
  return (is_moe ? moe.m : linear.m) == 1 ? "GEMV" : "GEMM";
}

std::string Case::coverage_key() const {
  if (is_moe) return "moe";
  const WeightParams& p = linear.weight;
  switch (p.format) {
    case WeightFormat::kDense: return "dense";
    case WeightFormat::kCtInt8: return p.act_bits == 8 ? "ct-int8 w8a8" : "ct-int8 w8a16";
    default: return std::string(format_name(p.format)) + " b" + std::to_string(p.bits);
  }
}

namespace {

/// A case spelled with named fields, starting from WeightParams' defaults (group 128, symmetric,
/// no act-order, fp16 scales, no bias, 16-bit activations, one row):
///   named(F::kGptq, 4).group(32).asym().act_order().shape(192, 512).bias().rows(17).seed(3)
class CaseBuilder {
 public:
  CaseBuilder(WeightFormat format, int64_t bits) {
    w_.format = format;
    w_.bits = bits;
  }
  CaseBuilder& group(int64_t g) { return w_.group_size = g, *this; }
  CaseBuilder& asym() { return w_.sym = false, *this; }
  CaseBuilder& act_order() { return w_.act_order = true, *this; }
  CaseBuilder& scales(ScaleType t) { return w_.scale_type = t, *this; }
  CaseBuilder& act_bits(int64_t b) { return w_.act_bits = b, *this; }
  CaseBuilder& bias() { return w_.bias = true, *this; }
  CaseBuilder& shape(int64_t out, int64_t in) { return w_.out = out, w_.in = in, *this; }
  CaseBuilder& rows(int64_t m) { return m_ = m, *this; }
  CaseBuilder& seed(uint64_t s) { return seed_ = s, *this; }
  /// The weight parameters alone (the format of an MoE case's experts).
  const WeightParams& params() const { return w_; }
  /// A qlinear case.
  operator Case() const {  // NOLINT: implicit by design, cases are listed as builders
    Case c;
    c.linear.weight = w_;
    c.linear.m = m_;
    c.linear.seed = seed_;
    return c;
  }

 private:
  WeightParams w_;
  int64_t m_ = 1;
  uint64_t seed_ = 1;
};

CaseBuilder named(WeightFormat format, int64_t bits) {
  return CaseBuilder(format, bits);
}

/// An MoE-block case with named fields: 128 hidden, 64 intermediate, no selection bias, no shared
/// expert:  moe(gptq, softmax).experts(8).shared().shared_gate().rows(17).seed(3)
class MoeBuilder {
 public:
  MoeBuilder(const WeightParams& w, const MoeRouting& r) {
    c_.is_moe = true;
    c_.moe.weight = w;
    c_.moe.routing = r;
    c_.moe.hidden = 128;
    c_.moe.inter = 64;
  }
  MoeBuilder& experts(int64_t e) { return c_.moe.experts = e, *this; }
  MoeBuilder& selection_bias() { return c_.moe.selection_bias = true, *this; }
  MoeBuilder& shared() { return c_.moe.shared = true, *this; }
  MoeBuilder& shared_gate() { return c_.moe.shared_gate = true, *this; }
  MoeBuilder& rows(int64_t m) { return c_.moe.m = m, *this; }
  MoeBuilder& seed(uint64_t s) { return c_.moe.seed = s, *this; }
  operator Case() const { return c_; }  // NOLINT: implicit by design

 private:
  Case c_;
};

MoeBuilder moe(const WeightParams& w, const MoeRouting& r) {
  return MoeBuilder(w, r);
}

/// The qlinear test cases' weights, each run as a GEMV (m = 1) and a GEMM (m = 17): every exported
/// format and bit width, odd shapes, group −1, act-order g_idx, ragged groups, scale dtypes.
std::vector<CaseBuilder> linear_test_weights() {
  using F = WeightFormat;
  using S = ScaleType;
  return {
      named(F::kDense, 16).group(-1).shape(96, 200).bias().scales(S::kF32),
      named(F::kGptq, 2).group(128).shape(128, 512).scales(S::kF16),
      named(F::kGptq, 2).group(64).asym().act_order().shape(160, 256).bias().scales(S::kF16),
      named(F::kGptq, 3).group(128).shape(160, 512).scales(S::kF16),
      named(F::kGptq, 3).group(-1).asym().shape(96, 256).bias().scales(S::kF16),
      named(F::kGptq, 3).group(32).asym().act_order().shape(64, 256).scales(S::kF16),
      named(F::kGptq, 4).group(128).shape(256, 1024).bias().scales(S::kF16),
      named(F::kGptq, 4).group(128).asym().shape(1024, 2048).scales(S::kF16),
      named(F::kGptq, 4).group(32).asym().act_order().shape(192, 512).scales(S::kF16),
      named(F::kGptq, 4).group(-1).shape(128, 384).scales(S::kF16),
      named(F::kGptq, 4).group(128).shape(264, 384).bias().scales(S::kF16),  // out % 64 != 0
      named(F::kGptq, 4).group(40).asym().shape(72, 200).scales(S::kF16),    // ragged groups
      named(F::kGptq, 8).group(128).shape(100, 256).bias().scales(S::kF16),  // out % 8 != 0
      named(F::kGptq, 8).group(64).asym().act_order().shape(128, 512).scales(S::kF16),
      named(F::kGptq, 8).group(-1).asym().shape(256, 512).scales(S::kF16),
      named(F::kCtPacked, 2).group(128).shape(96, 512).scales(S::kBF16),
      named(F::kCtPacked, 2).group(-1).asym().shape(64, 200).bias().scales(S::kF16),
      named(F::kCtPacked, 4).group(128).shape(200, 1024).bias().scales(S::kBF16),
      named(F::kCtPacked, 4).group(64).asym().act_order().shape(128, 512).scales(S::kF16),
      named(F::kCtPacked, 4).group(-1).asym().shape(37, 202).scales(S::kF32),  // ragged rows
      named(F::kCtPacked, 4).group(128).asym().shape(512, 2048).scales(S::kBF16),
      // short last group
      named(F::kCtPacked, 4).group(128).asym().shape(48, 320).bias().scales(S::kF16),
      named(F::kGptq, 4).group(128).asym().shape(48, 320).scales(S::kF16),  // short last group
      named(F::kCtPacked, 8).group(128).shape(136, 512).bias().scales(S::kBF16),
      named(F::kCtPacked, 8).group(32).asym().shape(70, 96).scales(S::kF16),
      named(F::kCtInt8, 8).group(-1).shape(136, 520).bias().scales(S::kBF16).act_bits(8),
      named(F::kCtInt8, 8).group(-1).shape(256, 1024).scales(S::kF16).act_bits(8),
      named(F::kCtInt8, 8).group(-1).shape(70, 130).scales(S::kF16),
  };
}

}  // namespace

std::vector<Case> test_cases() {
  using F = WeightFormat;
  using S = ScaleType;
  std::vector<Case> cs;
  uint64_t seed = 1000;
  for (int64_t m : {int64_t{1}, int64_t{17}}) {
    for (CaseBuilder weight : linear_test_weights()) cs.push_back(weight.rows(m).seed(++seed));
  }
  MoeRouting softmax;  // softmax top-2 renormalised
  MoeRouting sigmoid;
  sigmoid.scoring = MoeRouting::Scoring::kSigmoid;
  sigmoid.top_k = 3;
  sigmoid.scaling_factor = 2.5;
  sigmoid.num_groups = 4;
  sigmoid.topk_groups = 2;
  MoeRouting plain;  // no renormalisation, shared expert
  plain.renormalize = false;
  const WeightParams gptq = named(F::kGptq, 4).group(32).scales(S::kF16).params();
  const WeightParams ct = named(F::kCtPacked, 4).group(64).asym().scales(S::kBF16).params();
  const WeightParams w8a8 = named(F::kCtInt8, 8).group(-1).scales(S::kBF16).act_bits(8).params();
  for (int64_t m : {int64_t{1}, int64_t{17}}) {
    cs.push_back(moe(gptq, softmax).experts(8).rows(m).seed(++seed));
    cs.push_back(moe(ct, sigmoid).experts(16).selection_bias().rows(m).seed(++seed));
    cs.push_back(moe(gptq, plain).experts(8).shared().shared_gate().rows(m).seed(++seed));
    cs.push_back(moe(w8a8, softmax).experts(8).shared().rows(m).seed(++seed));
  }
  return cs;
}

std::vector<Case> perf_cases() {
  using F = WeightFormat;
  using S = ScaleType;
  return {
      named(F::kGptq, 4).group(128).shape(8192, 8192).scales(S::kF16).rows(1).seed(1),
      named(F::kGptq, 4).group(128).shape(16384, 8192).scales(S::kF16).rows(1).seed(2),
      named(F::kGptq, 8).group(128).shape(8192, 8192).scales(S::kF16).rows(1).seed(3),
      named(F::kCtPacked, 4).group(128).shape(8192, 8192).scales(S::kBF16).rows(1).seed(4),
      named(F::kCtInt8, 8).group(-1).shape(8192, 8192).scales(S::kBF16).act_bits(8).rows(1).seed(5),
      named(F::kDense, 16).group(-1).shape(4096, 4096).scales(S::kF32).rows(1).seed(6),
      named(F::kGptq, 4).group(128).shape(8192, 8192).scales(S::kF16).rows(17).seed(7),
      named(F::kCtPacked, 4).group(128).shape(8192, 8192).scales(S::kBF16).rows(17).seed(8),
      named(F::kCtInt8, 8)
          .group(-1)
          .shape(8192, 8192)
          .scales(S::kBF16)
          .act_bits(8)
          .rows(17)
          .seed(9),
      named(F::kDense, 16).group(-1).shape(4096, 4096).scales(S::kF32).rows(17).seed(10),
  };
}

// Bounds (kernels/README.md): cpu-fast accumulates in fp32 over the same decoded values, so it
// agrees with the double-accumulating reference to ~1e-12; 1e-9 leaves room for long rows. CUDA
// A16 rounds activations to fp16 (unit roundoff 2^-11: expected NMSE ≈ 8e-8). W8A8 quantizes
// activations on both sides the same way (exact int32 sums). A MoE block chains three linears
// and SiLU, and with W8A8 an ulp of difference in an intermediate can move one int8 rounding.
double nmse_bound(const Case& c, Backend backend) {
  const WeightParams& p = c.is_moe ? c.moe.weight : c.linear.weight;
  if (backend == Backend::kCpuRef) return 0;
  if (backend == Backend::kCpuFast) return c.is_moe ? (p.act_bits == 8 ? 1e-4 : 1e-8) : 1e-9;
  if (c.is_moe) return 1e-4;
  return p.act_bits == 8 ? 1e-6 : 1e-5;
}

namespace {

struct Outcome {
  std::string status;  // OK, FAIL, SKIP
  double nmse = 0;
  std::string message;
};

// Runs `c` on `backend` into a guarded buffer and judges it against `ref`.
// Without `ref` the run is the reference: its output is kept in *keep.
template <typename Run>
Outcome judge(Run&& run, int64_t n, const std::vector<float>* ref, double bound,
              std::vector<float>* keep = nullptr) {
  GuardedBuffer y(n);
  try {
    run(y.data());
  } catch (const std::exception& e) {
    return {"FAIL", NAN, std::string("threw: ") + e.what()};
  }
  if (!y.guards_intact())
    return {"FAIL", NAN, "a guard value around the output changed (out-of-bounds write)"};
  if (!ref) {  // the reference itself: finite everywhere
    keep->assign(y.data(), y.data() + n);
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(y.data()[i]))
        return {"FAIL", NAN, "non-finite value in the reference output"};
    return {"OK", 0, "reference"};
  }
  const double e = nmse(y.data(), ref->data(), n);
  if (std::isnan(e)) return {"FAIL", e, "NaN in the output"};
  if (std::isinf(e)) return {"FAIL", e, "Inf where the reference has none (or all-zero reference)"};
  if (e > bound) return {"FAIL", e, "above the bound"};
  return {"OK", e, ""};
}

void print_line(const Case& c, Backend b, const Outcome& o, double bound) {
  char tail[64] = "";
  if (o.status != "SKIP" && b != Backend::kCpuRef && !std::isnan(o.nmse))
    std::snprintf(tail, sizeof tail, "nmse %8.2e <= %.0e", o.nmse, bound);
  std::printf("%-82s %-8s %-4s %-26s %s\n", c.describe().c_str(), backend_name(b), o.status.c_str(),
              tail, o.message.c_str());
}

std::vector<Backend> selected(const Options& opt) {
  if (!opt.backends.empty()) return opt.backends;
  return {Backend::kCpuRef, Backend::kCpuFast, Backend::kCuda};
}

bool wanted(const Case& c, const Options& opt) {
  return opt.filter.empty() || c.describe().find(opt.filter) != std::string::npos ||
         c.coverage_key().find(opt.filter) != std::string::npos;
}

}  // namespace

int run_tests(const Options& opt) {
  int failures = 0, ok = 0, skipped = 0;
  for (const Case& c : test_cases()) {
    if (!wanted(c, opt)) continue;
    std::mt19937_64 rng(c.is_moe ? c.moe.seed : c.linear.seed);
    std::unique_ptr<PackedWeight> weight;
    std::unique_ptr<MoeInputs> moe;
    int64_t m, in, out;
    if (c.is_moe) {
      moe = build_moe(c.moe, rng);
      m = c.moe.m, in = c.moe.hidden, out = c.moe.hidden;
    } else {
      WeightParams p = c.linear.weight;
      weight = std::make_unique<PackedWeight>(p, rng);
      m = c.linear.m, in = p.in, out = p.out;
    }
    const std::vector<float> x = random_vector(m * in, rng);
    const auto run_on = [&](Backend b) {
      return [&, b](float* y) {
        if (moe)
          moe_block(b, moe->view, x.data(), m, y);
        else
          qlinear(b, weight->view(), x.data(), m, y);
      };
    };
    std::vector<float> ref_y;
    const Outcome ref = judge(run_on(Backend::kCpuRef), m * out, nullptr, 0, &ref_y);
    for (Backend b : selected(opt)) {
      Outcome o;
      if (b == Backend::kCpuRef)
        o = ref;
      else if (b == Backend::kCuda && !cuda_available())
        o = {"SKIP", NAN, "no CUDA device visible (cuda_available() false)"};
      else if (ref.status != "OK")
        o = {"FAIL", NAN, "the reference failed: " + ref.message};
      else
        o = judge(run_on(b), m * out, &ref_y, nmse_bound(c, b));
      print_line(c, b, o, nmse_bound(c, b));
      (o.status == "OK" ? ok : o.status == "SKIP" ? skipped : failures)++;
    }
  }
  std::printf("\n%d OK, %d FAIL, %d SKIP\n", ok, failures, skipped);
  return failures;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Median seconds per call of f after two warm-up calls, over ≥ 3 calls and ≥ min_seconds.
double thread_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

template <typename F>
double time_call(F&& f, double min_seconds = 1.0) {
  static const bool cpu_time =
      std::getenv("LATHE_PERF_CPUTIME") != nullptr;  // A/B on a busy machine, 1 thread
  f();
  f();
  std::vector<double> t;
  const auto start = std::chrono::steady_clock::now();
  while (t.size() < 3 || (seconds_since(start) < min_seconds && t.size() < 200)) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = thread_seconds();
    f();
    t.push_back(cpu_time ? thread_seconds() - c0 : seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// GB/s of a parallel copy (bytes read + written) over `bytes` per buffer: the memory reference.
double cpu_copy_gbs(size_t bytes) {
  const size_t n = bytes / sizeof(float);
  std::unique_ptr<float[]> a(new float[n]), b(new float[n]);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) a[i] = static_cast<float>(i & 1023), b[i] = 0.f;
  const double s = time_call(
      [&] {
#pragma omp parallel
        {
          const size_t nt = omp_get_num_threads(), t = omp_get_thread_num();
          const size_t lo = n * t / nt, hi = n * (t + 1) / nt;
          std::memcpy(&b[lo], &a[lo], (hi - lo) * sizeof(float));
        }
      },
      1.0);
  return 2.0 * static_cast<double>(n * sizeof(float)) / s / 1e9;
}

// GB/s of a parallel sum (bytes read): the read-only bandwidth a GEMV can at best approach.
double cpu_read_gbs(size_t bytes) {
  const size_t n = bytes / sizeof(float);
  std::unique_ptr<float[]> a(new float[n]);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) a[i] = static_cast<float>(i & 1023);
  volatile float sink = 0;
  const double s = time_call(
      [&] {
        float total = 0;
#pragma omp parallel reduction(+ : total)
        {
          const size_t nt = omp_get_num_threads(), t = omp_get_thread_num();
          const size_t lo = n * t / nt / 32 * 32, hi = t + 1 == nt ? n : n * (t + 1) / nt / 32 * 32;
          float lanes[32] = {0};  // independent partial sums: vectorised without reassociation
          size_t i = lo;
          for (; i + 32 <= hi; i += 32)
            for (int j = 0; j < 32; ++j) lanes[j] += a[i + j];
          for (; i < hi; ++i) lanes[0] += a[i];
          for (float l : lanes) total += l;
        }
        sink = total;
      },
      1.0);
  (void)sink;
  return static_cast<double>(n * sizeof(float)) / s / 1e9;
}

}  // namespace

int run_perf(const Options& opt) {
  std::vector<Backend> backends = opt.backends;
  if (backends.empty()) backends = {Backend::kCpuFast, Backend::kCuda};
  const bool want_cpu =
      std::any_of(backends.begin(), backends.end(), [](Backend b) { return b != Backend::kCuda; });
  const bool want_cuda =
      std::count(backends.begin(), backends.end(), Backend::kCuda) > 0 && cuda_available();
  double copy_cpu = 0, read_cpu = 0, copy_cuda = 0;
  if (want_cpu) {
    copy_cpu = cpu_copy_gbs(size_t{256} << 20);
    read_cpu = cpu_read_gbs(size_t{256} << 20);
    std::printf("cpu: %d threads, copy %.1f GB/s (read+write, 2x256 MiB), read %.1f GB/s\n",
                omp_get_max_threads(), copy_cpu, read_cpu);
  }
  if (want_cuda) {
    copy_cuda = cuda_copy_bandwidth_gbs(size_t{1} << 30, 20);
    std::printf("cuda: %s, copy %.1f GB/s (theoretical %.1f GB/s)\n", cuda_device_info().name,
                copy_cuda, cuda_device_info().memory_bandwidth_gbs);
  }
  std::printf("%-82s %-8s %10s %9s %9s %8s %8s\n", "case", "backend", "us/call", "GB/s", "TFLOP/s",
              "of copy", "of read");
  for (const Case& c : perf_cases()) {
    if (!wanted(c, opt)) continue;
    std::mt19937_64 rng(c.linear.seed);
    PackedWeight weight(c.linear.weight, rng);
    const QuantWeightView& w = weight.view();
    const int64_t m = c.linear.m;
    const std::vector<float> x = random_vector(m * w.in, rng);
    std::vector<float> y(static_cast<size_t>(m * w.out));
    const double bytes = weight.weight_bytes() + 4.0 * m * (w.in + w.out);
    const double flops = 2.0 * m * w.in * w.out;
    for (Backend b : backends) {
      double s = 0, gbs = 0, frac = 0, frac_read = NAN;
      if (b == Backend::kCuda) {
        if (!cuda_available()) {
          std::printf("%-82s %-8s SKIP no CUDA device visible\n", c.describe().c_str(),
                      backend_name(b));
          continue;
        }
        const CudaPerf p = cuda_qlinear_perf(w, m, 50);
        s = p.seconds_per_call;
        gbs = p.bytes / s / 1e9;
        frac = gbs / copy_cuda;
      } else {
        s = time_call([&] { qlinear(b, w, x.data(), m, y.data()); });
        gbs = bytes / s / 1e9;
        frac = gbs / copy_cpu;
        frac_read = gbs / read_cpu;
      }
      std::printf("%-82s %-8s %10.1f %9.2f %9.4f %7.1f%% %7.1f%%\n", c.describe().c_str(),
                  backend_name(b), s * 1e6, gbs, flops / s / 1e12, 100 * frac, 100 * frac_read);
      std::fflush(stdout);
    }
  }
  return 0;
}

int run_list(const Options& opt) {
  const std::vector<std::string> keys = {
      "dense",        "gptq b2",      "gptq b3",      "gptq b4",       "gptq b8", "ct-packed b2",
      "ct-packed b4", "ct-packed b8", "ct-int8 w8a8", "ct-int8 w8a16", "moe"};
  std::map<std::string, int> count;  // key|shape → cases
  for (const Case& c : test_cases()) count[c.coverage_key() + "|" + c.shape_kind()]++;
  const std::vector<Backend> backends = selected(opt);
  std::printf("%-16s", "format");
  for (const char* shape : {"GEMV", "GEMM"})
    for (Backend b : backends)
      std::printf(" %13s", (std::string(shape) + " " + backend_name(b)).c_str());
  std::printf("\n");
  std::vector<std::string> missing;
  for (const std::string& k : keys) {
    std::printf("%-16s", k.c_str());
    for (const char* shape : {"GEMV", "GEMM"}) {
      const int n = count[k + "|" + shape];
      for (Backend b : backends) {
        const bool runnable = b != Backend::kCuda || cuda_available();
        std::printf(" %13s",
                    n == 0 ? "-" : (std::to_string(n) + (runnable ? "" : " (skip)")).c_str());
        if (n == 0) missing.push_back(k + " " + shape + " " + backend_name(b));
      }
    }
    std::printf("\n");
  }
  std::printf("\nno case: %s\n", missing.empty() ? "none" : "");
  for (const std::string& s : missing) std::printf("  %s\n", s.c_str());
  if (!cuda_available())
    std::printf("(skip): no CUDA device visible in this process; the cases print SKIP\n");
  return 0;
}

}  // namespace lathe::kernels::harness
