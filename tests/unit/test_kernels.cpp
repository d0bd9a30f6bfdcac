// The CPU kernels of kernels/qlinear.h against lathe itself: dequantize_ref on tensors packed by
// the exporter (export/gptq_pack.h) equals the exporter's own dequantization bit for bit (so the
// kernels read exactly what `lathe export` writes); the W8A8 reference equals the engine's
// fake-quantized linear; moe_route / moe_block follow DecoderLayer's rule (re-computed here with
// the same at:: ops); cpu-fast agrees with cpu-ref; bad views and nmse edge cases.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "compressor/model/decoder_layer.h"
#include "compressor/quant/quantizer.h"
#include "export/gptq_pack.h"
#include "kernels/qlinear.h"
#include "kernels/qlinear_cuda.h"
#include "tests/unit/random_quantized.h"

namespace lathe {
namespace {

using testing::random_quantized_weight;

using kernels::Backend;
using kernels::KernelError;
using kernels::QuantWeightView;
using kernels::ScaleType;
using kernels::WeightFormat;

// Act-order g_idx: column c belongs to group perm[c] / g.
at::Tensor permuted_gidx(int64_t in, int64_t g, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randperm(in, torch::kLong).div(g, "floor").to(torch::kInt);
}

ScaleType scale_type_of(const at::Tensor& s) {
  switch (s.scalar_type()) {
    case at::kHalf: return ScaleType::kF16;
    case at::kBFloat16: return ScaleType::kBF16;
    default: return ScaleType::kF32;
  }
}

QuantWeightView gptq_view(const GptqTensors& t, int64_t bits, int64_t group) {
  QuantWeightView w;
  w.format = WeightFormat::kGptq;
  w.in = t.g_idx.size(0);
  w.out = t.scales.size(1);
  w.bits = bits;
  w.group_size = group;
  w.packed = t.qweight.data_ptr<int32_t>();
  w.zeros = t.qzeros.data_ptr<int32_t>();
  w.scales = t.scales.data_ptr();
  w.scale_type = ScaleType::kF16;
  w.g_idx = t.g_idx.data_ptr<int32_t>();
  return w;
}

QuantWeightView ct_view(const CtPackedTensors& t, int64_t bits, int64_t group) {
  QuantWeightView w;
  w.format = WeightFormat::kCtPacked;
  w.out = t.weight_shape[0].item<int64_t>();
  w.in = t.weight_shape[1].item<int64_t>();
  w.bits = bits;
  w.group_size = group;
  w.packed = t.weight_packed.data_ptr<int32_t>();
  w.zeros = t.weight_zero_point.defined() ? t.weight_zero_point.data_ptr<int32_t>() : nullptr;
  w.scales = t.weight_scale.data_ptr();
  w.scale_type = scale_type_of(t.weight_scale);
  w.g_idx = t.weight_g_idx.defined() ? t.weight_g_idx.data_ptr<int32_t>() : nullptr;
  return w;
}

QuantWeightView int8_view(const CtIntTensors& t) {
  QuantWeightView w;
  w.format = WeightFormat::kCtInt8;
  w.out = t.weight.size(0);
  w.in = t.weight.size(1);
  w.bits = 8;
  w.int8_weight = t.weight.data_ptr<int8_t>();
  w.scales = t.weight_scale.data_ptr();
  w.scale_type = scale_type_of(t.weight_scale);
  return w;
}

at::Tensor dequantize_view(const QuantWeightView& w) {
  at::Tensor out = at::empty({w.out, w.in}, at::kFloat);
  kernels::dequantize_ref(w, out.data_ptr<float>());
  return out;
}

void expect_bitwise_equal(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const at::Tensor ai = a.contiguous().view(at::kInt), bi = b.contiguous().view(at::kInt);
  EXPECT_TRUE(at::equal(ai, bi)) << what << ": max |diff| " << (a - b).abs().max().item<float>();
}

at::Tensor run_qlinear(Backend b, const QuantWeightView& w, const at::Tensor& x) {
  at::Tensor y = at::empty({x.size(0), w.out}, at::kFloat);
  kernels::qlinear(b, w, x.contiguous().data_ptr<float>(), x.size(0), y.data_ptr<float>());
  return y;
}

double nmse_of(const at::Tensor& a, const at::Tensor& b) {
  return kernels::nmse(a.contiguous().data_ptr<float>(), b.contiguous().data_ptr<float>(),
                       a.numel());
}

// --- dequantize_ref ≡ the exporter's dequantization -------------------------------------------

TEST(KernelDequantize, GptqMatchesExporterBitForBit) {
  uint64_t seed = 10;
  for (int64_t bits : {2, 3, 4, 8})
    for (int64_t group : {32, -1})
      for (bool sym : {true, false})
        for (bool act_order : {false, true}) {
          if (act_order && group == -1) continue;
          const QuantizedWeight q = random_quantized_weight(bits, 64, 128, group, sym, ++seed);
          const GptqTensors t =
              pack_gptq(q, act_order ? permuted_gidx(128, group, seed) : at::Tensor());
          const std::string what = "gptq b" + std::to_string(bits) + " g" + std::to_string(group) +
                                   (sym ? " sym" : " asym") + (act_order ? " act-order" : "");
          expect_bitwise_equal(dequantize_view(gptq_view(t, bits, group)), dequantize_gptq(t, bits),
                               what);
        }
}

TEST(KernelDequantize, CtPackedMatchesExporterBitForBit) {
  uint64_t seed = 100;
  for (int64_t bits : {2, 4, 8})
    for (int64_t group : {20, -1})
      for (bool sym : {true, false})
        for (at::ScalarType st : {at::kHalf, at::kBFloat16, at::kFloat})
          for (bool act_order : {false, true}) {
            if (act_order && group == -1) continue;
            // in = 100 is not a multiple of the pack width (padding bits), out = 37 leaves the last
            // zero-point word partly used.
            const QuantizedWeight q = random_quantized_weight(bits, 37, 100, group, sym, ++seed);
            const CtPackedTensors t =
                pack_ct_packed(q, st, act_order ? permuted_gidx(100, group, seed) : at::Tensor());
            const std::string what = "ct b" + std::to_string(bits) + " g" + std::to_string(group) +
                                     (sym ? " sym " : " asym ") + c10::toString(st);
            expect_bitwise_equal(dequantize_view(ct_view(t, bits, group)),
                                 dequantize_ct_packed(t, bits, group), what);
          }
}

TEST(KernelDequantize, CtInt8MatchesExporterBitForBit) {
  for (at::ScalarType st : {at::kHalf, at::kBFloat16, at::kFloat}) {
    const CtIntTensors t = pack_ct_int8(random_quantized_weight(8, 24, 72, -1, true, 7), st);
    expect_bitwise_equal(dequantize_view(int8_view(t)), dequantize_ct_int8(t), c10::toString(st));
  }
}

// --- the qlinear reference -------------------------------------------------------------------

TEST(KernelQlinear, W8A8ReferenceIsTheEngineFakeQuantLinear) {
  const CtIntTensors t =
      pack_ct_int8(random_quantized_weight(8, 48, 160, -1, true, 3), at::kBFloat16);
  QuantWeightView w = int8_view(t);
  w.act_bits = 8;
  torch::manual_seed(4);
  const at::Tensor bias = torch::randn({48});
  w.bias = bias.data_ptr<float>();
  at::Tensor x = torch::randn({5, 160}) * 3;
  x[2].zero_();  // an all-zero token keeps scale 1 and outputs the bias
  const at::Tensor expected =
      at::linear(quantize_activations_per_token(x, 8), dequantize_ct_int8(t), bias);
  const at::Tensor got = run_qlinear(Backend::kCpuRef, w, x);
  const double rel = ((got - expected).abs().max() / expected.abs().max()).item<double>();
  EXPECT_LT(rel, 1e-6);
  EXPECT_TRUE(at::allclose(got[2], bias, 0, 1e-6));
  // Without act_bits the same weight is a plain linear.
  w.act_bits = 0;
  const at::Tensor plain = at::linear(x, dequantize_ct_int8(t), bias);
  EXPECT_LT(((run_qlinear(Backend::kCpuRef, w, x) - plain).abs().max() / plain.abs().max())
                .item<double>(),
            1e-6);
  // and the quantization matters: the two differ by far more than rounding
  EXPECT_GT((plain - expected).abs().max().item<double>(), 1e-3);
}

TEST(KernelQlinear, FastMatchesReference) {
  uint64_t seed = 500;
  torch::manual_seed(1);
  for (int64_t m : {1, 5, 17}) {
    const at::Tensor x = torch::randn({m, 256});
    for (int64_t bits : {2, 3, 4, 8}) {
      for (bool act_order : {false, true}) {
        const QuantizedWeight q = random_quantized_weight(bits, 96, 256, 64, false, ++seed);
        const GptqTensors t = pack_gptq(q, act_order ? permuted_gidx(256, 64, seed) : at::Tensor());
        const QuantWeightView w = gptq_view(t, bits, 64);
        const double e =
            nmse_of(run_qlinear(Backend::kCpuFast, w, x), run_qlinear(Backend::kCpuRef, w, x));
        EXPECT_LT(e, 1e-9) << "gptq b" << bits << " m=" << m << (act_order ? " act-order" : "");
      }
    }
    for (int64_t bits : {2, 4, 8}) {
      const QuantizedWeight q = random_quantized_weight(bits, 40, 256, 128, bits != 4, ++seed);
      const CtPackedTensors t = pack_ct_packed(q, at::kBFloat16);
      const QuantWeightView w = ct_view(t, bits, 128);
      EXPECT_LT(nmse_of(run_qlinear(Backend::kCpuFast, w, x), run_qlinear(Backend::kCpuRef, w, x)),
                1e-9)
          << "ct b" << bits << " m=" << m;
    }
    const CtIntTensors t =
        pack_ct_int8(random_quantized_weight(8, 40, 256, -1, true, ++seed), at::kHalf);
    QuantWeightView w = int8_view(t);
    for (int64_t act : {0, 8}) {
      w.act_bits = act;
      EXPECT_LT(nmse_of(run_qlinear(Backend::kCpuFast, w, x), run_qlinear(Backend::kCpuRef, w, x)),
                1e-9)
          << "ct-int8 act_bits " << act << " m=" << m;
    }
  }
}

// --- bad views -------------------------------------------------------------------------------

template <class F>
void expect_kernel_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no KernelError; expected one mentioning '" << needle << "'";
  } catch (const KernelError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(KernelCheckView, RejectsBadViewsNamingTheProblem) {
  const QuantizedWeight q = random_quantized_weight(4, 32, 64, 32, true, 9);
  const GptqTensors t = pack_gptq(q, {});
  const QuantWeightView good = gptq_view(t, 4, 32);
  EXPECT_NO_THROW(kernels::check_view(good));
  QuantWeightView w = good;
  w.bits = 5;
  expect_kernel_error([&] { kernels::check_view(w); }, "bits 5");
  w = good;
  w.packed = nullptr;
  expect_kernel_error([&] { kernels::check_view(w); }, "null");
  w = good;
  w.zeros = nullptr;
  expect_kernel_error([&] { kernels::check_view(w); }, "qzeros");
  w = good;
  w.group_size = 0;
  expect_kernel_error([&] { kernels::check_view(w); }, "group size 0");
  w = good;
  w.out = 36;  // not a multiple of 8
  expect_kernel_error([&] { kernels::check_view(w); }, "multiples of 8");
  w = good;
  w.act_bits = 4;
  expect_kernel_error([&] { kernels::check_view(w); }, "act_bits 4");
  std::vector<int32_t> bad_gidx(64, 0);
  bad_gidx[7] = 2;  // only groups 0 and 1 exist
  w = good;
  w.g_idx = bad_gidx.data();
  expect_kernel_error([&] { kernels::check_view(w); }, "g_idx[7]");
  const CtIntTensors ti = pack_ct_int8(random_quantized_weight(8, 8, 16, -1, true, 1), at::kHalf);
  QuantWeightView wi = int8_view(ti);
  wi.group_size = 8;  // int-quantized is per channel
  expect_kernel_error([&] { kernels::check_view(wi); }, "per channel");
  QuantWeightView ct =
      ct_view(pack_ct_packed(random_quantized_weight(4, 8, 16, -1, true, 1), at::kHalf), 4, -1);
  ct.bits = 3;
  expect_kernel_error([&] { kernels::check_view(ct); }, "bits 3");
  // qlinear checks before it computes.
  float x[64] = {0}, y[32];
  w = good;
  w.bits = 5;
  expect_kernel_error([&] { kernels::qlinear(Backend::kCpuFast, w, x, 1, y); }, "bits 5");
  expect_kernel_error([&] { kernels::qlinear(Backend::kCpuRef, good, nullptr, 1, y); }, "null");
}

TEST(KernelBackends, CudaListedExactlyWhenAvailable) {
  const auto b = kernels::available_backends();
  ASSERT_GE(b.size(), 2u);
  EXPECT_EQ(b[0], Backend::kCpuRef);
  EXPECT_EQ(b[1], Backend::kCpuFast);
  EXPECT_EQ(b.size() == 3, kernels::cuda_available());
  EXPECT_STREQ(kernels::backend_name(Backend::kCpuFast), "cpu-fast");
  EXPECT_STREQ(kernels::format_name(WeightFormat::kCtPacked), "ct-packed");
#ifndef LATHE_HAVE_CUDA
  const QuantizedWeight q = random_quantized_weight(4, 8, 8, -1, true, 2);
  const GptqTensors t = pack_gptq(q, {});
  float x[8] = {0}, y[8];
  expect_kernel_error([&] { kernels::qlinear(Backend::kCuda, gptq_view(t, 4, -1), x, 1, y); },
                      "no CUDA");
#endif
}

// --- nmse ------------------------------------------------------------------------------------

TEST(KernelNmse, EdgeCases) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  const float a[] = {1, 2}, b[] = {1, 1};
  EXPECT_DOUBLE_EQ(kernels::nmse(a, b, 2), 0.5);  // (0 + 1) / (1 + 1)
  const float z[] = {0, 0}, nz[] = {0, 1e-30f};
  EXPECT_EQ(kernels::nmse(z, z, 2), 0.0);
  EXPECT_TRUE(std::isinf(kernels::nmse(nz, z, 2)));
  const float with_nan[] = {1, nan};
  EXPECT_TRUE(std::isnan(kernels::nmse(with_nan, b, 2)));
  const float pinf[] = {inf, 1}, ninf[] = {-inf, 1}, ref_inf[] = {inf, 1};
  EXPECT_EQ(kernels::nmse(pinf, ref_inf, 2), 0.0);  // matching Inf: no error
  EXPECT_TRUE(std::isinf(kernels::nmse(ninf, ref_inf, 2)));
  EXPECT_TRUE(std::isinf(kernels::nmse(pinf, b, 2)));
  EXPECT_TRUE(std::isinf(kernels::nmse(b, ref_inf, 2)));
}

// --- MoE -------------------------------------------------------------------------------------

// DecoderLayer::route's rule, with the same at:: ops (decoder_layer.cpp).
void engine_route(const at::Tensor& x, const at::Tensor& router, const kernels::MoeRouting& r,
                  const at::Tensor& bias, at::Tensor* weights, at::Tensor* experts) {
  const at::Tensor logits = at::linear(x.to(at::kDouble), router.to(at::kDouble)).to(at::kFloat);
  const int64_t k = r.top_k;
  if (r.scoring == kernels::MoeRouting::Scoring::kSoftmax) {
    at::Tensor probs = logits.softmax(-1);
    if (r.num_groups > 1) {
      const int64_t n = probs.size(0), e = probs.size(1);
      const at::Tensor best = std::get<0>(probs.view({n, r.num_groups, e / r.num_groups}).max(-1));
      const at::Tensor keep =
          at::zeros_like(best).scatter_(1, std::get<1>(best.topk(r.topk_groups, -1)), 1);
      probs = probs.masked_fill(~keep.unsqueeze(-1)
                                     .expand({n, r.num_groups, e / r.num_groups})
                                     .reshape({n, e})
                                     .to(at::kBool),
                                0.0);
    }
    std::tie(*weights, *experts) = probs.topk(k, -1);
    if (r.renormalize) *weights = *weights / weights->sum(-1, true);
    *weights = *weights * r.scaling_factor;
    return;
  }
  const at::Tensor scores = logits.sigmoid();
  at::Tensor choice = bias.defined() ? scores + bias : scores;
  if (r.num_groups > 1) {
    const int64_t n = choice.size(0), e = choice.size(1);
    const at::Tensor gs =
        std::get<0>(choice.view({n, r.num_groups, e / r.num_groups}).topk(2, -1)).sum(-1);
    const at::Tensor keep =
        at::zeros_like(gs).scatter_(1, std::get<1>(gs.topk(r.topk_groups, -1)), 1);
    const at::Tensor mask = keep.unsqueeze(-1)
                                .expand({n, r.num_groups, e / r.num_groups})
                                .reshape({n, e})
                                .to(at::kBool);
    choice = choice.masked_fill(~mask, -std::numeric_limits<float>::infinity());
  }
  *experts = std::get<1>(choice.topk(k, -1));
  *weights = scores.gather(1, *experts);
  if (r.renormalize) *weights = *weights / (weights->sum(-1, true) + 1e-20);
  *weights = *weights * r.scaling_factor;
}

struct DenseMoe {
  at::Tensor router, bias, shared_expert_gate;
  std::vector<at::Tensor> gate, up, down;
  at::Tensor shared_gate, shared_up, shared_down;
  kernels::MoeBlockView view;
};

QuantWeightView dense_view(const at::Tensor& w) {
  QuantWeightView v;
  v.format = WeightFormat::kDense;
  v.out = w.size(0);
  v.in = w.size(1);
  v.dense = w.data_ptr<float>();
  return v;
}

DenseMoe make_moe(int64_t hidden, int64_t inter, int64_t experts, const kernels::MoeRouting& r,
                  bool bias, bool shared, uint64_t seed) {
  torch::manual_seed(seed);
  DenseMoe d;
  d.router = torch::randn({experts, hidden}) * 0.3;
  d.view.hidden = hidden;
  d.view.num_experts = experts;
  d.view.router = d.router.data_ptr<float>();
  d.view.routing = r;
  if (bias) {
    d.bias = torch::randn({experts}) * 0.1;
    d.view.routing.selection_bias = d.bias.data_ptr<float>();
  }
  for (int64_t e = 0; e < experts; ++e) {
    d.gate.push_back(torch::randn({inter, hidden}) * 0.1);
    d.up.push_back(torch::randn({inter, hidden}) * 0.1);
    d.down.push_back(torch::randn({hidden, inter}) * 0.1);
  }
  for (int64_t e = 0; e < experts; ++e) {
    d.view.gate.push_back(dense_view(d.gate[e]));
    d.view.up.push_back(dense_view(d.up[e]));
    d.view.down.push_back(dense_view(d.down[e]));
  }
  if (shared) {
    d.shared_gate = torch::randn({inter, hidden}) * 0.1;
    d.shared_up = torch::randn({inter, hidden}) * 0.1;
    d.shared_down = torch::randn({hidden, inter}) * 0.1;
    d.shared_expert_gate = torch::randn({hidden}) * 0.2;
    d.view.has_shared = true;
    d.view.shared_gate = dense_view(d.shared_gate);
    d.view.shared_up = dense_view(d.shared_up);
    d.view.shared_down = dense_view(d.shared_down);
    d.view.shared_expert_gate = d.shared_expert_gate.data_ptr<float>();
  }
  return d;
}

kernels::MoeRouting routing(bool sigmoid, int64_t k, bool renorm, double scale, int64_t groups,
                            int64_t topk_groups) {
  kernels::MoeRouting r;
  r.scoring =
      sigmoid ? kernels::MoeRouting::Scoring::kSigmoid : kernels::MoeRouting::Scoring::kSoftmax;
  r.top_k = k;
  r.renormalize = renorm;
  r.scaling_factor = scale;
  r.num_groups = groups;
  r.topk_groups = topk_groups;
  return r;
}

TEST(KernelMoe, RouteFollowsTheEngineRule) {
  struct Rule {
    const char* name;
    kernels::MoeRouting r;
    bool bias;
  };
  const std::vector<Rule> rules = {
      {"softmax top2 renorm", routing(false, 2, true, 1.0, 1, 1), false},
      {"softmax top3 no-renorm scaled", routing(false, 3, false, 16.0, 1, 1), false},
      {"softmax groups", routing(false, 2, true, 1.0, 4, 2), false},
      {"sigmoid bias groups", routing(true, 4, true, 2.5, 4, 2), true},
      {"sigmoid no bias no groups", routing(true, 2, false, 1.0, 1, 1), false},
  };
  uint64_t seed = 40;
  for (const Rule& rule : rules) {
    const DenseMoe d = make_moe(32, 8, 16, rule.r, rule.bias, false, ++seed);
    const at::Tensor x = torch::randn({23, 32});
    at::Tensor ew, ee;
    engine_route(x, d.router, rule.r, d.bias, &ew, &ee);
    std::vector<int32_t> experts(23 * rule.r.top_k);
    std::vector<float> weights(experts.size());
    kernels::moe_route(d.view, x.data_ptr<float>(), 23, experts.data(), weights.data());
    const at::Tensor got_e =
        torch::from_blob(experts.data(), {23, rule.r.top_k}, torch::kInt).to(torch::kLong);
    const at::Tensor got_w = torch::from_blob(weights.data(), {23, rule.r.top_k}, torch::kFloat);
    EXPECT_TRUE(at::equal(got_e, ee)) << rule.name;
    EXPECT_TRUE(at::allclose(got_w, ew, 1e-5, 1e-6))
        << rule.name << ": max diff " << (got_w - ew).abs().max().item<float>();
  }
}

TEST(KernelMoe, BlockFollowsTheEngineMoe) {
  const kernels::MoeRouting r = routing(true, 3, true, 2.0, 4, 2);
  const DenseMoe d = make_moe(32, 16, 8, r, true, true, 77);
  const at::Tensor x = torch::randn({9, 32});
  at::Tensor w, e;
  engine_route(x, d.router, r, d.bias, &w, &e);
  // decoder_layer.cpp DecoderLayer::moe with float experts.
  at::Tensor expected = at::zeros_like(x);
  for (int64_t j = 0; j < 8; ++j) {
    const at::Tensor hit = (e == j).nonzero();
    if (hit.size(0) == 0) continue;
    const at::Tensor tokens = hit.select(1, 0), slots = hit.select(1, 1);
    const at::Tensor xe = x.index_select(0, tokens);
    const at::Tensor act = at::silu(at::linear(xe, d.gate[j])) * at::linear(xe, d.up[j]);
    expected.index_add_(0, tokens,
                        at::linear(act, d.down[j]) * w.index({tokens, slots}).unsqueeze(1));
  }
  const at::Tensor shared = at::linear(
      at::silu(at::linear(x, d.shared_gate)) * at::linear(x, d.shared_up), d.shared_down);
  expected = expected + at::sigmoid(at::linear(x, d.shared_expert_gate)).unsqueeze(1) * shared;
  for (Backend b : {Backend::kCpuRef, Backend::kCpuFast}) {
    at::Tensor y = at::empty_like(x);
    kernels::moe_block(b, d.view, x.data_ptr<float>(), 9, y.data_ptr<float>());
    EXPECT_LT(nmse_of(y, expected), 1e-10) << kernels::backend_name(b);
  }
}

}  // namespace
}  // namespace lathe
